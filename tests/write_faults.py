"""For tests of the write paths: real refusals from the operating system (a full disk on a small
tmpfs, a file-size limit, a read-only file system or folder; nothing of saekit is mocked, the system
call itself fails), and what a refused write must leave (no temporary files, the same bytes)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """``folder`` with a tmpfs mounted on it (``options``: "size=64k", "ro", ...); skips the test where
    this process may not mount one (it needs Linux and root with CAP_SYS_ADMIN, as in a CI container)."""
    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs Linux and mount(8)")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root with CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def fill_up(disk: Path, leave: int) -> None:
    """Fill the file system of ``disk`` until about ``leave`` bytes are free."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    with open(disk / "filler", "wb") as handle:
        handle.write(b"\0" * max(free - leave, 0))


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Files of this process cannot grow past ``limit`` bytes: a write beyond fails with EFBIG (Python
    ignores SIGXFSZ), as a disk that fills up in the middle of a write fails with ENOSPC."""
    resource = pytest.importorskip("resource", reason="RLIMIT_FSIZE is POSIX")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def skip_unless_permissions_bind(folder: Path) -> None:
    """Skip where a read-only (chmod 555) ``folder`` does not stop this process: root, with its
    CAP_DAC_OVERRIDE, writes into it anyway."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except PermissionError:
        return
    finally:
        folder.chmod(0o755)
    (folder / "probe").unlink()
    pytest.skip("running as root (CAP_DAC_OVERRIDE), which writes into read-only folders anyway")


def hidden_leftovers(folder: Path) -> list[str]:
    """Temporary files or folders (``.<name>.*``) that a write left behind in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) below ``folder``."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}
