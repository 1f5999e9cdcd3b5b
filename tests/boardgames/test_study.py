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


def test_a_probe_of_the_chess_classes_leaves_the_empty_one_out_of_the_blank_masked_f1():
    g = np.random.default_rng(1)
    labels = g.integers(0, 13, size=(900, 2))
    board = np.eye(13, dtype=bool)[labels].reshape(len(labels), -1)
    encoded = torch.from_numpy(board.astype(np.float64) @ g.normal(size=(26, 40)))
    result = probe_board(encoded, board, 600, classes=13, empty=6)
    assert result.accuracy > 0.98 and result.f1_blank_masked > 0.98
    with pytest.raises(DataError, match="empty class 13 is not one of the 13"):
        probe_board(encoded, board, 600, classes=13, empty=13)


@pytest.fixture(scope="module")
def chess_run(tmp_path_factory):
    pytest.importorskip("chess")
    from saekit.boardgames.chess_model import ChessModelConfig
    from saekit.boardgames.chess_train import train_chess_model

    run = tmp_path_factory.mktemp("chess-gpt")
    config = ChessModelConfig(layers=2, d_model=16, heads=2, context=64, steps=4, batch_games=4, warmup_steps=0, save_every=2)
    train_chess_model(config, run, progress=False)
    return run


def test_the_chess_study_scores_the_pieces_and_the_rules_at_the_dots(chess_run, tmp_path, capsys):
    path = tmp_path / "chess.toml"
    body = _config(chess_run, tmp_path).read_text().replace(f'"{SITE}"', '"layers.1.resid_post"')
    path.write_text(body.replace('kind = "games"', 'kind = "games"\ngame = "chess"').replace("n_games = 60", "n_games = 30"))
    assert main(["games", "study", str(path)]) == 0
    rows = json.loads((tmp_path / "out" / "study.json").read_text())["rows"]
    assert [(r["model"], r["name"]) for r in rows] == [("trained", "topk-4"), ("trained", "standard"), ("random", "topk-4"), ("random", "standard")]
    for row in rows:
        assert "coverage_legal" not in row
        for key in ("coverage_board", "coverage_rules", "reconstruction", "reconstruction_with_empty"):
            assert 0 <= row[key] <= 1
    text = (tmp_path / "out" / "study.md").read_text()
    assert text.startswith("# Chess study") and "coverage_rules" in text and "13 piece classes" in text


def test_a_chess_study_of_an_othello_model_is_refused_by_name(model_run, tmp_path):
    path = _config(model_run, tmp_path)
    path.write_text(path.read_text().replace('kind = "games"', 'kind = "games"\ngame = "chess"'))
    with pytest.raises(ConfigError, match="not a model of chess"):
        run_study(load_study_config(path), tmp_path / "out")


def test_a_resumed_study_refuses_saes_the_config_added_by_name(model_run, tmp_path):
    path = _config(model_run, tmp_path)
    run_study(load_study_config(path), tmp_path / "out")
    path.write_text(path.read_text() + '[[sae]]\narchitecture = "gated_anneal"\nname = "gated-anneal"\nd_sae = 32\n')
    with pytest.raises(ConfigError, match=r"asks for \['topk-4', 'standard', 'gated-anneal'\] \(not trained there: \['gated-anneal'\]\)"):
        run_study(load_study_config(path), tmp_path / "out", resume=True)


def test_one_command_trains_the_game_model_then_runs_the_study(tmp_path, capsys):
    """`--train-model`: the model of study.model is trained first (the config's [game_model]), resumably."""
    run = tmp_path / "gpt"
    path = _config(run, tmp_path)
    tiny = "[game_model]\nlayers = 1\nd_model = 16\nheads = 2\nsteps = 3\nbatch_games = 4\nwarmup_steps = 0\neval_games = 4\nsave_every = 2\n"
    path.write_text(path.read_text().replace(f'"{SITE}"', '"layers.0.resid_post"') + tiny)
    assert main(["games", "study", str(path)]) == 2  # without --train-model the model must be there
    assert "study.model: " in capsys.readouterr().err
    assert main(["games", "study", str(path), "--train-model"]) == 0
    assert (run / "model" / "config.json").is_file() and (run / "checkpoints" / "step-0").is_dir()
    assert json.loads((run / "accuracy.json").read_text())["config"]["d_model"] == 16
    rows = json.loads((tmp_path / "out" / "study.json").read_text())["rows"]
    assert [(r["model"], r["name"]) for r in rows][:2] == [("trained", "topk-4"), ("trained", "standard")]
    out = capsys.readouterr().out
    assert "training the othello model into" in out
    assert main(["games", "study", str(path), "--train-model", "--resume"]) == 0  # the model is there: not trained again
    assert "is there: not trained again" in capsys.readouterr().out
    path.write_text(path.read_text().replace("layers = 1", "layers = 1\nwidth = 3"))
    shutil.rmtree(run)
    assert main(["games", "study", str(path), "--train-model"]) == 2
    assert "game_model: unknown setting(s) width of the othello model" in capsys.readouterr().err
