"""The one way saekit puts a file or a folder on disk: atomically and durably.

Rule: everything is written under a hidden temporary name in the destination's own folder, flushed to
disk (``fsync`` of every file written and of every folder holding them), renamed into place with
``os.replace``, and the parent folder is flushed again so the rename itself survives a power cut. A
reader therefore sees the previous version or the new one, never a half-written file; a crash leaves
at most a hidden ``.<name>.*`` sibling, which the next write of the same name supersedes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_file(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Create ``path`` through ``write(tmp)``, which must create the file ``tmp`` (any way it likes:
    a safetensors writer, a compiler), then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return write_file(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def replace_folder(folder: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Create or replace ``folder`` with what ``fill(tmp)`` writes into an empty sibling folder.

    The old folder is moved aside (``.<name>.old``), the new one renamed in, and the old one deleted;
    if the swap fails the old folder is put back. A ``.<name>.old`` left by a swap that was killed is
    removed first: the complete new folder supersedes it.
    """
    folder = Path(os.path.abspath(folder))  # "." or "x/.." have no name to build siblings from
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        fill(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = folder.with_name(f".{folder.name}.old")
    if old.exists():
        shutil.rmtree(old)
    had_old = folder.exists()
    if had_old:
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        if had_old:
            os.replace(old, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(folder.parent)
    if had_old:
        shutil.rmtree(old)
    return folder


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened (Windows)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync_file(path)
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(path)
