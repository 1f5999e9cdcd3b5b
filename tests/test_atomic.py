"""saekit.atomic: files and folders appear whole, with the permissions of a plain write."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest
import torch
from write_faults import file_size_limit, fill_up, hidden_leftovers, skip_unless_permissions_bind, tmpfs

from saekit import atomic
from saekit.errors import ArtifactError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_write_file_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "file.bin"
    atomic.write_bytes(target, b"first")
    atomic.write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "file.txt"
    atomic.write_text(target, "kept")

    def crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_file(target, crash)
    assert target.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_files_and_folders_get_the_permissions_of_a_plain_write(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    file = atomic.write_text(tmp_path / "atomic.txt", "x")
    assert _mode(file) == _mode(plain) == 0o666 & ~_umask()
    folder = atomic.replace_folder(tmp_path / "replaced", lambda tmp: (tmp / "f").write_text("x"))
    created = tmp_path / "created"
    assert atomic.create_folder(created, lambda tmp: (tmp / "f").write_text("x"))
    assert _mode(folder) == _mode(created) == 0o755


def test_replace_folder_swaps_in_the_new_contents(tmp_path):
    target = tmp_path / "folder"
    atomic.replace_folder(target, lambda tmp: (tmp / "old.txt").write_text("1"))
    atomic.replace_folder(target, lambda tmp: (tmp / "new.txt").write_text("2"))
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]


def test_create_folder_fills_a_missing_folder(tmp_path):
    target = tmp_path / "cache" / "model"
    assert atomic.create_folder(target, lambda tmp: (tmp / "config.json").write_text("{}")) is True
    assert (target / "config.json").read_text() == "{}"
    assert [p.name for p in target.parent.iterdir()] == ["model"]


def test_create_folder_keeps_an_existing_folder_without_filling(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "theirs.txt").write_text("theirs")
    calls = []
    assert atomic.create_folder(target, calls.append) is False
    assert calls == []
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]


def test_create_folder_keeps_the_folder_of_a_writer_that_finished_first(tmp_path):
    target = tmp_path / "model"

    def slow_fill(tmp: Path) -> None:
        (tmp / "ours.txt").write_text("ours")
        # Another process completes the same folder while we are still writing ours.
        target.mkdir()
        (target / "theirs.txt").write_text("theirs")

    assert atomic.create_folder(target, slow_fill) is False
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # our temporary folder is gone


def test_create_folder_cleans_up_when_fill_fails(tmp_path):
    def crash(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic.create_folder(tmp_path / "model", crash)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_create_folder_calls_leave_one_complete_folder(tmp_path):
    target = tmp_path / "model"
    barrier = threading.Barrier(4)
    results: list[bool] = []

    def fill(tmp: Path) -> None:
        (tmp / "who").write_text(threading.current_thread().name)
        barrier.wait()  # all four have a complete temporary folder before any renames it

    threads = [threading.Thread(target=lambda: results.append(atomic.create_folder(target, fill))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    assert [p.name for p in target.iterdir()] == ["who"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def _writes(target: Path, size: int) -> dict:
    """Every way atomic.py writes ``size`` bytes to ``target`` (a file, or a folder holding one)."""

    def fill(tmp: Path) -> None:
        (tmp / "data.bin").write_bytes(b"x" * size)

    return {
        "write_bytes": lambda: atomic.write_bytes(target, b"x" * size),
        "write_text": lambda: atomic.write_text(target, "x" * size),
        "replace_folder": lambda: atomic.replace_folder(target, fill),
        "append_text": lambda: atomic.append_text(target, "x" * size),
        "write_safetensors": lambda: atomic.write_safetensors(target, {"x": torch.zeros(size // 4)}),
    }


def _previous(target: Path, kind: str) -> None:
    if kind == "replace_folder":
        atomic.replace_folder(target, lambda tmp: (tmp / "data.bin").write_bytes(b"kept"))
    else:
        atomic.write_bytes(target, b"kept")


def _unchanged(target: Path, kind: str) -> bool:
    return (target / "data.bin" if kind == "replace_folder" else target).read_bytes() == b"kept"


WRITES = ["write_bytes", "write_text", "write_safetensors", "replace_folder", "append_text"]


@pytest.mark.parametrize("kind", WRITES)
def test_a_full_disk_is_named_and_keeps_the_previous_version(tmp_path, kind):
    with tmpfs(tmp_path / "disk", "size=256k") as disk:
        target = disk / "target"
        _previous(target, kind)
        fill_up(disk, leave=64 * 1024)
        with pytest.raises(ArtifactError, match=rf"cannot write {target}: No space left on device \(ENOSPC\)") as caught:
            _writes(target, 1 << 20)[kind]()
        assert caught.value.errno == errno.ENOSPC
        assert _unchanged(target, kind)
        assert hidden_leftovers(disk) == []


@pytest.mark.parametrize("kind", WRITES)
def test_a_file_that_outgrows_the_size_limit_is_named_and_keeps_the_previous_version(tmp_path, kind):
    """The portable stand-in for a disk that fills up mid-write: the write fails part-way (EFBIG)."""
    target = tmp_path / "target"
    _previous(target, kind)
    with file_size_limit(64 * 1024), pytest.raises(ArtifactError, match=rf"cannot write {target}: File too large \(EFBIG\)"):
        _writes(target, 1 << 20)[kind]()
    assert _unchanged(target, kind)
    assert hidden_leftovers(tmp_path) == []


def test_an_error_of_the_writer_at_the_os_boundary_is_named(tmp_path):
    """ENOSPC where no tmpfs can be mounted: the writer's own output goes to /dev/full."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    target = atomic.write_text(tmp_path / "file.txt", "kept")

    def write(tmp: Path) -> None:
        tmp.write_text("half")
        with open("/dev/full", "w") as full:
            full.write("x")

    with pytest.raises(ArtifactError, match=rf"cannot write {target}: No space left on device \(ENOSPC\)"):
        atomic.write_file(target, write)
    assert target.read_text() == "kept"
    assert hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", WRITES)
def test_a_read_only_file_system_is_named(tmp_path, kind):
    with tmpfs(tmp_path / "disk", "ro,size=64k") as disk:
        with pytest.raises(ArtifactError, match=rf"cannot write {disk / 'target'}: Read-only file system \(EROFS\)"):
            _writes(disk / "target", 10)[kind]()
        assert list(disk.iterdir()) == []


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
@pytest.mark.parametrize("kind", WRITES)
def test_a_read_only_folder_is_named_and_keeps_the_previous_version(tmp_path, kind):
    skip_unless_permissions_bind(tmp_path / "out")
    target = tmp_path / "out" / "target"
    _previous(target, kind)
    (tmp_path / "out").chmod(0o555)
    if kind == "append_text":
        target.chmod(0o444)
    try:
        with pytest.raises(ArtifactError, match=rf"cannot write {target}: Permission denied \(EACCES\)"):
            _writes(target, 10)[kind]()
    finally:
        (tmp_path / "out").chmod(0o755)
    assert _unchanged(target, kind)
    assert hidden_leftovers(tmp_path / "out") == []


def test_a_folder_where_the_file_goes_is_named_and_kept(tmp_path):
    (tmp_path / "file.bin" / "inside").mkdir(parents=True)
    with pytest.raises(ArtifactError, match=rf"cannot write {tmp_path / 'file.bin'}: Is a directory \(EISDIR\)"):
        atomic.write_bytes(tmp_path / "file.bin", b"x")
    assert (tmp_path / "file.bin" / "inside").is_dir()
    assert hidden_leftovers(tmp_path) == []


def test_an_append_is_all_or_nothing(tmp_path):
    """A refused append leaves no fragment: the log does not gain a half line from a full disk."""
    log = atomic.append_text(tmp_path / "log.jsonl", "one\n")
    atomic.append_text(log, "two\n")
    with file_size_limit(log.stat().st_size + 5), pytest.raises(ArtifactError, match="File too large"):
        atomic.append_text(log, "three-is-long\n")
    assert log.read_text() == "one\ntwo\n"


def test_remove_temporaries_deletes_what_killed_writes_left_and_nothing_else(tmp_path):
    kept = ["ckpt.safetensors", ".ckpt.safetensors.tmp", ".ckpt.safetensors.0123abcd.tmp.bak", ".other.0123abcd.tmp", "x.0123abcd.tmp"]
    for name in kept:
        (tmp_path / name).write_text("mine")
    (tmp_path / ".ckpt.safetensors.0123abcd.tmp").write_text("left by a kill")
    (tmp_path / ".log.jsonl.ffffffff.tmp").write_text("left by a kill")
    (tmp_path / ".ckpt.safetensors.99999999.tmp").mkdir()  # a folder: not a file this module wrote
    atomic.remove_temporaries(tmp_path, r"ckpt\.safetensors|log\.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, ".ckpt.safetensors.99999999.tmp"])
    atomic.remove_temporaries(tmp_path / "missing", "x")  # nothing to do
