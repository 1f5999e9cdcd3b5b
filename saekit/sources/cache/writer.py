"""Writing an activation cache: :func:`write_cache` (checks, shards, manifest updates, resume)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeAlias

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from tqdm.auto import tqdm

from saekit.atomic import remove_temporaries, write_bytes
from saekit.errors import ArtifactError, ConfigError, DataError
from saekit.sources.cache.manifest import (
    DEFAULT_SHARD_TOKENS,
    DTYPES,
    MANIFEST,
    SHARD_FILE,
    CacheManifest,
    ShardRecord,
    manifest_bytes,
    read_manifest,
    shard_name,
)
from saekit.sources.cache.shards import file_problem, is_unrecorded_shard
from saekit.sources.tensor import _check_positive

_OURS = r"shard-\d+\.safetensors|manifest\.json"
"""The files a cache writer puts in its folder (what its killed writes may have left temporaries of)."""

Chunk: TypeAlias = Mapping[str, Tensor]
ChunkStream: TypeAlias = Iterable[Chunk] | Callable[[int], Iterable[Chunk]]


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
    without reading ``chunks``); ``resume=False`` deletes a previous cache there and starts over. Files
    saekit cannot tell it wrote for that cache are never deleted nor overwritten: the write stops with
    an ArtifactError instead (see :mod:`saekit.sources.cache`).
    """
    folder = Path(folder)
    manifest = _start(folder, _new_manifest(sites, d_in, info, dtype, shard_tokens), resume)
    if manifest.complete:
        return manifest
    return _append(folder, manifest, chunks, progress)


def _start(folder: Path, wanted: CacheManifest, resume: bool) -> CacheManifest:
    """The manifest the write continues from, with ``folder`` made ready for it: with ``resume``, the
    cache already there (after checking it has ``wanted``'s settings; a complete one is returned as it
    is), else ``wanted``, after deleting a previous cache. The manifest is written before any shard.

    Only files saekit can tell it wrote for the cache in ``folder`` are ever deleted or overwritten: the
    shards its manifest lists, the shard after them when it is laid out as one of them (what a run
    killed between renaming a shard into place and recording it leaves), and the temporary files of
    :mod:`saekit.atomic`. Shards without a readable manifest, or any other file named like a shard,
    stop the write with an ArtifactError that says what to do.
    """
    _make_folder(folder)
    existing = _existing_cache(folder)
    if existing is None:
        if strays := _shard_files(folder):
            raise ArtifactError(
                f"{folder} holds shard files ({_names(strays)}) but no {MANIFEST}, so saekit cannot tell which cache "
                "they belong to and will not delete or overwrite them: write to another folder, or delete them "
                "(or the folder) yourself to start over"
            )
        manifest = wanted
    else:
        if resume:
            _check_same_cache(existing, wanted, folder)
            if existing.complete:
                return existing
        remnant = _unrecorded_shard(folder, existing)  # and no other file named like a shard
        if resume:
            _check_shards(folder, existing)
            manifest = existing
        else:
            _delete_cache(folder, existing, remnant)
            manifest = wanted
        remove_temporaries(folder, _OURS)
    _write(folder / MANIFEST, manifest_bytes(manifest))
    return manifest


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ArtifactError(f"{folder} is not a folder; write the cache to a folder") from None
    except OSError as exc:
        raise ArtifactError(f"cannot create the cache folder {folder} ({exc.strerror or exc})") from None


def _existing_cache(folder: Path) -> CacheManifest | None:
    """The manifest of the cache in ``folder``; None when there is none. One that cannot be read is an
    error: without it, saekit cannot tell which files belong to the cache."""
    if not (folder / MANIFEST).exists():
        return None
    try:
        return read_manifest(folder)
    except ArtifactError as exc:
        raise ArtifactError(
            f"{exc}; saekit cannot tell which files in {folder} belong to that cache, so it neither resumes nor "
            f"overwrites it: delete {folder} yourself to start over, or write to another folder"
        ) from None


def _shard_files(folder: Path) -> list[str]:
    try:
        return sorted(path.name for path in folder.iterdir() if SHARD_FILE.fullmatch(path.name))
    except OSError as exc:
        raise ArtifactError(f"cannot list the cache folder {folder} ({exc.strerror or exc})") from None


def _unrecorded_shard(folder: Path, manifest: CacheManifest) -> Path | None:
    """The shard after the listed ones when a killed run left it; ArtifactError when ``folder`` holds
    any other file named like a shard that the manifest does not list."""
    listed = {shard.file for shard in manifest.shards}
    unlisted = [name for name in _shard_files(folder) if name not in listed]
    nxt = folder / shard_name(len(manifest.shards))
    remnant = nxt if nxt.name in unlisted and is_unrecorded_shard(nxt, manifest) else None
    if foreign := [name for name in unlisted if remnant is None or name != remnant.name]:
        raise ArtifactError(
            f"{folder} holds shard files its {MANIFEST} does not list ({_names(foreign)}); saekit deletes and "
            "overwrites only files it can tell it wrote for this cache: move them out of the folder, or write to "
            "another folder"
        )
    return remnant


def _check_shards(folder: Path, manifest: CacheManifest) -> None:
    """A resumed write appends to the listed shards: each must be there with its recorded size."""
    for shard in manifest.shards:
        if (problem := file_problem(folder / shard.file, shard)) is not None:
            raise ArtifactError(
                f"{folder}: cannot resume the cache: {problem}; pass resume=False (saekit cache --overwrite) to start it over"
            )


def _delete_cache(folder: Path, manifest: CacheManifest, remnant: Path | None) -> None:
    """Delete the cache's shards, the last first; the manifest is then replaced by the new one. A crash
    part-way leaves a manifest listing missing shards, which readers name and another overwrite ends."""
    paths = ([remnant] if remnant is not None else []) + [folder / shard.file for shard in reversed(manifest.shards)]
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise ArtifactError(f"cannot delete {path} ({exc.strerror or exc})") from None


def _names(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _write(path: Path, data: bytes) -> None:
    try:
        write_bytes(path, data)
    except OSError as exc:
        raise ArtifactError(f"cannot write {path} ({exc.strerror or exc})") from None


def _append(folder: Path, manifest: CacheManifest, chunks: ChunkStream, progress: bool) -> CacheManifest:
    """Write the rows of ``chunks`` that ``manifest``'s shards do not hold yet, and complete the cache."""
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
        _write(self.folder / MANIFEST, manifest_bytes(self.manifest))
        return self.manifest

    def _commit(self, n: int) -> None:
        tensors = {}
        for site, pieces in self.buffer.items():
            block = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
            tensors[site], rest = block[:n], block[n:]
            self.buffer[site] = [rest] if len(rest) else []
        self.buffered -= n
        name = shard_name(len(self.manifest.shards))
        data = safetensors_bytes(tensors)
        _write(self.folder / name, data)
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
        _write(self.folder / MANIFEST, manifest_bytes(self.manifest))


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
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    _check_positive(shard_tokens, "shard_tokens")
    try:
        # A JSON round trip, so that comparing with a manifest read back from disk is like for like.
        info = json.loads(json.dumps(dict(info), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"info must be JSON-serialisable: {exc}") from None
    return CacheManifest(info=dict(info), sites=sites, d_in={s: d_in[s] for s in sites}, dtype=dtype, shard_tokens=shard_tokens)


def _check_same_cache(existing: CacheManifest, wanted: CacheManifest, folder: Path) -> None:
    for field in ("sites", "d_in", "dtype", "shard_tokens", "info"):
        there, now = getattr(existing, field), getattr(wanted, field)
        if there != now:
            raise ArtifactError(
                f"{folder} already holds a cache with a different {field} ({'; '.join(_differences(field, there, now))}); "
                "pass resume=False (saekit cache --overwrite) to overwrite it, or write to another folder"
            )


def _differences(key: str, there: Any, now: Any, shown: int = 5) -> list[str]:
    """``"key.sub: a there, b now"`` for each differing entry of two settings (tables compared key by key,
    so a long description is reduced to what changed); at most ``shown`` of them."""
    if not (isinstance(there, Mapping) and isinstance(now, Mapping)):
        return [f"{key}: {there!r} there, {now!r} now"]
    found = []
    for sub in [*there, *(k for k in now if k not in there)]:
        if sub not in there or sub not in now:
            a, b = (repr(there[sub]) if sub in there else "missing"), (repr(now[sub]) if sub in now else "missing")
            found.append(f"{key}.{sub}: {a} there, {b} now")
        elif there[sub] != now[sub]:
            found += _differences(f"{key}.{sub}", there[sub], now[sub])
    return found[:shown] + ([f"and {len(found) - shown} more"] if len(found) > shown else [])


def _checked_chunk(chunk: Chunk, manifest: CacheManifest, index: int) -> dict[str, Tensor]:
    """The chunk's rows per site, on the CPU in the storage dtype, after checking everything about them."""
    if not isinstance(chunk, Mapping):
        raise DataError(f"chunk {index}: expected a mapping {{site: tensor}}, got {type(chunk).__name__}")
    if set(chunk) != set(manifest.sites):
        raise DataError(f"chunk {index}: sites {sorted(chunk)}, expected {sorted(manifest.sites)}")
    storage = DTYPES[manifest.dtype][0]
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
