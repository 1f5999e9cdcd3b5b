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


CHESS = ["--layers", "1", "--d-model", "16", "--heads", "2", "--context", "32", "--batch-games", "4", "--warmup-steps", "0", "--eval-games", "3"]


def test_chess_model_trains_and_reports(tmp_path, capsys):
    pytest.importorskip("chess")
    out = tmp_path / "run"
    assert main(["games", "chess-model", "--out", str(out), "--steps", "2", *CHESS]) == 0
    assert "legal-move accuracy on 3 held-out games" in capsys.readouterr().out
    report = json.loads((out / "accuracy.json").read_text())
    assert report["trained"]["positions"] == report["random_init"]["positions"] > 0
    assert report["config"]["context"] == 32 and (out / "model" / "tokenizer.json").is_file()
    assert main(["games", "chess-model", "--out", str(out), "--steps", "2", *CHESS, "--player", "greedy", "--resume"]) == 2
    assert "player = 'random' there, 'greedy' now" in capsys.readouterr().err


def test_generate_writes_the_games_and_says_how_fast(tmp_path, capsys):
    assert main(["games", "generate", "othello", "--n", "100", "--seed", "4", "--out", str(tmp_path / "o.npy")]) == 0
    assert "100 othello games in" in capsys.readouterr().out and (tmp_path / "o.npy").is_file()
    assert main(["games", "generate", "othello", "--n", "100", "--out", str(tmp_path / "o.npy")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["games", "generate", "othello", "--n", "5", "--player", "greedy", "--out", str(tmp_path / "p.npy")]) == 2
    assert "player has no effect when the game is othello" in capsys.readouterr().err
