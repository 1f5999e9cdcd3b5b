import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cache_data import CHUNK_SIZES, INFO, SITES, D, chunks, data, shard_bytes, write

import saekit
from saekit.errors import ArtifactError, DataError
from saekit.sources.cache import CacheSource, read_manifest
from saekit.types import ActivationSource


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
    (folder / ".shard-000003.safetensors.5e1f0c2a.tmp").write_bytes(b"left by a killed run")
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


def test_a_different_info_is_named_by_its_keys(cache: Path):
    """A resume with other settings names the settings that differ, not two whole descriptions."""
    nested = {**INFO, "text": {"corpus": "sotu", "split": "train"}}
    write(cache, info=nested, resume=False)
    changed = {**nested, "context": 16, "text": {"corpus": "sotu", "split": "test"}, "skip_positions": 2}
    with pytest.raises(ArtifactError) as refused:
        write(cache, info=changed)
    message = str(refused.value)
    assert "info.context: 8 there, 16 now" in message and "info.text.split: 'train' there, 'test' now" in message
    assert "info.skip_positions: missing there, 2 now" in message and "'corpus'" not in message
    assert "resume=False (saekit cache --overwrite)" in message


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




# ------------------------------------------------------------------ files saekit did not write


def test_shards_without_a_manifest_are_never_deleted(cache: Path):
    before = shard_bytes(cache)
    (cache / "manifest.json").unlink()
    for resume in (True, False):
        with pytest.raises(ArtifactError) as caught:
            write(cache, resume=resume)
        message = str(caught.value)
        assert str(cache) in message and "no manifest.json" in message and "shard-000000.safetensors" in message
        assert "another folder" in message and "delete" in message
        assert shard_bytes(cache) == before


def killed(folder: Path) -> None:
    """A write into ``folder`` killed after 3 of its 5 shards."""
    with pytest.raises(KeyboardInterrupt):
        write(folder, stream=chunks(data(), fail_after=4))
    assert read_manifest(folder).total_tokens == 30


@pytest.mark.parametrize("resume", [True, False])
def test_shard_files_the_manifest_does_not_list_are_neither_deleted_nor_overwritten(tmp_path: Path, resume: bool):
    killed(tmp_path)
    foreign = {"shard-000004.safetensors": b"mine", "shard-7.safetensors": b"mine too"}
    for name, content in foreign.items():
        (tmp_path / name).write_bytes(content)
    before = shard_bytes(tmp_path)
    with pytest.raises(ArtifactError) as caught:
        write(tmp_path, resume=resume)
    message = str(caught.value)
    assert str(tmp_path) in message and "shard-000004.safetensors" in message and "shard-7.safetensors" in message
    assert "does not list" in message and "another folder" in message
    assert shard_bytes(tmp_path) == before


def test_a_file_in_place_of_the_next_shard_that_is_not_one_of_ours_is_kept(tmp_path: Path):
    killed(tmp_path)
    (tmp_path / "shard-000003.safetensors").write_bytes(b"not a shard of this cache")
    with pytest.raises(ArtifactError, match=r"does not list \(shard-000003\.safetensors\)"):
        write(tmp_path)
    assert (tmp_path / "shard-000003.safetensors").read_bytes() == b"not a shard of this cache"


def test_the_shard_a_killed_run_wrote_but_did_not_record_is_written_again(tmp_path: Path):
    """A run killed between renaming a shard into place and recording it leaves that shard unlisted."""
    write(tmp_path / "whole")
    folder = tmp_path / "resumed"
    killed(folder)
    (folder / "shard-000003.safetensors").write_bytes((tmp_path / "whole" / "shard-000003.safetensors").read_bytes())
    write(folder)
    assert shard_bytes(folder) == shard_bytes(tmp_path / "whole")

    killed(tmp_path / "over")  # and --overwrite removes it with the listed shards
    (tmp_path / "over" / "shard-000003.safetensors").write_bytes((tmp_path / "whole" / "shard-000003.safetensors").read_bytes())
    manifest = write(tmp_path / "over", resume=False, shard_tokens=24)
    assert sorted(p.name for p in (tmp_path / "over").iterdir()) == ["manifest.json"] + [s.file for s in manifest.shards]


def test_overwrite_deletes_the_previous_cache_and_nothing_else(cache: Path):
    mine = {"notes.txt": b"keep", ".shard-notes.tmp": b"keep", "shard-000000.safetensors.bak": b"keep"}
    for name, content in mine.items():
        (cache / name).write_bytes(content)
    (cache / ".shard-000002.safetensors.0a1b2c3d.tmp").write_bytes(b"left by a killed run")
    manifest = write(cache, resume=False, shard_tokens=24)
    ours = re.compile(r"manifest\.json|shard-\d{6}\.safetensors")
    left = {p.name: p.read_bytes() for p in cache.iterdir() if not ours.fullmatch(p.name)}
    assert left == mine
    assert sorted(p.name for p in cache.glob("shard-*.safetensors")) == [s.file for s in manifest.shards]


def test_a_cache_whose_manifest_cannot_be_read_is_not_overwritten(cache: Path):
    before = shard_bytes(cache)
    (cache / "manifest.json").write_text("{")
    for resume in (True, False):
        with pytest.raises(ArtifactError, match=r"manifest\.json.*not valid JSON.*delete .* yourself"):
            write(cache, resume=resume)
    assert shard_bytes(cache) == before


def test_resume_refuses_a_cache_whose_shards_are_damaged(tmp_path: Path):
    killed(tmp_path)
    (tmp_path / "shard-000001.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"shard-000001\.safetensors: missing.*resume=False"):
        write(tmp_path)


def test_a_file_where_the_folder_should_be_is_named(tmp_path: Path):
    (tmp_path / "acts").write_text("")
    with pytest.raises(ArtifactError, match=r"acts.*not a folder"):
        write(tmp_path / "acts")


def test_a_write_killed_with_sigkill_resumes_to_the_same_bytes(tmp_path: Path):
    """A real ``kill -9`` of a process in the middle of ``write_cache``, then an in-process resume."""
    write(tmp_path / "whole", stream=chunks(data(), sizes=(1,) * 48))
    script = (
        "import sys, time\n"
        "from cache_data import chunks, data, write\n"
        "def slow():\n"
        "    for chunk in chunks(data(), sizes=(1,) * 48):\n"
        "        time.sleep(0.02)\n"
        "        yield chunk\n"
        "write(sys.argv[1], stream=slow())\n"
    )
    path = os.pathsep.join([str(Path(__file__).parent), str(Path(saekit.__file__).parents[1])])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    folder = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], env=env)
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        if (folder / "manifest.json").exists() and len(read_manifest(folder).shards) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_manifest(folder)
    assert not partial.complete and len(partial.shards) >= 2, "the write ended before it was killed"
    write(folder, stream=chunks(data(), sizes=(1,) * 48))
    assert shard_bytes(folder) == shard_bytes(tmp_path / "whole")
