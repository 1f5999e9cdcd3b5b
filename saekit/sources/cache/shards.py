"""Shard files of an activation cache: integrity checks (file, size, checksum, header) and memory maps.

A shard is opened only through :func:`_open`: without following a symbolic link, without blocking on
a named pipe, and refused unless it is a regular file of the size the manifest records. A memory map
is made on that same open file after the check, so a shard truncated before it is mapped is an
:class:`~saekit.errors.ArtifactError`, never a crash. One truncated while it is mapped still kills the
reading process with SIGBUS (see :mod:`saekit.sources.cache`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from saekit.bounded import decode_utf8, parse_json
from saekit.errors import ArtifactError
from saekit.sources.cache.manifest import DTYPES, MANIFEST, CacheManifest, ShardRecord, read_manifest

# O_NOFOLLOW: a link swapped in after the manifest was read is still not followed. O_NONBLOCK: opening a
# named pipe returns at once (and the file-type check then refuses it) instead of waiting for a writer.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a named pipe"}


class CacheProblem(NamedTuple):
    """Something wrong with one file of a cache."""

    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


class _Problem(Exception):
    """What is wrong with one shard file; callers make it a CacheProblem or an ArtifactError."""


def verify_cache(folder: str | os.PathLike[str]) -> list[CacheProblem]:
    """Every problem found in the cache in ``folder`` (manifest, missing, truncated or corrupted shards,
    wrong tensors), checking all checksums; an empty list when the cache is intact."""
    try:
        manifest = read_manifest(folder)
    except ArtifactError as exc:
        return [CacheProblem(MANIFEST, str(exc))]
    problems = []
    for shard in manifest.shards:
        path = Path(folder) / shard.file
        if problem := file_problem(path, shard) or checksum_problem(path, shard) or _header_problem(path, shard, manifest):
            problems.append(problem)
    return problems


def file_problem(path: Path, shard: ShardRecord) -> CacheProblem | None:
    """What is wrong with the shard file itself (missing, not a regular file, wrong size): one ``lstat``."""
    try:
        problem = _stat_problem(os.lstat(path), shard.bytes)
    except OSError as exc:
        problem = _open_problem(exc)
    return None if problem is None else CacheProblem(shard.file, problem)


def checksum_problem(path: Path, shard: ShardRecord) -> CacheProblem | None:
    try:
        with _open(path, shard.bytes) as handle:
            digest = hashlib.file_digest(handle, "sha256")
    except _Problem as exc:
        return CacheProblem(shard.file, str(exc))
    except OSError as exc:
        return CacheProblem(shard.file, f"cannot be read ({exc.strerror or exc})")
    if digest.hexdigest() != shard.sha256:
        return CacheProblem(shard.file, f"checksum mismatch: sha256 {digest.hexdigest()}, the manifest says {shard.sha256}")
    return None


def _header_problem(path: Path, shard: ShardRecord, manifest: CacheManifest) -> CacheProblem | None:
    try:
        with _open(path, shard.bytes) as handle:
            _layout(handle, shard, manifest)
    except _Problem as exc:
        return CacheProblem(shard.file, str(exc))
    except (OSError, struct.error) as exc:
        return CacheProblem(shard.file, f"cannot be read ({exc})")
    return None


def map_shard(path: Path, shard: ShardRecord, manifest: CacheManifest, sites: Iterable[str]) -> dict[str, np.ndarray]:
    """Memory-mapped ``[rows, d_in]`` arrays of ``sites`` in one shard, after checking the file and its
    whole header against the manifest; ArtifactError naming ``path`` otherwise.

    The safetensors layout is read directly (8-byte header length, JSON header, data) because
    ``safe_open`` only slices contiguous ranges, and batches gather scattered rows.
    """
    try:
        with _open(path, shard.bytes) as handle:
            base, spans = _layout(handle, shard, manifest)
            raw = np.memmap(handle, dtype=np.uint8, mode="r")  # maps the file just checked; outlives the handle
    except _Problem as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot be mapped ({exc})") from None
    np_dtype = DTYPES[manifest.dtype][2]
    return {
        site: raw[base + spans[site][0] : base + spans[site][1]].view(np_dtype).reshape(shard.rows, manifest.d_in[site])
        for site in sites
    }


def is_unrecorded_shard(path: Path, manifest: CacheManifest) -> bool:
    """Whether ``path``, a file the manifest does not list, is laid out as a shard of this cache would be
    (its sites, widths and dtype, 1 to ``shard_tokens`` rows, nothing else in the file). That is the
    shard a writer killed between renaming it into place and recording it leaves behind."""
    try:
        with _open(path, None) as handle:
            size = os.fstat(handle.fileno()).st_size
            (header_len,) = struct.unpack("<Q", handle.read(8))
            rows, rest = divmod(size - 8 - header_len, manifest.row_bytes)
            if rest or not 1 <= rows <= manifest.shard_tokens:
                return False
            _layout(handle, ShardRecord(path.name, rows, size, ""), manifest)
    except (_Problem, OSError, struct.error):
        return False
    return True


@contextmanager
def _open(path: Path, size: int | None) -> Iterator[io.BufferedReader]:
    """``path`` open for reading, once it is known to be a regular file of ``size`` bytes (any size for
    None); _Problem otherwise."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        raise _Problem(_open_problem(exc)) from None
    with os.fdopen(fd, "rb") as handle:
        if problem := _stat_problem(os.fstat(fd), size):
            raise _Problem(problem)
        yield handle


def _stat_problem(info: os.stat_result, size: int | None) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        return f"not a regular file ({_KINDS.get(stat.S_IFMT(info.st_mode), 'a special file')})"
    if size is None or info.st_size == size:
        return None
    if info.st_size < size:
        return f"truncated: {info.st_size} bytes, the manifest says {size}"
    return f"has {info.st_size} bytes, the manifest says {size}"


def _open_problem(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "missing"
    if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link
        return "not a regular file (a symbolic link)"
    return f"cannot be read ({exc.strerror or exc})"


def _layout(handle: BinaryIO, shard: ShardRecord, manifest: CacheManifest) -> tuple[int, dict[str, tuple[int, int]]]:
    """Where the data starts and each site's ``(begin, end)`` in it, after checking the header says
    exactly what the manifest says: its sites, each a ``[rows, d_in]`` tensor of the storage dtype, their
    data tiling the rest of the file with no gap and no overlap. Reads only the header."""
    expected = shard.bytes - 8 - shard.rows * manifest.row_bytes
    handle.seek(0)
    (header_len,) = struct.unpack("<Q", handle.read(8))
    if header_len != expected:
        raise _Problem(
            f"header length {header_len} bytes, but the manifest's size and {shard.rows} rows leave {expected} for it"
        )
    try:
        header = parse_json(decode_utf8(handle.read(header_len), "header", ArtifactError), "header", ArtifactError, allow_nan=False)
    except ArtifactError as exc:
        raise _Problem(str(exc)) from None
    if not isinstance(header, dict):
        raise _Problem(f"header must be a JSON object of tensors, found {type(header).__name__}")
    if set(header) != set(manifest.sites):
        raise _Problem(f"holds tensors {sorted(header)[:20]}, the manifest says {list(manifest.sites)}")
    code, itemsize = DTYPES[manifest.dtype][1], np.dtype(DTYPES[manifest.dtype][2]).itemsize
    spans = {}
    for site in manifest.sites:
        entry, d = header[site], manifest.d_in[site]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"} or entry["dtype"] != code or entry["shape"] != [shard.rows, d]:
            raise _Problem(f"expected a {code} tensor [{shard.rows}, {d}] for site {site!r}, found {str(entry)[:200]}")
        offsets = entry["data_offsets"]
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
            raise _Problem(f"data_offsets of site {site!r} must be two integers, found {str(offsets)[:200]}")
        spans[site] = (offsets[0], offsets[1])
    end = 0
    for site, (begin, stop) in sorted(spans.items(), key=lambda item: item[1]):
        if begin != end or stop - begin != shard.rows * manifest.d_in[site] * itemsize:
            raise _Problem(f"data_offsets {[begin, stop]} of site {site!r} do not follow the previous tensor's end ({end}) with its size")
        end = stop
    return 8 + header_len, spans
