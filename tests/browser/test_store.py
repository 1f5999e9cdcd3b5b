"""A browser cache is a compact store: one fixed-size record per latent (at most 2 KB with the default
settings), the shared token sample and meta.json. It round-trips within its quantisation, and its
binary files are checked against meta.json on load, so that no page indexes out of range: a file of
the wrong size or holding an out-of-range row, neighbour or activation is an ArtifactError naming it."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from browser_helpers import tiny_data

from saekit.browser import BrowserConfig
from saekit.browser.meta import Dims
from saekit.browser.record import record_dtype
from saekit.browser.stats import StatsSettings
from saekit.browser.store import CACHE_DIR, META, RECORDS, TOKENS, load_data, save_data
from saekit.errors import ArtifactError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_latent_record_with_the_default_settings_is_at_most_2_kb():
    s, cfg = StatsSettings(), BrowserConfig()
    dims = Dims(s.top_n, s.quantile_bands, s.per_band, s.random_windows, s.window, s.histogram_bins, cfg.neighbours, cfg.logit_k)
    assert record_dtype(dims).itemsize <= 2048


def test_the_store_round_trips_within_its_quantisation(tmp_path):
    data = tiny_data()
    save_data(tmp_path, data, "key")
    back = load_data(tmp_path)
    top = data.stats.max_act.view(-1, 1)
    assert torch.equal(back.stats.max_act, data.stats.max_act)
    assert torch.allclose(back.stats.top_values, data.stats.top_values, atol=float(top.max()) / 65535)
    for name in ("top_windows", "random_windows"):
        error = (getattr(back.stats, name) - getattr(data.stats, name)).abs().amax(dim=(1, 2))
        assert (error <= top.flatten() / 255 + 1e-6).all(), name
        assert torch.equal(getattr(back.stats, name) > 0, getattr(data.stats, name) > 0), name  # firing or not survives
    for name in ("top_rows", "quantile_rows", "random_rows", "histogram", "fire_count"):
        assert torch.equal(getattr(back.stats, name), getattr(data.stats, name)), name
    assert torch.equal(back.tokens, data.tokens) and back.vocab == data.vocab
    assert torch.equal(back.neighbours.ids, data.neighbours.ids)
    assert torch.allclose(back.neighbours.cosine, data.neighbours.cosine, atol=1e-3)
    assert back.effects is not None and data.effects is not None
    assert torch.equal(back.effects.promoted_ids, data.effects.promoted_ids)
    assert torch.allclose(back.effects.suppressed, data.effects.suppressed, rtol=1e-3)
    files = sorted(p.name for p in (tmp_path / CACHE_DIR).iterdir())
    assert files == [RECORDS, META, TOKENS]


def test_a_cache_without_logit_effects_loads(tmp_path):
    save_data(tmp_path, dataclasses.replace(tiny_data(), effects=None), "key")
    assert load_data(tmp_path).effects is None


def change_records(path, field, index, value):
    meta = json.loads((path.parent / META).read_text())
    dims = Dims(**meta["dims"])
    records = np.frombuffer(path.read_bytes(), dtype=record_dtype(dims)).copy()
    records[field][index] = value
    path.write_bytes(records.tobytes())


@pytest.mark.parametrize(
    "field, index, value, words",
    [
        ("top_rows", (2, 0), 10**6, "top_rows holds values outside -1..27"),
        ("quantile_rows", (0, 0, 0), -2, "quantile_rows holds values outside -1..27"),
        ("random_rows", (0, 0), 28, "random_rows holds values outside -1..27"),
        ("neighbour_ids", (1, 0), 6, "neighbour_ids holds values outside 0..5"),
        ("max_act", 3, np.nan, "max_act holds a value that is not a finite number >= 0"),
        ("max_act", 3, -1.0, "max_act holds a value that is not a finite number >= 0"),
        ("top_rows", (1, 0), -1, "a latent with a largest activation has no top example"),
    ],
)
def test_records_out_of_range_are_refused_by_name(tmp_path, field, index, value, words):
    save_data(tmp_path, tiny_data(), "key")
    path = tmp_path / CACHE_DIR / RECORDS
    change_records(path, field, index, value)
    with pytest.raises(ArtifactError, match=f"{path} does not match its meta.json") as caught:
        load_data(tmp_path)
    assert words in str(caught.value)


@pytest.mark.parametrize("name", [RECORDS, TOKENS])
@pytest.mark.parametrize("change", ["truncate", "extend", "empty"])
def test_a_binary_file_of_the_wrong_size_is_refused_by_name(tmp_path, name, change):
    save_data(tmp_path, tiny_data(), "key")
    path = tmp_path / CACHE_DIR / name
    data = path.read_bytes()
    path.write_bytes({"truncate": data[:-1], "extend": data + b"\0" * 4, "empty": b""}[change])
    with pytest.raises(ArtifactError, match=f"{path} holds [0-9,]+ bytes, not the") as caught:
        load_data(tmp_path)
    assert f"delete {tmp_path / CACHE_DIR} to rebuild it" in str(caught.value)


@pytest.mark.parametrize("name", [RECORDS, TOKENS])
def test_a_binary_file_missing_or_a_folder_is_refused_by_name(tmp_path, name):
    save_data(tmp_path, tiny_data(), "key")
    path = tmp_path / CACHE_DIR / name
    path.unlink()
    with pytest.raises(ArtifactError, match=f"browser cache file {path} does not exist"):
        load_data(tmp_path)
    path.mkdir()
    with pytest.raises(ArtifactError, match=f"browser cache file {path} is a folder"):
        load_data(tmp_path)


def test_a_tiny_activation_in_a_window_stays_a_firing(tmp_path):
    data = tiny_data()
    windows = data.stats.top_windows.clone()
    windows[2, 0, 0] = float(data.stats.max_act[2]) / 1000  # rounds to 0 steps of max/255
    save_data(tmp_path, dataclasses.replace(data, stats=dataclasses.replace(data.stats, top_windows=windows)), "key")
    assert 0 < float(load_data(tmp_path).stats.top_windows[2, 0, 0]) <= float(data.stats.max_act[2]) / 255 + 1e-6
