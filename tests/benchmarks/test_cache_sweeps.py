"""benchmarks/cache_sweeps.py: the break-even count, and that the recomputing and the cache sweeps are
the same training run over the two kinds of data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import cache_sweeps  # noqa: E402

from saekit.cli.run_config import load_run_config  # noqa: E402


@pytest.mark.parametrize(
    "write, cached, recomputed, n",
    [
        (100.0, [50.0], [100.0], 3),  # 100 + 50·2 = 2·100 is not yet faster
        (10.0, [50.0, 70.0], [100.0, 100.0], 1),  # the mean sweep is compared
        (10.0, [100.0], [90.0], None),  # reading the cache is slower than recomputing: never
    ],
)
def test_break_even_is_the_first_count_of_sweeps_where_the_cache_path_takes_less_time(write, cached, recomputed, n):
    assert cache_sweeps.break_even(write, cached, recomputed) == n


def test_the_two_paths_train_the_same_saes_with_the_same_settings(tmp_path):
    cfg = cache_sweeps.CacheSweepCase(contexts=64)
    paths = {}
    for name, data in (("model", cache_sweeps._model_data(cfg)), ("cache", f'kind = "cache"\npath = "{tmp_path / "c"}"')):
        paths[name] = tmp_path / f"{name}.toml"
        paths[name].write_text(cache_sweeps._config(cfg, tmp_path / name, data, k=16, seed=0))
    model, cache = (load_run_config(p).config for p in paths.values())
    assert model.train == cache.train and model.saes == cache.saes
    assert model.train.steps == cfg.rows // cfg.batch == 1 and model.train.norm_estimation_tokens == cfg.batch
    assert [s["site"] for s in model.saes] == list(cfg.sites) and {s["k"] for s in model.saes} == {16}
    assert model.data["n_tokens"] == 64 * 128 and model.data["sites"] == list(cfg.sites) and cache.data["kind"] == "cache"
