"""Activations of many sites cached on disk in shards: written once, read shuffled with exact resume.

Layout of a cache folder::

    manifest.json               what the cache holds; rewritten (atomically) after every shard
    shard-000000.safetensors    rows [0, shard_tokens) of every site: one tensor [rows, d_in] per site
    shard-000001.safetensors    rows [shard_tokens, 2·shard_tokens), and so on; the last may be shorter

``manifest.json``::

    {"format": "saekit-activation-cache", "format_version": 1, "complete": true,
     "info": {"model": "smollm2-135m", "corpus": "...", "context": 256, "seed": 0},
     "sites": ["layers.3.resid_post", "layers.6.resid_post"],
     "d_in": {"layers.3.resid_post": 576, "layers.6.resid_post": 576},
     "dtype": "float16", "shard_tokens": 65536, "total_tokens": 100000,
     "chunks_done": 49, "chunk_rows_done": 100000,
     "shards": [{"file": "shard-000000.safetensors", "rows": 65536, "bytes": 150995160, "sha256": "..."},
                {"file": "shard-000001.safetensors", "rows": 34464, "bytes": 79405272, "sha256": "..."}]}

``sha256`` is the hash of the whole shard file (header included); ``bytes`` its size.

Writing and resuming. :func:`write_cache` checks each incoming chunk (shapes, widths, finiteness, and
that the values survive the cast to the storage dtype), buffers the rows and writes a shard every
``shard_tokens`` rows. Every file goes to a hidden temporary name, is fsynced, then renamed into place,
and the manifest is rewritten after each shard, so a killed run leaves a valid, incomplete cache. Rows
still in the buffer are lost; they are produced again on resume. Every consumed input row is in a
shard, so ``total_tokens`` is also the number of input rows to skip on resume. With ``resume=True`` an
existing manifest must describe the same cache (sites, widths, dtype, shard size, ``info``), otherwise
an :class:`~saekit.errors.ArtifactError` says what differs; the writer then skips ``total_tokens`` rows
of the incoming stream and continues. **The caller must produce the same stream as the interrupted
run** (chunk ``k`` always the same rows). Skipping by iteration still makes the caller compute the
skipped chunks; to avoid that, pass ``chunks`` as a function ``first_chunk -> iterable`` that starts
at chunk ``first_chunk``: it is called with ``chunks_done`` (the number of input chunks whose rows are
all in completed shards) and only the rest of the partly written chunk is skipped. Stray temporary
files and shards that the manifest does not list (a run killed between a shard's rename and the
manifest update) are deleted when writing starts. ``resume=False`` deletes a previous cache in the
folder (its manifest and shards, nothing else) and starts over. A folder is written by one process at
a time.

Reading. :class:`CacheSource` serves the cache as an :class:`~saekit.types.ActivationSource`. Shards are
memory-mapped and only the rows a batch needs are read, so caches larger than memory work. Batching
follows the rule of :mod:`saekit.sources.tensor` (batch ``i`` is stream positions ``[i·B, (i+1)·B)``,
epoch ``e`` is positions ``[e·N, (e+1)·N)``; batches may straddle epochs) with a two-level shuffle:

* each epoch permutes the shard order (seeded by ``(seed, epoch)``) and cuts it into windows of
  ``window_shards`` consecutive shards;
* each window's rows are permuted together (seeded by ``(seed, epoch, window)``), and the epoch is the
  windows' permutations one after the other.

Every row appears exactly once per epoch and batch ``i`` depends only on ``(seed, i)``, so ``start``
resumes exactly. Trade-off: a window is read from disk about once per epoch (the page cache holds its
shards while its batches are drawn) instead of one random page per row, but a batch only mixes rows of
``window_shards`` shards, each ``shard_tokens`` consecutive tokens of the writer's stream (about a
million tokens, thousands of documents, with the defaults; a different set of shards every epoch).
When the cache has at most ``window_shards`` shards the shuffle is a uniform permutation of all rows;
pass a larger ``window_shards`` for a better mix when the page cache can hold that many shards. The
order depends on ``window_shards``: a resumed run must use the same value (``describe()`` records it).

Integrity. On open, every shard listed in the manifest must exist with its recorded size (a cheap
``stat``, done even with ``verify="none"`` because reading a truncated memory-mapped file would crash
the process instead of raising). ``verify="full"`` also checks every checksum on open; ``"lazy"`` checks
a shard's checksum the first time a batch reads from it; ``"none"`` never does. Problems raise
:class:`~saekit.errors.ArtifactError` naming the shard file and what is wrong; :func:`verify_cache` lists
them all without raising. A cache whose writer has not finished (``complete: false``) can be read: a
warning says how many tokens it holds, and only the completed shards are served.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import json
import os
import re
import struct
import tempfile
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeAlias

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from tqdm.auto import tqdm

from saekit.errors import ArtifactError, ConfigError, DataError
from saekit.sources.tensor import _check_positive, seeded_generator
from saekit.types import ActBatch

FORMAT = "saekit-activation-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_TOKENS = 1 << 16
DEFAULT_WINDOW_SHARDS = 16

Chunk: TypeAlias = Mapping[str, Tensor]
ChunkStream: TypeAlias = Iterable[Chunk] | Callable[[int], Iterable[Chunk]]
Verify: TypeAlias = Literal["lazy", "full", "none"]

# Storage dtype name -> (torch dtype, safetensors dtype code, numpy dtype of the stored bytes). numpy has
# no bfloat16, so those rows are read as int16 and reinterpreted by torch.
_DTYPES: dict[str, tuple[torch.dtype, str, type[np.generic]]] = {
    "float16": (torch.float16, "F16", np.float16),
    "bfloat16": (torch.bfloat16, "BF16", np.int16),
    "float32": (torch.float32, "F32", np.float32),
}
_SHARD_FILE = re.compile(r"shard-(\d+)\.safetensors")
_HASH_BLOCK = 1 << 22


@dataclass(frozen=True)
class ShardRecord:
    """One shard file: its name, rows per site, size in bytes and sha256 of its bytes."""

    file: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class CacheManifest:
    """Contents of ``manifest.json``.

    chunks_done / chunk_rows_done: the first ``chunks_done`` input chunks, ``chunk_rows_done`` rows in
    all, are wholly in completed shards; the next ``total_tokens - chunk_rows_done`` rows (the start of
    chunk ``chunks_done``) are too. This is where a resumed write picks up.
    """

    info: dict[str, Any]
    sites: tuple[str, ...]
    d_in: dict[str, int]
    dtype: str
    shard_tokens: int
    shards: tuple[ShardRecord, ...] = ()
    chunks_done: int = 0
    chunk_rows_done: int = 0
    complete: bool = False
    format_version: int = FORMAT_VERSION

    @property
    def total_tokens(self) -> int:
        return sum(shard.rows for shard in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "complete": self.complete,
            "info": self.info,
            "sites": list(self.sites),
            "d_in": self.d_in,
            "dtype": self.dtype,
            "shard_tokens": self.shard_tokens,
            "total_tokens": self.total_tokens,
            "chunks_done": self.chunks_done,
            "chunk_rows_done": self.chunk_rows_done,
            "shards": [dataclasses.asdict(shard) for shard in self.shards],
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> CacheManifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArtifactError(f"{where}: not a saekit activation-cache manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{where}: cache format version {data.get('format_version')!r}; this saekit reads version {FORMAT_VERSION}"
            )
        try:
            manifest = cls(
                info=dict(data["info"]),
                sites=tuple(data["sites"]),
                d_in={site: int(d) for site, d in data["d_in"].items()},
                dtype=str(data["dtype"]),
                shard_tokens=int(data["shard_tokens"]),
                shards=tuple(
                    ShardRecord(str(s["file"]), int(s["rows"]), int(s["bytes"]), str(s["sha256"])) for s in data["shards"]
                ),
                chunks_done=int(data["chunks_done"]),
                chunk_rows_done=int(data["chunk_rows_done"]),
                complete=bool(data["complete"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None
        if manifest.dtype not in _DTYPES or set(manifest.d_in) != set(manifest.sites):
            raise ArtifactError(f"{where}: malformed manifest (dtype {manifest.dtype!r}, sites {list(manifest.sites)})")
        if data.get("total_tokens") != manifest.total_tokens:
            raise ArtifactError(
                f"{where}: total_tokens {data.get('total_tokens')!r} disagrees with the shards' {manifest.total_tokens} rows"
            )
        return manifest


class CacheProblem(NamedTuple):
    """Something wrong with one file of a cache."""

    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


def read_manifest(folder: str | os.PathLike[str]) -> CacheManifest:
    """The manifest of the cache in ``folder``; ArtifactError when it is missing or unreadable."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: {folder} is not an activation cache (or its writer never started)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} cannot be read: {exc}") from None
    return CacheManifest.from_json(data, str(path))


# ---------------------------------------------------------------------------------------------------
# Writing


def write_cache(
    folder: str | os.PathLike[str],
    chunks: ChunkStream,
    *,
    sites: Iterable[str],
    d_in: Mapping[str, int],
    info: Mapping[str, Any],
    dtype: Literal["float16", "bfloat16", "float32"] = "float16",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    resume: bool = True,
    progress: bool = False,
) -> CacheManifest:
    """Write ``chunks`` (each ``{site: Tensor[n, d_in[site]]}``, the same ``n`` for every site) into
    ``folder`` as shards of ``shard_tokens`` rows, and return the final manifest.

    ``chunks`` is an iterable, or a function ``first_chunk -> iterable`` that yields the stream from
    chunk ``first_chunk`` on (lets a resumed write skip producing finished chunks). ``info`` (model,
    corpus, context size, seed, ...) must be JSON-serialisable; it is stored and must match on resume.
    ``resume=True`` continues an interrupted write into ``folder`` (or returns a complete one's manifest
    without reading ``chunks``); ``resume=False`` deletes a previous cache there and starts over.
    """
    folder = Path(folder)
    wanted = _new_manifest(sites, d_in, info, dtype, shard_tokens)
    folder.mkdir(parents=True, exist_ok=True)
    existing = None
    if resume and (folder / MANIFEST).exists():
        try:
            existing = read_manifest(folder)
        except ArtifactError as exc:
            raise ArtifactError(f"{exc}; pass resume=False to overwrite the cache in {folder}") from None
    if existing is not None:
        _check_same_cache(existing, wanted, folder)
        if existing.complete:
            return existing
        manifest = existing
    else:
        # The manifest goes first, so that a crash below never leaves it pointing at deleted shards.
        (folder / MANIFEST).unlink(missing_ok=True)
        manifest = wanted
    _remove_strays(folder, keep=len(manifest.shards))
    _write_atomic(folder / MANIFEST, _manifest_bytes(manifest))

    done = manifest.total_tokens
    if callable(chunks):
        index, consumed, stream = manifest.chunks_done, manifest.chunk_rows_done, chunks(manifest.chunks_done)
    else:
        index, consumed, stream = 0, 0, chunks
    writer = _ShardWriter(folder, manifest)
    with tqdm(initial=done, unit="tok", unit_scale=True, desc=f"cache {folder.name}", disable=not progress) as bar:
        for chunk in stream:
            rows = _checked_chunk(chunk, manifest, index)
            n = next(iter(rows.values())).shape[0]
            if consumed + n > done:
                skip = max(0, done - consumed)  # the start of this chunk may already be in a shard
                writer.add({site: x[skip:] for site, x in rows.items()}, _ChunkEnd(index, consumed + n))
                bar.update(n - skip)
            consumed, index = consumed + n, index + 1
    if consumed < done:
        raise DataError(
            f"{folder}: the chunk stream ended after {consumed} rows but the cache already holds {done}; "
            "a resumed write needs the same stream as the interrupted one"
        )
    return writer.finish(_ChunkEnd(index, consumed))


class _ChunkEnd(NamedTuple):
    index: int  # input chunk number
    end_row: int  # input rows up to and including this chunk


class _ShardWriter:
    """Buffers checked rows and commits full shards, each followed by a manifest update."""

    def __init__(self, folder: Path, manifest: CacheManifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self.buffer: dict[str, list[Tensor]] = {site: [] for site in manifest.sites}
        self.buffered = 0
        self.pending: deque[_ChunkEnd] = deque()  # chunks some of whose rows are only in the buffer

    def add(self, rows: Mapping[str, Tensor], end: _ChunkEnd) -> None:
        for site, x in rows.items():
            self.buffer[site].append(x)
        self.buffered += next(iter(rows.values())).shape[0]
        self.pending.append(end)
        while self.buffered >= self.manifest.shard_tokens:
            self._commit(self.manifest.shard_tokens)

    def finish(self, last: _ChunkEnd) -> CacheManifest:
        if self.buffered:
            self._commit(self.buffered)
        if self.manifest.total_tokens == 0:
            raise DataError(f"{self.folder}: the chunk stream yielded no rows")
        self.manifest = dataclasses.replace(
            self.manifest, chunks_done=last.index, chunk_rows_done=last.end_row, complete=True
        )
        _write_atomic(self.folder / MANIFEST, _manifest_bytes(self.manifest))
        return self.manifest

    def _commit(self, n: int) -> None:
        tensors = {}
        for site, pieces in self.buffer.items():
            block = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
            tensors[site], rest = block[:n], block[n:]
            self.buffer[site] = [rest] if len(rest) else []
        self.buffered -= n
        name = f"shard-{len(self.manifest.shards):06d}.safetensors"
        data = safetensors_bytes(tensors)
        _write_atomic(self.folder / name, data)
        written = self.manifest.total_tokens + n
        chunks_done, chunk_rows_done = self.manifest.chunks_done, self.manifest.chunk_rows_done
        while self.pending and self.pending[0].end_row <= written:
            done = self.pending.popleft()
            chunks_done, chunk_rows_done = done.index + 1, done.end_row
        self.manifest = dataclasses.replace(
            self.manifest,
            shards=(*self.manifest.shards, ShardRecord(name, n, len(data), hashlib.sha256(data).hexdigest())),
            chunks_done=chunks_done,
            chunk_rows_done=chunk_rows_done,
        )
        _write_atomic(self.folder / MANIFEST, _manifest_bytes(self.manifest))


def _new_manifest(
    sites: Iterable[str], d_in: Mapping[str, int], info: Mapping[str, Any], dtype: str, shard_tokens: int
) -> CacheManifest:
    sites = tuple(sites)
    if not sites or len(set(sites)) != len(sites) or not all(isinstance(s, str) and s for s in sites):
        raise ConfigError(f"sites must be distinct, non-empty names, got {list(sites)}")
    if set(d_in) != set(sites):
        raise ConfigError(f"d_in must give a width for exactly the sites {list(sites)}, got keys {list(d_in)}")
    for site, d in d_in.items():
        if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
            raise ConfigError(f"d_in[{site!r}] must be a positive integer, got {d!r}")
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    _check_positive(shard_tokens, "shard_tokens")
    try:
        # A JSON round trip, so that comparing with a manifest read back from disk is like for like.
        info = json.loads(json.dumps(dict(info), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"info must be JSON-serialisable: {exc}") from None
    return CacheManifest(info=info, sites=sites, d_in={s: d_in[s] for s in sites}, dtype=dtype, shard_tokens=shard_tokens)


def _check_same_cache(existing: CacheManifest, wanted: CacheManifest, folder: Path) -> None:
    for field in ("sites", "d_in", "dtype", "shard_tokens", "info"):
        there, now = getattr(existing, field), getattr(wanted, field)
        if there != now:
            raise ArtifactError(
                f"{folder} already holds a cache with a different {field} ({there!r} there, {now!r} now); "
                "pass resume=False to overwrite it, or write to another folder"
            )


def _checked_chunk(chunk: Chunk, manifest: CacheManifest, index: int) -> dict[str, Tensor]:
    """The chunk's rows per site, on the CPU in the storage dtype, after checking everything about them."""
    if not isinstance(chunk, Mapping):
        raise DataError(f"chunk {index}: expected a mapping {{site: tensor}}, got {type(chunk).__name__}")
    if set(chunk) != set(manifest.sites):
        raise DataError(f"chunk {index}: sites {sorted(chunk)}, expected {sorted(manifest.sites)}")
    storage = _DTYPES[manifest.dtype][0]
    rows: dict[str, Tensor] = {}
    for site in manifest.sites:
        x, where = chunk[site], f"chunk {index}, site {site!r}"
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise DataError(f"{where}: expected a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim != 2 or x.shape[1] != manifest.d_in[site]:
            raise DataError(f"{where}: expected shape [tokens, {manifest.d_in[site]}], got {tuple(x.shape)}")
        if rows and x.shape[0] != next(iter(rows.values())).shape[0]:
            raise DataError(f"chunk {index}: every site must have the same number of rows (tokens); {where} differs")
        # Always a copy: producers often reuse one buffer for every chunk, and rows wait in ours.
        stored = x.detach().to("cpu", storage, copy=True)
        # One scan of the stored values catches NaN/inf in the input and overflow of the cast alike.
        if not bool(torch.isfinite(stored).all()):
            bad = ~torch.isfinite(x)
            if bool(bad.any()):
                first = int(bad.any(dim=1).nonzero()[0])
                raise DataError(
                    f"{where}: {int(bad.sum())} NaN or inf value(s), first in row {first}; activations must be finite"
                )
            raise DataError(
                f"{where}: values up to {float(x.abs().max()):.4g} overflow {manifest.dtype}; "
                "store the cache as bfloat16 or float32"
            )
        rows[site] = stored
    return rows


def _manifest_bytes(manifest: CacheManifest) -> bytes:
    return (json.dumps(manifest.to_json(), indent=1) + "\n").encode()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if os.name != "nt":  # make the rename itself durable; directories cannot be fsynced on Windows
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _remove_strays(folder: Path, *, keep: int) -> None:
    """Delete temporary files of a killed writer and shards numbered ``keep`` or more (not in the manifest)."""
    for path in folder.iterdir():
        name = path.name
        ours_tmp = name.endswith(".tmp") and (name.startswith(".shard-") or name.startswith(f".{MANIFEST}."))
        match = _SHARD_FILE.fullmatch(name)
        if ours_tmp or (match is not None and int(match.group(1)) >= keep):
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------
# Integrity


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
        problem = _size_problem(path, shard) or _checksum_problem(path, shard)
        if problem is None:
            try:
                _map_shard(path, shard, manifest, manifest.sites)
            except ArtifactError as exc:
                problem = CacheProblem(shard.file, str(exc).removeprefix(f"{shard.file}: "))
        if problem is not None:
            problems.append(problem)
    return problems


def _size_problem(path: Path, shard: ShardRecord) -> CacheProblem | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return CacheProblem(shard.file, "missing")
    except OSError as exc:
        return CacheProblem(shard.file, f"cannot be read: {exc}")
    if size < shard.bytes:
        return CacheProblem(shard.file, f"truncated: {size} bytes, the manifest says {shard.bytes}")
    if size > shard.bytes:
        return CacheProblem(shard.file, f"has {size} bytes, the manifest says {shard.bytes}")
    return None


def _checksum_problem(path: Path, shard: ShardRecord) -> CacheProblem | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(_HASH_BLOCK):
                digest.update(block)
    except OSError as exc:
        return CacheProblem(shard.file, f"cannot be read: {exc}")
    if digest.hexdigest() != shard.sha256:
        return CacheProblem(shard.file, f"checksum mismatch: sha256 {digest.hexdigest()}, the manifest says {shard.sha256}")
    return None


def _map_shard(path: Path, shard: ShardRecord, manifest: CacheManifest, sites: Iterable[str]) -> dict[str, np.ndarray]:
    """Memory-mapped ``[rows, d_in]`` arrays of ``sites`` in one shard, after checking its header.

    The safetensors layout is read directly (8-byte header length, JSON header, data) because
    ``safe_open`` only slices contiguous ranges, and batches gather scattered rows.
    """
    where = shard.file
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        (header_len,) = struct.unpack("<Q", bytes(raw[:8]))
        header = json.loads(bytes(raw[8 : 8 + header_len]))
    except (OSError, ValueError, struct.error) as exc:
        raise ArtifactError(f"{where}: not a readable safetensors file ({exc})") from None
    _, code, np_dtype = _DTYPES[manifest.dtype]
    base = 8 + header_len
    arrays = {}
    for site in sites:
        entry, d = header.get(site), manifest.d_in[site]
        if not isinstance(entry, dict) or entry.get("dtype") != code or entry.get("shape") != [shard.rows, d]:
            raise ArtifactError(f"{where}: expected a {code} tensor [{shard.rows}, {d}] for site {site!r}, found {entry!r}")
        begin, end = entry.get("data_offsets", (0, -1))
        if end - begin != shard.rows * d * np.dtype(np_dtype).itemsize or base + end > raw.size:
            raise ArtifactError(f"{where}: data of site {site!r} lies outside the file")
        arrays[site] = raw[base + begin : base + end].view(np_dtype).reshape(shard.rows, d)
    return arrays


# ---------------------------------------------------------------------------------------------------
# Reading


class _EpochPlan(NamedTuple):
    windows: list[list[int]]  # shard numbers of each window, in the epoch's order
    starts: list[int]  # epoch offset of each window's first row, then the epoch length


class CacheSource:
    """An :class:`~saekit.types.ActivationSource` over a cache folder written by :func:`write_cache`.

    ``sites`` selects some of the cached sites (all by default). Batches are float32. See the module
    docstring for the shuffle and for what ``verify`` checks.
    """

    reads_from_disk = True
    """Read by the training loop: batches are worth reading ahead in a thread (saekit.sources.prefetch)."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        sites: Iterable[str] | None = None,
        verify: Verify = "lazy",
        window_shards: int = DEFAULT_WINDOW_SHARDS,
    ) -> None:
        if verify not in ("lazy", "full", "none"):
            raise ValueError(f"verify must be 'lazy', 'full' or 'none', got {verify!r}")
        _check_positive(window_shards, "window_shards")
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.window_shards = window_shards
        self._sites = self.manifest.sites if sites is None else tuple(sites)
        for site in self._sites:
            self._check_site(site)
        if not self._sites:
            raise DataError(f"{self.folder}: no sites selected")
        if not self.manifest.complete:
            warnings.warn(
                f"{self.folder}: the cache is incomplete (its writer has not finished); reading the "
                f"{self.manifest.total_tokens} tokens of its {len(self.manifest.shards)} completed shards",
                stacklevel=2,
            )
        if self.manifest.total_tokens == 0:
            raise DataError(f"{self.folder}: the cache holds no tokens yet")
        shards = self.manifest.shards
        problems = [p for shard in shards if (p := _size_problem(self.folder / shard.file, shard))]
        if verify == "full" and not problems:
            problems = [p for shard in shards if (p := _checksum_problem(self.folder / shard.file, shard))]
        if problems:
            raise ArtifactError(f"{self.folder}: " + "; ".join(map(str, problems)))
        self._verified: set[int] = set(range(len(shards))) if verify != "lazy" else set()
        self._starts = torch.tensor([0, *itertools.accumulate(s.rows for s in shards)], dtype=torch.int64)
        # Enough open shards for the current and the next window; each is one memory map.
        self._open: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._max_open = 2 * window_shards
        self._plans: dict[tuple[int, int], _EpochPlan] = {}
        self._windows: dict[tuple[int, int, int], Tensor] = {}

    # ------------------------------------------------------------------ ActivationSource protocol

    @property
    def sites(self) -> tuple[str, ...]:
        return self._sites

    def d_in(self, site: str) -> int:
        self._check_site(site)
        return self.manifest.d_in[site]

    @property
    def n_rows(self) -> int:
        """Number of tokens (rows) per site in the completed shards."""
        return self.manifest.total_tokens

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    def batches(self, batch_size: int, *, seed: int, start: int = 0) -> Iterator[Mapping[str, ActBatch]]:
        """Endless shuffled batches (module docstring); ``start`` skips batches exactly."""
        _check_positive(batch_size, "batch_size")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        return self._batches(batch_size, seed, start)

    def describe(self) -> dict:
        return {
            "kind": "cache",
            "path": str(self.folder),
            "rows": self.n_rows,
            "complete": self.manifest.complete,
            "dtype": self.manifest.dtype,
            "shard_tokens": self.manifest.shard_tokens,
            "window_shards": self.window_shards,
            "sites": {site: {"d_in": self.manifest.d_in[site], "dtype": self.manifest.dtype} for site in self._sites},
            "info": self.manifest.info,
        }

    # ------------------------------------------------------------------ in-order reading

    def iter_rows(self, batch_size: int, *, site: str | None = None, max_rows: int | None = None) -> Iterator[Tensor]:
        """Rows of one site once, in stored order, in float32 chunks of ``batch_size`` (the last may be
        shorter), stopping after ``max_rows`` rows when given. ``site`` may be omitted for one site."""
        _check_positive(batch_size, "batch_size")
        if site is None:
            if len(self._sites) > 1:
                raise DataError(f"{self.folder}: several sites {list(self._sites)}; say which one to read")
            site = self._sites[0]
        self._check_site(site)
        end = self.n_rows if max_rows is None else min(self.n_rows, max_rows)
        return (
            self._take(torch.arange(start, min(start + batch_size, end)), (site,))[site]
            for start in range(0, end, batch_size)
        )

    # ------------------------------------------------------------------ internals

    def _batches(self, batch_size: int, seed: int, start: int) -> Iterator[Mapping[str, ActBatch]]:
        for i in itertools.count(start):
            rows = self._take(self._batch_rows(i, batch_size, seed), self._sites)
            yield {site: ActBatch(x) for site, x in rows.items()}

    def _batch_rows(self, i: int, batch_size: int, seed: int) -> Tensor:
        """Global row numbers of batch ``i``: stream positions ``[i·B, (i+1)·B)``."""
        pos, end = i * batch_size, (i + 1) * batch_size
        pieces = []
        while pos < end:
            epoch, offset = divmod(pos, self.n_rows)
            plan = self._plan(seed, epoch)
            w = bisect.bisect_right(plan.starts, offset) - 1
            take = min(end - pos, plan.starts[w + 1] - offset)
            lo = offset - plan.starts[w]
            pieces.append(self._window(seed, epoch, w, plan)[lo : lo + take])
            pos += take
        return torch.cat(pieces)

    def _plan(self, seed: int, epoch: int) -> _EpochPlan:
        key = (seed, epoch)
        if key not in self._plans:
            # The trailing tags keep the two kinds of stream apart; never end a key with 0
            # (SeedSequence treats trailing zeros as absent).
            order = torch.randperm(len(self.manifest.shards), generator=seeded_generator(seed, epoch, 1)).tolist()
            windows = [order[k : k + self.window_shards] for k in range(0, len(order), self.window_shards)]
            sizes = [sum(self.manifest.shards[s].rows for s in window) for window in windows]
            _put(self._plans, key, _EpochPlan(windows, [0, *itertools.accumulate(sizes)]))
        return self._plans[key]

    def _window(self, seed: int, epoch: int, w: int, plan: _EpochPlan) -> Tensor:
        key = (seed, epoch, w)
        if key not in self._windows:
            rows = torch.cat([torch.arange(int(self._starts[s]), int(self._starts[s + 1])) for s in plan.windows[w]])
            _put(self._windows, key, rows[torch.randperm(len(rows), generator=seeded_generator(seed, epoch, 2, w + 1))])
        return self._windows[key]

    def _take(self, rows: Tensor, sites: tuple[str, ...]) -> dict[str, Tensor]:
        """float32 ``[len(rows), d]`` per site; each shard's rows are read in file order."""
        order = torch.argsort(rows)
        ordered = rows[order]
        shard_of = torch.searchsorted(self._starts, ordered, right=True) - 1
        shards, counts = torch.unique_consecutive(shard_of, return_counts=True)
        dest = order.numpy()
        np_dtype = _DTYPES[self.manifest.dtype][2]
        # Gathered in the storage dtype and converted once: half the bytes moved for 16-bit caches.
        stored = {site: np.empty((len(rows), self.manifest.d_in[site]), dtype=np_dtype) for site in sites}
        lo = 0
        for shard, count in zip(shards.tolist(), counts.tolist()):
            local = (ordered[lo : lo + count] - self._starts[shard]).numpy()
            arrays = self._shard(shard)
            for site in sites:
                stored[site][dest[lo : lo + count]] = arrays[site][local]
            lo += count
        return {site: _as_float32(block) for site, block in stored.items()}

    def _shard(self, index: int) -> dict[str, np.ndarray]:
        if index in self._open:
            self._open.move_to_end(index)
            return self._open[index]
        shard = self.manifest.shards[index]
        path = self.folder / shard.file
        if index not in self._verified:
            problem = _size_problem(path, shard) or _checksum_problem(path, shard)
            if problem is not None:
                raise ArtifactError(f"{self.folder}: {problem}")
            self._verified.add(index)
        self._open[index] = _map_shard(path, shard, self.manifest, self._sites)
        if len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return self._open[index]

    def _check_site(self, site: str) -> None:
        if site not in self.manifest.d_in:
            raise DataError(f"{self.folder}: no site {site!r}; the cache holds {list(self.manifest.sites)}")

    def __repr__(self) -> str:
        return f"CacheSource({str(self.folder)!r}, rows={self.n_rows}, sites={list(self._sites)})"


def _as_float32(block: np.ndarray) -> Tensor:
    x = torch.from_numpy(block)
    return (x.view(torch.bfloat16) if x.dtype == torch.int16 else x).float()


def _put(cache: dict, key: Any, value: Any, size: int = 2) -> None:
    """Insert into a tiny FIFO cache: consecutive batches touch at most the current and the next entry."""
    if len(cache) >= size:
        cache.pop(next(iter(cache)))
    cache[key] = value
