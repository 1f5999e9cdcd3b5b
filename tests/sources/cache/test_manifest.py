"""Manifests that are not what saekit writes are refused on load, naming the manifest and the entry."""

import shutil
from pathlib import Path

import pytest
from cache_data import make_unreadable, manifest_of, set_manifest, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saekit.errors import ArtifactError, SaekitError
from saekit.sources.cache import CacheSource, read_manifest, verify_cache, write_cache


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    write(tmp_path / "cache")
    return tmp_path / "cache"


def refused(folder: Path, *words: str) -> str:
    """The message of the ArtifactError that loading ``folder``'s manifest raises; it must name the
    manifest and contain ``words``. Every reader (source, verifier, resumed writer) refuses alike."""
    with pytest.raises(ArtifactError) as caught:
        read_manifest(folder)
    message = str(caught.value)
    assert str(folder / "manifest.json") in message
    for word in words:
        assert word in message, message
    with pytest.raises(ArtifactError, match="manifest.json"):
        CacheSource(folder)
    assert [p.file for p in verify_cache(folder)] == ["manifest.json"]
    with pytest.raises(ArtifactError, match="manifest.json"):
        write(folder)
    return message


@pytest.mark.parametrize(
    "name",
    ["../outside.safetensors", "{outside}", "sub/shard-000000.safetensors", "shard-000000.safetensors/", "shard-000001.safetensors", ""],
)
def test_shard_names_outside_the_folder_or_out_of_order_are_refused(cache: Path, name: str):
    # A real shard with the right size and checksum waits outside: only the name can give it away.
    outside = cache.parent / "outside.safetensors"
    shutil.copy(cache / "shard-000000.safetensors", outside)
    raw = manifest_of(cache)
    raw["shards"][0]["file"] = name.format(outside=outside)
    set_manifest(cache, raw)
    refused(cache, "shards[0].file", repr(name.format(outside=outside)), "shard-000000.safetensors")


def test_a_shard_that_is_a_link_is_refused_even_to_a_good_copy(cache: Path):
    outside = cache.parent / "outside.safetensors"
    shutil.move(cache / "shard-000001.safetensors", outside)
    (cache / "shard-000001.safetensors").symlink_to(outside)
    refused(cache, "shards[1]", "symbolic link")
    (cache / "shard-000001.safetensors").unlink()
    (cache / "shard-000001.safetensors").symlink_to("shard-000000.safetensors")  # inside, still a link
    refused(cache, "shards[1]", "symbolic link")


_DELETE = "<delete>"  # a value no field may hold


def _set(raw: dict, path: str, value) -> None:
    """Set (or delete, for ``_DELETE``) the entry at a dotted ``path`` such as ``shards.0.rows``."""
    *parents, last = [int(key) if key.isdigit() else key for key in path.split(".")]
    for key in parents:
        raw = raw[key]
    if value == _DELETE:
        del raw[last]
    else:
        raw[last] = value


BAD_FIELDS = [
    ("format_version", 2, ["format version 2", "reads version 1"]),
    ("format_version", True, ["format version True"]),
    ("format_version", "1", ["format version '1'"]),
    ("format", "other", ["not a saekit activation-cache manifest"]),
    ("extra", 1, ["unknown key", "'extra'"]),
    ("shards", _DELETE, ["missing key", "'shards'"]),
    ("complete", "yes", ["complete", "true or false"]),
    ("info", [1], ["info", "object"]),
    ("sites", ["a", "b", "a"], ["sites", "distinct"]),
    ("sites", ["a", 2], ["sites", "distinct, non-empty names"]),
    ("d_in.a", -3, ["d_in['a']", "positive integer", "-3"]),
    ("d_in.a", 3.0, ["d_in['a']", "positive integer"]),
    ("d_in.a", "3", ["d_in['a']", "positive integer"]),
    ("d_in", {"a": 3}, ["d_in", "every site"]),
    ("dtype", "int8", ["dtype", "'int8'", "float16"]),
    ("shard_tokens", 0, ["shard_tokens", "positive integer"]),
    ("chunks_done", -1, ["chunks_done", "non-negative integer"]),
    ("chunk_rows_done", 47, ["chunk_rows_done", "47", "complete"]),
    ("chunk_rows_done", 49, ["chunk_rows_done", "49", "total_tokens"]),
    ("total_tokens", 47, ["total_tokens 47", "48 rows"]),
    ("shards.0", "shard-000000.safetensors", ["shards[0]", "object"]),
    ("shards.0.extra", 1, ["shards[0]", "unknown key", "'extra'"]),
    ("shards.0.rows", 11, ["shards[0].rows", "11", "shard_tokens"]),
    ("shards.0.rows", True, ["shards[0].rows", "positive integer"]),
    ("shards.0.bytes", 100, ["shards[0].bytes", "100", "10 rows"]),
    ("shards.0.bytes", 10**12, ["shards[0].bytes", "10 rows"]),
    ("shards.0.sha256", "00", ["shards[0].sha256", "64 hexadecimal"]),
    ("shards.0.sha256", None, ["shards[0].sha256", "64 hexadecimal"]),
]


@pytest.mark.parametrize(("path", "value", "words"), BAD_FIELDS, ids=[f"{p}={v!r}" for p, v, _ in BAD_FIELDS])
def test_every_field_is_checked(cache: Path, path: str, value, words: list[str]):
    raw = manifest_of(cache)
    _set(raw, path, value)
    set_manifest(cache, raw)
    refused(cache, *words)


def test_a_complete_cache_without_shards_is_refused(cache: Path):
    raw = manifest_of(cache)
    raw.update(shards=[], total_tokens=0, chunk_rows_done=0)
    set_manifest(cache, raw)
    refused(cache, "complete", "no shards")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ["not valid JSON"]),
        ("[]", ["not a saekit activation-cache manifest"]),
        ("null", ["not a saekit activation-cache manifest"]),
        ("[" * 100_000, ["nests lists or objects deeper than"]),
        ('{"format": "saekit-activation-cache", "format": "x"}', ["key 'format' is given twice"]),
        ("\xff\xfe", ["is not UTF-8 text"]),
    ],
)
def test_unreadable_manifests_are_refused(cache: Path, text: str, words: list[str]):
    (cache / "manifest.json").write_text(text, encoding="latin-1")
    refused(cache, *words)


def test_a_nan_count_is_refused(cache: Path):
    text = (cache / "manifest.json").read_text().replace('"chunks_done": 6', '"chunks_done": NaN')
    (cache / "manifest.json").write_text(text)
    refused(cache, "not valid JSON", "NaN")


def test_a_folder_where_the_manifest_should_be_is_named(tmp_path: Path):
    (tmp_path / "manifest.json").mkdir()
    with pytest.raises(ArtifactError, match=r"manifest\.json is a folder, not a file"):
        read_manifest(tmp_path)
    with pytest.raises(ArtifactError, match=r"manifest\.json is a folder, not a file"):
        write_cache(tmp_path, [], sites=["a"], d_in={"a": 1}, info={})


def test_an_unreadable_manifest_is_named(cache: Path):
    make_unreadable(cache / "manifest.json")
    with pytest.raises(ArtifactError, match=r"manifest\.json cannot be read.*Permission denied"):
        read_manifest(cache)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
PATHS = [
    *("format", "format_version", "complete", "info", "sites", "d_in", "dtype", "shard_tokens", "total_tokens"),
    *("chunks_done", "chunk_rows_done", "shards", "info.model", "sites.0", "d_in.b", "shards.0", "shards.4.file"),
    *("shards.1.rows", "shards.2.bytes", "shards.3.sha256", "shards.0.extra", "extra"),
]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(PATHS), JSON | st.just(_DELETE)), min_size=1, max_size=3))
def test_any_manifest_is_read_or_refused_by_name(cache: Path, changes):
    raw = manifest_of(cache)
    for path, value in changes:
        try:
            _set(raw, path, value)
        except (KeyError, IndexError, TypeError):
            pass  # a path that the previous change took away
    set_manifest(cache, raw)
    try:
        manifest = read_manifest(cache)
    except ArtifactError as exc:
        assert str(cache / "manifest.json") in str(exc)
        return
    try:  # whatever was accepted reads, or fails by name
        list(CacheSource(cache, verify="full").iter_rows(64, site=manifest.sites[0]))
    except SaekitError:
        pass
