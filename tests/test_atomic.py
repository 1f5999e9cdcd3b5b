"""saekit.atomic: files and folders appear whole, with the permissions of a plain write."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from saekit import atomic


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
