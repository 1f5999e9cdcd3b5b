"""The one way saekit puts a file or a folder on disk: atomically and durably.

Rule: everything (but a line appended to a log, :func:`append_text`) is written under a hidden temporary name in the destination's own folder, flushed to
disk (``fsync`` of every file written and of every folder holding them), renamed into place with
``os.replace`` (``os.rename`` for :func:`create_folder`, which must not replace), and the parent folder
is flushed again so the rename itself survives a power cut. A reader therefore sees the previous
version or the new one, never a half-written file; a crash leaves at most a hidden ``.<name>.*``
sibling, which the next write of the same name supersedes.

Files get the permissions a plain ``open`` would give them (``0o666`` less the umask) and folders those
of a plain ``mkdir``-and-``chmod 755``, not ``mkstemp``'s owner-only ones: caches, models and exported
sites are often shared with other users or served by another one.

* :func:`write_file` / :func:`write_bytes` / :func:`write_text` / :func:`write_safetensors`: one file,
  replacing any previous one.
* :func:`replace_folder`: a whole folder, replacing any previous one.
* :func:`create_folder`: a whole folder only if none is there yet; when several processes race to
  create the same folder, the first rename wins and the others keep (and return) its folder.
* :func:`append_text`: text added at the end of a log, all of it or none of it.
* :func:`remove_temporaries`: what killed writes left, when the writer of a folder starts again.

A write that the system refuses (disk full, read-only or foreign folder, a folder where the file
should be) raises :class:`~saekit.errors.ArtifactError` naming the destination and the cause (its
``errno`` kept), after removing its temporary file or folder: the previous version stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from saekit.errors import ArtifactError


def write_file(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Create ``path`` through ``write(tmp)``, which must create the file ``tmp`` (any way it likes:
    a safetensors writer, a compiler), then rename it into place."""
    path = Path(path)
    with _named_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp_file(path)
        try:
            write(tmp)
            _fsync_file(tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    return path


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return write_file(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_temporaries(folder: str | os.PathLike[str], names: str) -> None:
    """Delete what killed writes left in ``folder``: the temporary files this module names after the
    files whose names match the regular expression ``names`` (e.g. ``r"shard-\\d+\\.safetensors"``),
    and nothing else."""
    pattern = re.compile(rf"\.(?:{names})\.[0-9a-f]{{{2 * _TEMP_HEX_BYTES}}}\.tmp")
    folder = Path(folder)
    if not folder.is_dir():
        return
    with _named_errors(folder):
        for path in folder.iterdir():
            if pattern.fullmatch(path.name) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)


def write_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
    """``tensors`` (name -> CPU tensor) as a safetensors file. Serialised in memory first and written
    as bytes, so that a disk that refuses the write raises the same named error as any other file
    (safetensors' own writer reports it as a SafetensorError, not an OSError)."""
    from safetensors.torch import save

    return write_bytes(path, save(dict(tensors), None if metadata is None else dict(metadata)))


def append_text(path: str | os.PathLike[str], text: str) -> Path:
    """Add ``text`` at the end of ``path`` (created if missing). A write the system refuses part-way
    (disk full) is cut off again, so the file never ends in a fragment of ``text``; only a process
    killed mid-write can leave one, which readers of an appended log must expect on its last line.
    Not flushed to disk: a caller that needs the lines durable at some point calls :func:`sync_file`."""
    path, data = Path(path), memoryview(text.encode("utf-8"))
    with _named_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data) :]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)
    return path


def sync_file(path: str | os.PathLike[str]) -> None:
    """Flush what was written to ``path`` (by :func:`append_text`) to disk."""
    with _named_errors(Path(path)):
        _fsync_file(Path(path))


def replace_folder(folder: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Create or replace ``folder`` with what ``fill(tmp)`` writes into an empty sibling folder.

    The old folder is moved aside (``.<name>.old``), the new one renamed in, and the old one deleted;
    if the swap fails the old folder is put back. A ``.<name>.old`` left by a swap that was killed is
    removed first: the complete new folder supersedes it.
    """
    folder = Path(os.path.abspath(folder))  # "." or "x/.." have no name to build siblings from
    with _named_errors(folder):
        tmp = _filled_temp_folder(folder, fill)
        try:
            _swap_in(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already when the swap succeeded
    return folder


def _swap_in(tmp: Path, folder: Path) -> None:
    """Put the complete folder ``tmp`` where ``folder`` is, through ``.<name>.old``; on failure the
    old folder is put back."""
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
        raise
    fsync_dir(folder.parent)
    if had_old:
        shutil.rmtree(old)


def create_folder(folder: str | os.PathLike[str], fill: Callable[[Path], None]) -> bool:
    """Create ``folder`` with what ``fill(tmp)`` writes into an empty sibling folder, unless it exists.

    For folders that any of several processes may create and none ever replaces (a converted model in
    a shared cache): the complete folder is renamed into place only if nothing is there yet. Returns
    True when this call put it in place, False when ``folder`` already existed or another process's
    rename won meanwhile; that folder is then kept as it is (whether it is complete is the caller's
    question) and ours is deleted. ``fill`` is not called when ``folder`` exists beforehand.
    """
    folder = Path(os.path.abspath(folder))
    if folder.exists():
        return False
    with _named_errors(folder):
        tmp = _filled_temp_folder(folder, fill)
        try:
            # os.rename, not os.replace: it refuses to put a folder over a non-empty one (and Windows
            # over any existing one), which is exactly "keep theirs".
            os.rename(tmp, folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if folder.exists():
                return False
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(folder.parent)
    return True


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened (Windows)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _named_errors(path: Path) -> Iterator[None]:
    """Turn an OSError of a write to ``path`` into an ArtifactError naming ``path`` and the cause."""
    try:
        yield
    except ArtifactError:
        raise
    except OSError as exc:
        raise _write_error(path, exc) from exc


def _write_error(path: Path, exc: OSError) -> ArtifactError:
    """``cannot write <path>: No space left on device (ENOSPC)``, with ``errno`` kept for callers; the
    file the system named, when it is neither ``path`` nor our temporary sibling, is named too."""
    code = exc.errno
    cause = f"{os.strerror(code)} ({errno.errorcode.get(code, code)})" if code is not None else str(exc)
    where = Path(os.fsdecode(exc.filename)) if exc.filename is not None else None
    if where is not None and where != path and not where.name.startswith(f".{path.name}."):
        cause += f" at {where}"
    error = ArtifactError(f"cannot write {path}: {cause}")
    error.errno = code
    return error


_TEMP_HEX_BYTES = 4
"""Random bytes (hex digits / 2) in a temporary file's name: ``.<name>.<8 hex digits>.tmp``."""


def _new_temp_file(path: Path) -> Path:
    """A new, empty, hidden sibling ``.<name>.<random>.tmp`` of ``path``, created with the mode a plain
    ``open`` gives (``mkstemp`` would make it owner-only, and the rename would keep that)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(_TEMP_HEX_BYTES)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def _filled_temp_folder(folder: Path, fill: Callable[[Path], None]) -> Path:
    """A hidden sibling ``.<name>.<random>.tmp`` of ``folder`` that ``fill`` has written and that is
    flushed to disk; deleted again if ``fill`` fails."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        fill(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync_file(path)
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(path)
