import itertools
import re
from pathlib import Path

import pytest
import torch
from cache_data import ids, shard_tensors, with_tensors, write

from saekit.errors import ArtifactError, DataError
from saekit.sources.cache import CacheSource


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    write(tmp_path / "cache")
    return tmp_path / "cache"


# ------------------------------------------------------------------ shuffled reading


@pytest.mark.parametrize("window_shards", [1, 2, 16])
def test_every_row_appears_once_per_epoch_and_sites_stay_aligned(cache: Path, window_shards: int):
    source = CacheSource(cache, window_shards=window_shards)
    epochs = [sum(ids(source, 12, 4, start=4 * e), []) for e in range(2)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(48))
    assert epochs[0] != epochs[1] and epochs[0] != list(range(48))
    for batch in itertools.islice(source.batches(12, seed=3), 5):
        assert torch.equal(batch["b"].x, 2 * batch["a"].x)


def test_batches_straddling_epochs_still_visit_every_row_once(cache: Path):
    stream = sum(ids(CacheSource(cache, window_shards=2), 7, 96 // 7), [])
    assert sorted(stream[:48]) == list(range(48)) and len(set(stream[48:])) == len(stream[48:])


def test_batches_are_deterministic_and_resume_exactly(cache: Path):
    source = CacheSource(cache, window_shards=2)
    full = ids(source, 5, 12, seed=7)
    assert ids(CacheSource(cache, window_shards=2), 5, 12, seed=7) == full
    assert ids(source, 5, 5, seed=7, start=7) == full[7:]
    assert ids(source, 5, 12, seed=8) != full


def test_site_selection_and_bad_arguments(cache: Path):
    only_b = CacheSource(cache, sites=["b"])
    assert only_b.sites == ("b",) and set(next(only_b.batches(4, seed=0))) == {"b"}
    assert [len(x) for x in only_b.iter_rows(20, max_rows=45)] == [20, 20, 5]
    with pytest.raises(DataError, match="no site 'c'"):
        CacheSource(cache, sites=["c"])
    with pytest.raises(DataError, match="several sites"):
        CacheSource(cache).iter_rows(4)
    with pytest.raises(ArtifactError, match="does not exist"):
        CacheSource(cache / "nowhere")


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_non_finite_rows_behind_a_valid_checksum_are_refused_by_shard_and_row(tmp_path: Path, bad: float, dtype: str):
    write(tmp_path, dtype=dtype)
    tensors = shard_tensors(tmp_path, 1)
    tensors["b"][3, 2] = bad  # written by some other tool: the checksum vouches for it
    with_tensors(tmp_path, 1, tensors)
    source = CacheSource(tmp_path, verify="full")
    words = re.escape(f"{tmp_path / 'shard-000001.safetensors'}: row 3 of site 'b'") + ".*NaN or inf"
    with pytest.raises(DataError, match=words):
        list(itertools.islice(source.batches(16, seed=0), 3))  # three batches cover every row
    with pytest.raises(DataError, match=words):
        list(source.iter_rows(7, site="b"))
    assert len(list(source.iter_rows(7, site="a"))) == 7  # the other site is clean
