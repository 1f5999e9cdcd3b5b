"""Shard files of an activation cache: integrity checks (size, checksum) and memory-mapped reading."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from saekit.errors import ArtifactError
from saekit.sources.cache.manifest import DTYPES, MANIFEST, CacheManifest, ShardRecord, read_manifest

_HASH_BLOCK = 1 << 22


class CacheProblem(NamedTuple):
    """Something wrong with one file of a cache."""

    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


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
        problem = size_problem(path, shard) or checksum_problem(path, shard)
        if problem is None:
            try:
                map_shard(path, shard, manifest, manifest.sites)
            except ArtifactError as exc:
                problem = CacheProblem(shard.file, str(exc).removeprefix(f"{shard.file}: "))
        if problem is not None:
            problems.append(problem)
    return problems


def size_problem(path: Path, shard: ShardRecord) -> CacheProblem | None:
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


def checksum_problem(path: Path, shard: ShardRecord) -> CacheProblem | None:
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


def map_shard(path: Path, shard: ShardRecord, manifest: CacheManifest, sites: Iterable[str]) -> dict[str, np.ndarray]:
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
    _, code, np_dtype = DTYPES[manifest.dtype]
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
