"""The board-game study end to end on a tiny Othello-GPT, and its linear-probe baseline."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from saekit.boardgames.probe import probe_board
from saekit.boardgames.study import load_study_config, run_study
from saekit.cli.main import main
from saekit.errors import ConfigError, DataError
from tests.track.tiny_checkpoints import SITE, write_checkpoints


def _board(labels: np.ndarray) -> np.ndarray:
    return np.eye(3, dtype=bool)[labels].reshape(len(labels), -1)


def test_a_probe_reads_a_linearly_encoded_board_and_not_a_random_one():
    g = np.random.default_rng(0)
    labels = g.integers(0, 3, size=(600, 4))
    board = _board(labels)
    encoded = torch.from_numpy(board.astype(np.float64) @ g.normal(size=(12, 10))) + 0.01 * torch.randn(600, 10, dtype=torch.float64)
    good = probe_board(encoded, board, 400)
    assert good.accuracy > 0.98 and good.f1_board == pytest.approx(good.accuracy)
    noise = probe_board(torch.randn(600, 10, dtype=torch.float64), board, 400)
    assert 0.2 < noise.accuracy < 0.45  # chance is a third


def test_probe_inputs_are_checked():
    board = _board(np.zeros((10, 2), dtype=int))
    with pytest.raises(DataError, match="split"):
        probe_board(torch.zeros(10, 3), board, 10)
    broken = board.copy()
    broken[0, :3] = True
    with pytest.raises(DataError, match="exactly one"):
        probe_board(torch.zeros(10, 3), broken, 5)


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("othello-gpt")
    write_checkpoints(run / "checkpoints", steps=(0, 4))
    shutil.copytree(run / "checkpoints" / "step-4", run / "model")
    return run


def _config(model_run, tmp_path, extra=""):
    path = tmp_path / "study.toml"
    path.write_text(f"""
out = "{tmp_path / 'out'}"
[study]
model = "{model_run / 'model'}"
eval_games = 20
{extra}
[data]
kind = "games"
sites = ["{SITE}"]
n_games = 60
[train]
steps = 10
batch_size = 64
norm_estimation_tokens = 128
progress = false
device = "cpu"
[[sae]]
architecture = "topk"
name = "topk-4"
d_sae = 32
k = 4
[[sae]]
architecture = "relu"
name = "standard"
d_sae = 32
""")
    return path


def test_the_study_trains_and_scores_both_models(model_run, tmp_path, capsys):
    assert main(["games", "study", str(_config(model_run, tmp_path))]) == 0
    out = tmp_path / "out"
    result = json.loads((out / "study.json").read_text())
    assert [(r["model"], r["name"]) for r in result["rows"]] == [
        ("trained", "topk-4"), ("trained", "standard"), ("random", "topk-4"), ("random", "standard")
    ]  # fmt: skip
    for row in result["rows"]:
        for key in ("coverage_board", "coverage_legal", "reconstruction", "reconstruction_with_empty"):
            assert 0 <= row[key] <= 1
    assert result["rows"][0]["l0"] == pytest.approx(4)
    assert set(result["probes"]) == {"trained", "random"} and 0 < result["probes"]["trained"]["accuracy"] <= 1
    assert (out / "study.png").is_file() and "| trained | topk-4 |" in (out / "study.md").read_text()
    assert "linear probe" in capsys.readouterr().out.lower()
    again = run_study(load_study_config(_config(model_run, tmp_path)), out, resume=True)  # trained SAEs are reused
    assert [r["coverage_board"] for r in again] == [r["coverage_board"] for r in result["rows"]]


def test_bad_study_configs_are_named(model_run, tmp_path):
    with pytest.raises(ConfigError, match="study.control.*not a model folder"):
        load_study_config(_config(model_run, tmp_path, extra=f'control = "{tmp_path}"'))
    path = _config(model_run, tmp_path)
    with pytest.raises(ConfigError, match="study.toml.*eval_games"):
        load_study_config(path, ["study.eval_games=2"])
    with pytest.raises(ConfigError, match="data.model"):
        load_study_config(path, ["data.model=x"])
