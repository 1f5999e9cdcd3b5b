import os
from pathlib import Path

import pytest
from cache_data import INFO, make_unreadable, manifest_of, put_shard, safetensors_file, set_manifest, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saekit.errors import ArtifactError
from saekit.sources.cache import CacheSource, verify_cache


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    write(tmp_path / "cache")
    return tmp_path / "cache"


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




def named(cache: Path, shard: str, *words: str) -> None:
    """Reading ``cache`` raises an ArtifactError naming ``shard`` and ``words``, at the latest when the
    shard is first read, whatever ``verify`` says; :func:`verify_cache` lists the shard alone."""
    for verify in ("none", "lazy", "full"):
        with pytest.raises(ArtifactError) as caught:
            list(CacheSource(cache, verify=verify).iter_rows(48, site="a"))
        assert f"{shard}: " in str(caught.value)
        for word in words:
            assert word in str(caught.value), str(caught.value)
    problems = verify_cache(cache)
    assert [p.file for p in problems] == [shard]
    assert all(word in problems[0].problem for word in words), problems[0].problem


def test_a_folder_where_a_shard_should_be_is_named(cache: Path):
    path = cache / "shard-000002.safetensors"
    path.unlink()
    path.mkdir()
    named(cache, "shard-000002.safetensors", "not a regular file")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_pipe_where_a_shard_should_be_is_named_without_blocking(cache: Path):
    path = cache / "shard-000002.safetensors"
    path.unlink()
    os.mkfifo(path)
    named(cache, "shard-000002.safetensors", "not a regular file")


def test_a_zero_byte_shard_is_named(cache: Path):
    (cache / "shard-000003.safetensors").write_bytes(b"")
    named(cache, "shard-000003.safetensors", "truncated: 0 bytes")


A = {"dtype": "F32", "shape": [10, 3], "data_offsets": [0, 120]}
B = {"dtype": "F32", "shape": [10, 3], "data_offsets": [120, 240]}
DATA = bytes(240)  # 10 rows x 3 columns x 4 bytes, two sites


def test_a_hand_built_shard_with_the_real_layout_is_read(cache: Path):
    """The control of the cases below: the builder itself makes shards the reader accepts."""
    put_shard(cache, 0, safetensors_file({"a": A, "b": B}, DATA))
    assert verify_cache(cache) == []
    assert not next(CacheSource(cache).iter_rows(10, site="b")).any()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (safetensors_file([A, B], DATA), ["header", "object"]),
        (safetensors_file({"a": A, "b": {**B, "data_offsets": "xy"}}, DATA), ["'b'", "data_offsets"]),
        (safetensors_file({"a": A, "b": {**B, "data_offsets": [0, 120]}}, DATA), ["data_offsets", "[0, 120]"]),
        (safetensors_file({"a": A, "b": {**B, "shape": [5, 6]}}, DATA), ["'b'", "[10, 3]", "[5, 6]"]),
        (safetensors_file({"a": A, "b": {**B, "dtype": "F16"}}, DATA), ["'b'", "F32", "F16"]),
        (safetensors_file({"a": A, "b": B, "__metadata__": {}}, DATA), ["tensors", "__metadata__"]),
        (safetensors_file({"a": A, "b": B, "c": {**B, "data_offsets": [240, 360]}}, DATA + bytes(120)), ["header"]),
        (safetensors_file({"a": A, "b": B}, DATA, header_len=2**63), ["header"]),
        (safetensors_file({"a": A, "b": B}, DATA).replace(b'"a"', b'"\xff'), ["header"]),
        (bytes(300), ["header"]),
    ],
    ids=["list", "offsets-text", "offsets-overlap", "shape", "dtype", "metadata", "extra-tensor", "huge-header", "bad-json", "zeros"],
)
def test_a_shard_header_that_lies_is_named_even_with_a_valid_checksum(cache: Path, content: bytes, words: list[str]):
    put_shard(cache, 0, content)
    named(cache, "shard-000000.safetensors", *words)


def test_rows_that_contradict_the_shard_are_named(cache: Path):
    raw = manifest_of(cache)
    raw["shards"][4]["rows"] = 10  # the last shard holds 8 rows; the manifest's size leaves room for 10
    raw["total_tokens"] = raw["chunk_rows_done"] = 50
    set_manifest(cache, raw)
    named(cache, "shard-000004.safetensors", "header")


def test_a_shard_truncated_after_opening_is_refused_when_next_mapped(cache: Path):
    source = CacheSource(cache, window_shards=1)  # holds at most two shards mapped
    assert len(list(source.iter_rows(48, site="a"))) == 1  # maps shards 0..4 in turn; 0 is unmapped again
    path = cache / "shard-000000.safetensors"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ArtifactError, match=r"shard-000000\.safetensors: truncated"):
        list(source.iter_rows(48, site="a"))


def test_an_unreadable_shard_is_named(cache: Path):
    make_unreadable(cache / "shard-000001.safetensors")
    named(cache, "shard-000001.safetensors", "cannot be read", "Permission denied")


# Changes to the real header (F32 [10, 3] tensors at [0, 120] and [120, 240]), one or two at a time,
# so that every check is reached, not only the first.
VALUES = (
    st.sampled_from(["F32", "F16", [10, 3], [5, 6], [10], [0, 120], [120, 240], [0, 240], [240, 360], [-120, 0]])
    | st.lists(st.integers(-(2**65), 2**65), max_size=3)
    | st.none()
    | st.text(max_size=3)
    | st.integers()
)
FIELDS = st.sampled_from(["dtype", "shape", "data_offsets", "extra", None])  # None: the whole entry
CHANGES = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "__metadata__"]), FIELDS, VALUES), min_size=1, max_size=2)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=CHANGES, header_len=st.none() | st.integers(0, 2**64 - 1), tail=st.binary(max_size=130))
def test_any_shard_is_read_or_refused_by_name(cache: Path, changes, header_len, tail: bytes):
    header: dict = {"a": dict(A), "b": dict(B)}
    for site, field, value in changes:
        if field is None:
            header[site] = value
        elif isinstance(header.setdefault(site, {}), dict):
            header[site][field] = value
    put_shard(cache, 0, safetensors_file(header, DATA + tail, header_len=header_len))  # sizes the manifest accepts
    try:
        list(CacheSource(cache, verify="none").iter_rows(48, site="a"))
    except ArtifactError as exc:
        assert "shard-000000.safetensors: " in str(exc)
    assert [p.file for p in verify_cache(cache)] in ([], ["shard-000000.safetensors"])
