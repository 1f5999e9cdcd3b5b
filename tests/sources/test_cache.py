import hashlib
import itertools
import json
from pathlib import Path

import pytest
import torch

from saekit.errors import ArtifactError, DataError
from saekit.sources.cache import CacheSource, read_manifest, verify_cache, write_cache
from saekit.types import ActivationSource

SITES = ("a", "b")
D = 3
INFO = {"model": "toy", "corpus": "unit-test", "context": 8, "seed": 0}
CHUNK_SIZES = (7, 13, 5, 9, 11, 3)  # 48 rows, chunk boundaries unaligned with shards of 10


def data(n: int = sum(CHUNK_SIZES)) -> torch.Tensor:
    """Site ``a`` rows: column 0 is the token index (exact in every dtype up to 256), the rest noise."""
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(0))
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return x


def chunks(x: torch.Tensor, sizes=CHUNK_SIZES, fail_after: int | None = None):
    """The chunk stream of ``x``: site b = 2 * site a, so rows of the two sites must stay aligned."""
    start = 0
    for k, n in enumerate(sizes):
        if k == fail_after:
            raise KeyboardInterrupt("killed")
        yield {"a": x[start : start + n], "b": 2 * x[start : start + n]}
        start += n


def write(folder: Path, x: torch.Tensor | None = None, **kwargs):
    x = data() if x is None else x
    options = {"sites": SITES, "d_in": {"a": D, "b": D}, "info": INFO, "dtype": "float32", "shard_tokens": 10}
    return write_cache(folder, kwargs.pop("stream", None) or chunks(x), **{**options, **kwargs})


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.safetensors"))}


def ids(source: CacheSource, batch_size: int, n_batches: int, *, seed: int = 0, start: int = 0) -> list[list[int]]:
    batches = itertools.islice(source.batches(batch_size, seed=seed, start=start), n_batches)
    return [b["a"].x[:, 0].long().tolist() for b in batches]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    write(tmp_path / "cache")
    return tmp_path / "cache"


# ------------------------------------------------------------------ writing


def test_fp32_round_trip_is_exact_and_sites_stay_aligned(cache: Path):
    x = data()
    source = CacheSource(cache)
    assert isinstance(source, ActivationSource)
    assert source.sites == SITES and source.d_in("a") == D and source.n_rows == 48
    assert torch.equal(torch.cat(list(source.iter_rows(8, site="a"))), x)
    assert torch.equal(torch.cat(list(source.iter_rows(8, site="b"))), 2 * x)


def test_chunks_that_reuse_one_buffer_are_copied(tmp_path: Path):
    x, buffer = data(), torch.empty(8, D)

    def reusing():
        for start in range(0, 48, 8):
            buffer.copy_(x[start : start + 8])  # the next chunk overwrites the previous one in place
            yield {"a": buffer, "b": 2 * buffer}

    write(tmp_path, stream=reusing())
    assert torch.equal(torch.cat(list(CacheSource(tmp_path).iter_rows(48, site="a"))), x)


@pytest.mark.parametrize("dtype, storage", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_half_precision_round_trip_equals_the_cast(tmp_path: Path, dtype: str, storage: torch.dtype):
    x = data()
    write(tmp_path, dtype=dtype)
    back = torch.cat(list(CacheSource(tmp_path).iter_rows(16, site="a")))
    assert back.dtype == torch.float32
    assert torch.equal(back, x.to(storage).float())
    assert torch.allclose(back, x, rtol=1e-2, atol=1e-2)


def test_manifest_records_the_cache(cache: Path):
    raw = json.loads((cache / "manifest.json").read_text())
    assert raw["complete"] is True and raw["format_version"] == 1 and raw["info"] == INFO
    assert raw["sites"] == ["a", "b"] and raw["d_in"] == {"a": D, "b": D}
    assert raw["dtype"] == "float32" and raw["shard_tokens"] == 10 and raw["total_tokens"] == 48
    assert raw["chunks_done"] == len(CHUNK_SIZES) and raw["chunk_rows_done"] == 48
    assert [s["rows"] for s in raw["shards"]] == [10, 10, 10, 10, 8]
    for shard in raw["shards"]:
        content = (cache / shard["file"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(content).hexdigest() and shard["bytes"] == len(content)
    assert sorted(p.name for p in cache.iterdir()) == ["manifest.json"] + [s["file"] for s in raw["shards"]]


def test_an_interrupted_write_resumes_to_the_same_bytes(tmp_path: Path):
    whole = write(tmp_path / "whole")
    folder = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        write(folder, stream=chunks(data(), fail_after=4))  # 34 rows produced: 3 shards written, 4 buffered
    partial = read_manifest(folder)
    assert not partial.complete and partial.total_tokens == 30
    assert (partial.chunks_done, partial.chunk_rows_done) == (3, 25)  # chunk 3 (rows 25..33) is half written
    (folder / ".shard-000003.safetensors.x1.tmp").write_bytes(b"left by a killed run")
    with pytest.warns(UserWarning, match="incomplete.* 30 tokens"):
        assert CacheSource(folder).n_rows == 30
    assert write(folder) == whole
    assert shard_bytes(folder) == shard_bytes(tmp_path / "whole")
    assert not list(folder.glob(".*"))  # the stray temporary file is gone


def test_resume_with_a_chunk_function_starts_at_the_first_unfinished_chunk(tmp_path: Path):
    x, asked = data(), []

    def from_chunk(first: int):
        asked.append(first)
        offset = sum(CHUNK_SIZES[:first])
        return chunks(x[offset:], CHUNK_SIZES[first:])

    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, stream=chunks(x, fail_after=4))
    write(tmp_path, stream=from_chunk)
    assert asked == [3]
    assert torch.equal(torch.cat(list(CacheSource(tmp_path).iter_rows(48, site="b"))), 2 * x)
    assert write(tmp_path, stream=lambda first: pytest.fail("a complete cache must not read chunks")).complete


def test_resume_into_a_different_cache_is_refused(cache: Path):
    with pytest.raises(ArtifactError, match="different info"):
        write(cache, info={**INFO, "seed": 1})
    with pytest.raises(ArtifactError, match="different dtype"):
        write(cache, dtype="float16")
    assert write(cache, dtype="float16", resume=False).dtype == "float16"  # resume=False starts over


def test_a_short_stream_on_resume_is_an_error(tmp_path: Path):
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path, stream=chunks(data(), fail_after=4))
    with pytest.raises(DataError, match="same stream"):
        write(tmp_path, stream=chunks(data(), sizes=(7, 13)))


def test_nan_and_overflow_are_refused_naming_the_site(tmp_path: Path):
    x = data()
    bad = {"a": x[:4], "b": x[:4].clone()}
    bad["b"][2, 1] = float("nan")
    with pytest.raises(DataError, match=r"chunk 0, site 'b'.*NaN.*row 2"):
        write(tmp_path, stream=iter([bad]))
    with pytest.raises(DataError, match=r"site 'a'.*overflow float16"):
        write(tmp_path / "f16", stream=iter([{"a": x[:4] * 1e5, "b": x[:4]}]), dtype="float16")
    with pytest.raises(DataError, match=r"site 'b'.*shape"):
        write(tmp_path / "shape", stream=iter([{"a": x[:4], "b": x[:4, :2]}]))


# ------------------------------------------------------------------ integrity


def test_a_truncated_shard_is_named(cache: Path):
    path = cache / "shard-000002.safetensors"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ArtifactError, match=r"shard-000002\.safetensors: truncated"):
        CacheSource(cache, verify="none")
    assert [p.file for p in verify_cache(cache)] == ["shard-000002.safetensors"]


def test_a_flipped_byte_is_a_checksum_error_naming_the_shard(cache: Path):
    path = cache / "shard-000001.safetensors"
    content = bytearray(path.read_bytes())
    content[-3] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises(ArtifactError, match=r"shard-000001\.safetensors: checksum mismatch"):
        CacheSource(cache, verify="full")
    lazy = CacheSource(cache)  # opens: the checksum is checked when the shard is first read
    with pytest.raises(ArtifactError, match=r"shard-000001\.safetensors: checksum mismatch"):
        list(lazy.iter_rows(48, site="a"))
    assert CacheSource(cache, verify="none").n_rows == 48
    assert [str(p).split(":")[0] for p in verify_cache(cache)] == ["shard-000001.safetensors"]


def test_a_missing_shard_is_named(cache: Path):
    (cache / "shard-000003.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"shard-000003\.safetensors: missing"):
        CacheSource(cache)
    assert verify_cache(cache)[0].problem == "missing"


def test_an_intact_cache_has_no_problems(cache: Path):
    assert verify_cache(cache) == []
    assert CacheSource(cache, verify="full").describe()["info"] == INFO


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
