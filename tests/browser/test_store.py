"""A browser cache's tensors are checked against its meta.json on load, so that no page indexes out
of range: a missing, misshapen or out-of-range tensor is an ArtifactError naming data.safetensors."""

import dataclasses

import pytest
from browser_helpers import tiny_data
from safetensors.torch import load_file, save_file

from saekit.browser.store import CACHE_DIR, load_data, save_data
from saekit.errors import ArtifactError

pytestmark = pytest.mark.usefixtures("one_thread")


def set_big(t):
    t["stats.top_rows"][2, 0] = 10**6


def set_low(t):
    t["stats.quantile_rows"][0, 0, 0] = -2


def set_neighbour(t):
    t["neighbours.ids"][1, 0] = 6


def narrow_windows(t):
    for k in ("stats.top_windows", "stats.quantile_windows", "stats.random_windows"):
        t[k] = t[k][..., :2]  # the token of each example is at index window_before = 2


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda t: t.pop("stats.top_rows"), "missing tensor(s) stats.top_rows"),
        (lambda t: t.pop("tokens"), "missing tensor(s) tokens"),
        (lambda t: t.pop("effects.suppressed"), "missing tensor(s) effects.suppressed"),
        (lambda t: t.update({"stats.histogram": t["stats.histogram"][:5]}), "stats.histogram has shape [5, 5]"),
        (lambda t: t.update({"stats.fire_count": t["stats.fire_count"].float()}), "stats.fire_count is stored as torch.float32"),
        (lambda t: t.update({"neighbours.ids": t["neighbours.ids"][:, :, None]}), "neighbours.ids has shape"),
        (lambda t: t.update({"stats.top_rows": t["stats.top_rows"][:, :2]}), "stats.top_rows has shape [6, 2], expected [6, 3]"),
        (lambda t: t.update({"stats.quantile_windows": t["stats.quantile_windows"][..., :2]}), "stats.quantile_windows"),
        (lambda t: t.update({"effects.promoted_ids": t["effects.promoted_ids"][:, :1]}), "effects.promoted_ids has shape"),
        (lambda t: t.update({"tokens": t["tokens"][:, :4]}), "not integer [contexts, 8]"),
        (lambda t: t.update({"tokens": t["tokens"][:1]}), "n_rows=28 is more than the 7 rows"),
        (lambda t: t.update({"stats.random_windows": t["stats.random_windows"][:, :1]}), "stats.random_windows has shape"),
        (lambda t: t.update({"stats.random_rows": t["stats.random_rows"].float()}), "stats.random_rows is stored as"),
        (lambda t: t["stats.random_rows"].__setitem__((0, 0), 28), "stats.random_rows holds values outside -1..27"),
        (narrow_windows, "window_before outside"),
        (set_big, "stats.top_rows holds values outside -1..27"),
        (set_low, "stats.quantile_rows holds values outside -1..27"),
        (set_neighbour, "neighbours.ids holds values outside 0..5"),
    ],
)
def test_tensors_that_do_not_fit_meta_json_are_refused(tmp_path, change, words):
    save_data(tmp_path, tiny_data(), "key")
    path = tmp_path / CACHE_DIR / "data.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    with pytest.raises(ArtifactError, match=f"{path} does not match its meta.json") as caught:
        load_data(tmp_path)
    assert words in str(caught.value)


def test_a_cache_without_logit_effects_loads(tmp_path):
    save_data(tmp_path, dataclasses.replace(tiny_data(), effects=None), "key")
    assert load_data(tmp_path).effects is None


def test_a_data_file_that_is_not_safetensors_is_refused_by_name(tmp_path):
    save_data(tmp_path, tiny_data(), "key")
    path = tmp_path / CACHE_DIR / "data.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ArtifactError, match=f"cannot read the browser cache {path}"):
        load_data(tmp_path)
