"""The chess GPT's trainer (game_train's loop on chess strings): it learns, resumes bit-identically,
keeps log-spaced loadable checkpoints with a character tokenizer, and never predicts past a game's end."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from saekit.boardgames.chess_model import ChessModelConfig, build_chess_model
from saekit.boardgames.chess_train import chess_batch, chess_task, train_chess_model
from saekit.boardgames.game_train import IGNORE
from saekit.boardgames.pgn import encode_pgn, random_chess_games
from saekit.errors import ConfigError
from saekit.models.load import load_model
from saekit.strict import from_dict

pytest.importorskip("chess")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ChessModelConfig(layers=1, d_model=16, heads=2, context=32, steps=8, batch_games=4, lr=1e-2, warmup_steps=2, save_every=3, eval_games=4)


def test_a_batch_is_the_first_characters_of_the_seeds_games_and_their_next_ones():
    inputs, targets = chess_task(TINY).batch(2)
    games = random_chess_games(4, TINY.seed, start=8)  # step 2 of 4 games a step
    assert inputs.shape == targets.shape == (4, 32)
    for row, text in enumerate(games):
        ids = torch.from_numpy(encode_pgn(text[:33]).astype(np.int64))
        assert torch.equal(inputs[row], ids[:32]) and torch.equal(targets[row], ids[1:33])


def test_a_game_that_ends_early_is_not_predicted_past_its_end():
    inputs, targets = chess_batch([";1.f3 e5 2.g4 Qh4#", ";1.e4"], 32)
    assert (targets[0, :17] != IGNORE).all() and (targets[0, 17:] == IGNORE).all()  # 18 characters: 17 targets
    assert (targets[1, 4:] == IGNORE).all() and (inputs[1, 5:] == 0).all()


def test_games_are_played_only_as_far_as_the_context_needs():
    full = random_chess_games(20, 5)
    cut = random_chess_games(20, 5, max_plies=TINY.max_plies)
    assert all(len(c) >= TINY.context + 1 or c == f for c, f in zip(cut, full))
    assert all(f.startswith(c) for c, f in zip(cut, full))


def test_training_lowers_the_loss(tmp_path):
    losses = train_chess_model(dataclasses.replace(TINY, steps=30), tmp_path, progress=False).losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3


def test_a_stopped_and_resumed_run_ends_bit_identical(tmp_path):
    whole = train_chess_model(TINY, tmp_path / "whole", progress=False)
    first = train_chess_model(TINY, tmp_path / "pieces", stop_at=4, progress=False)
    assert len(first.losses) == 4 and not (tmp_path / "pieces" / "model").exists()
    resumed = train_chess_model(TINY, tmp_path / "pieces", resume=True, progress=False)
    assert resumed.losses == whole.losses
    a, b = whole.model.state_dict(), load_model(tmp_path / "pieces" / "model").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "pieces" / "state" / "state.json").read_text())["config"]["context"] == 32


def test_checkpoints_are_log_spaced_and_read_characters(tmp_path):
    train_chess_model(TINY, tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(f"step-{n}" for n in (0, 1, 2, 4, 8))
    start = load_model(tmp_path / "checkpoints" / "step-0")
    fresh = build_chess_model(TINY).state_dict()
    assert all(torch.equal(start.model.state_dict()[k], fresh[k]) for k in fresh)
    text = ";1.e4 e5 2.Nf3 Nc6 3.O-O"
    assert start.tokenizer(text)["input_ids"] == encode_pgn(text).tolist()
    assert start.tokenizer.decode(encode_pgn(text).tolist()) == text
    assert start.bos_token_id is None and start.model.config.n_positions == 32


def test_resume_refuses_another_config_by_name(tmp_path):
    train_chess_model(TINY, tmp_path, stop_at=2, progress=False)
    with pytest.raises(ConfigError, match="already holds a training run of the chess GPT"):
        train_chess_model(TINY, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="another config: player = 'random' there, 'greedy' now"):
        train_chess_model(dataclasses.replace(TINY, player="greedy"), tmp_path, resume=True, progress=False)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"context": 8}, "context must be at least 16"),
        ({"context": 0}, "context must be a positive integer"),
        ({"player": "stockfish"}, "player must be one of random, greedy"),
        ({"d_model": 16, "heads": 3}, "heads"),
        ({"seed": 2, "eval_seed": 2}, "eval_seed"),
    ],
)
def test_bad_configs_are_refused_by_name(values, words):
    with pytest.raises(ConfigError, match=words):
        from_dict(ChessModelConfig, values, where="chess-model")
