"""The Othello-GPT trainer: it learns, resumes bit-identically, keeps log-spaced loadable checkpoints and
refuses to mix runs."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from saekit.boardgames import encode_moves, random_games
from saekit.boardgames.othello_model import OthelloModelConfig, build_model
from saekit.boardgames.othello_train import checkpoint_steps, learning_rate, train_othello_model
from saekit.errors import ConfigError
from saekit.models.load import load_model
from saekit.sources.model import ModelSource
from saekit.strict import from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = OthelloModelConfig(layers=2, d_model=16, heads=2, steps=12, batch_games=8, lr=1e-2, warmup_steps=2, save_every=4, eval_games=10)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_lowers_the_loss(tmp_path):
    config = dataclasses.replace(TINY, steps=40)
    losses = train_othello_model(config, tmp_path, progress=False).losses
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1


def test_a_stopped_and_resumed_run_ends_bit_identical(tmp_path):
    whole = train_othello_model(TINY, tmp_path / "whole", progress=False)
    first = train_othello_model(TINY, tmp_path / "pieces", stop_at=6, progress=False)
    assert len(first.losses) == 6 and not (tmp_path / "pieces" / "model").exists()
    resumed = train_othello_model(TINY, tmp_path / "pieces", resume=True, progress=False)
    assert resumed.losses == whole.losses
    a, b = _weights(whole.model), _weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = load_model(tmp_path / "pieces" / "model").model.state_dict()
    assert all(torch.equal(a[k], saved[k]) for k in a)


def test_checkpoints_are_log_spaced_and_load(tmp_path):
    assert checkpoint_steps(12) == [0, 1, 2, 4, 8, 12]
    assert checkpoint_steps(16) == [0, 1, 2, 4, 8, 16]
    assert checkpoint_steps(1) == [0, 1]
    trained = train_othello_model(TINY, tmp_path, progress=False)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == sorted(f"step-{n}" for n in [0, 1, 2, 4, 8, 12])
    start = load_model(tmp_path / "checkpoints" / "step-0").model.state_dict()
    fresh = build_model(TINY).state_dict()
    assert all(torch.equal(start[k], fresh[k]) for k in fresh)
    last = load_model(tmp_path / "checkpoints" / "step-12").model.state_dict()
    final = _weights(trained.model)
    assert all(torch.equal(last[k], final[k]) for k in final)
    assert json.loads((tmp_path / "state" / "state.json").read_text())["step"] == 12


def test_the_tokenizer_reads_square_names(tmp_path):
    train_othello_model(dataclasses.replace(TINY, steps=1, warmup_steps=0), tmp_path, progress=False)
    loaded = load_model(tmp_path / "model")
    moves = random_games(1, seed=3).moves[:, :5]
    from saekit.boardgames import decode_tokens, square_name

    text = " ".join(square_name(int(s)) for s in decode_tokens(encode_moves(moves, context=5))[0])
    assert loaded.tokenizer(text)["input_ids"] == encode_moves(moves, context=5)[0].tolist()
    assert loaded.tokenizer.pad_token_id == 0 and loaded.bos_token_id is None


def test_model_source_reads_the_residual_stream_of_the_saved_model(tmp_path):
    train_othello_model(dataclasses.replace(TINY, steps=2, warmup_steps=0), tmp_path, progress=False)
    loaded = load_model(tmp_path / "model")
    tokens = torch.from_numpy(encode_moves(random_games(4, seed=5).moves))
    source = ModelSource(loaded, tokens, ["layers.0.resid_post", "layers.1.resid_post"], chunk_seqs=4, forward_batch=2, skip_positions=0)
    chunk = source.chunk(0, seed=0)
    order = source.sequence_ids(0, seed=0)
    with torch.no_grad():
        hidden = loaded.model(input_ids=tokens[order], output_hidden_states=True).hidden_states
    assert chunk.acts["layers.0.resid_post"].shape == (4 * 59, 16)
    torch.testing.assert_close(chunk.acts["layers.0.resid_post"], hidden[1].reshape(-1, 16))


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    config = dataclasses.replace(TINY, steps=100, warmup_steps=10, lr=1.0)
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 10) == pytest.approx(1.0)
    assert learning_rate(config, 100) == pytest.approx(0.1)


def test_a_folder_holding_a_run_is_refused_without_resume(tmp_path):
    train_othello_model(dataclasses.replace(TINY, steps=1, warmup_steps=0), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="already holds a training run of the Othello-GPT.*--resume"):
        train_othello_model(dataclasses.replace(TINY, steps=1, warmup_steps=0), tmp_path, progress=False)


def test_resume_needs_a_state_of_the_same_config(tmp_path):
    with pytest.raises(ConfigError, match="nothing to resume"):
        train_othello_model(TINY, tmp_path, resume=True, progress=False)
    train_othello_model(TINY, tmp_path, stop_at=2, progress=False)
    with pytest.raises(ConfigError, match="another config: lr"):
        train_othello_model(dataclasses.replace(TINY, lr=0.5), tmp_path, resume=True, progress=False)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"d_model": 16, "heads": 3}, "heads"),
        ({"seed": 1, "eval_seed": 1}, "eval_seed"),
        ({"steps": 0}, "steps must be a positive"),
        ({"lr": float("nan")}, "lr"),
        ({"steps": 10, "warmup_steps": 11}, "warmup_steps"),
    ],
)
def test_bad_configs_are_refused_by_name(values, words):
    with pytest.raises(ConfigError, match=words):
        from_dict(OthelloModelConfig, values)


def test_stop_at_outside_the_run_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="stop_at"):
        train_othello_model(TINY, tmp_path, stop_at=13, progress=False)
