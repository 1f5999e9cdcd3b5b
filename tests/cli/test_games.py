"""`saekit games othello-model`: trains, evaluates, writes accuracy.json, refuses bad settings."""

import json

import pytest

from saekit.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--layers", "1", "--d-model", "16", "--heads", "2", "--batch-games", "8", "--warmup-steps", "0", "--eval-games", "20"]


def test_othello_model_trains_and_reports(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["games", "othello-model", "--out", str(out), "--steps", "3", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "legal-move accuracy on 20 held-out games" in printed and "random init" in printed
    report = json.loads((out / "accuracy.json").read_text())
    assert 0 <= report["trained"]["accuracy"] <= 1 and report["random_init"]["positions"] == report["trained"]["positions"]
    assert report["config"]["steps"] == 3 and (out / "model" / "config.json").is_file()
    assert main(["games", "othello-model", "--out", str(out), "--steps", "3", *TINY, "--resume"]) == 0


def test_othello_model_refuses_bad_settings_by_name(tmp_path, capsys):
    assert main(["games", "othello-model", "--out", str(tmp_path / "r"), *TINY, "--heads", "3"]) == 2
    assert "heads (3) must divide d_model (16)" in capsys.readouterr().err
    assert main(["games", "othello-model", "--out", str(tmp_path / "r"), *TINY, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["games", "othello-model", "--out", str(tmp_path / "r"), "--steps", "0"])
