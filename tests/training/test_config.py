import pytest

from saekit.errors import ConfigError
from saekit.strict import from_dict
from saekit.training.config import TrainConfig


def test_tokens_round_up_to_whole_steps():
    cfg = TrainConfig(tokens=10_001, batch_size=1000)
    assert cfg.total_steps == 11
    assert cfg.total_tokens == 11_000


def test_exactly_one_of_steps_and_tokens():
    with pytest.raises(ConfigError, match="exactly one of steps and tokens"):
        TrainConfig()
    with pytest.raises(ConfigError, match="exactly one of steps and tokens"):
        TrainConfig(steps=10, tokens=100)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'stepz'.*valid keys are steps"):
        from_dict(TrainConfig, {"stepz": 3})


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        TrainConfig(steps=1, batch_size=0)
    with pytest.raises(ConfigError, match="train.steps: expected an integer"):
        from_dict(TrainConfig, {"steps": "many"}, where="train")


def test_defaults_scale_with_short_runs():
    cfg = TrainConfig(steps=200, batch_size=100)
    assert cfg.lr_warmup_steps == 0
    assert cfg.resolved_sparsity_warmup == 20
    assert cfg.resolved_dead_tokens == 2000
    long = TrainConfig(steps=1_000_000, batch_size=4096)
    assert (long.lr_warmup_steps, long.resolved_sparsity_warmup, long.resolved_dead_tokens) == (0, 2000, 10_000_000)
