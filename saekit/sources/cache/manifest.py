"""The activation cache's format: ``manifest.json`` (:class:`CacheManifest`), the shard files' names and
the storage dtypes (see :mod:`saekit.sources.cache` for the layout).

:func:`read_manifest` is the one way a manifest is read and :meth:`CacheManifest.from_json` the one check
of what it says: the source, :func:`~saekit.sources.cache.verify_cache` and a resumed write all go
through them, so a manifest is exactly what the writer writes or it is refused with an
:class:`~saekit.errors.ArtifactError` naming the manifest and the entry. In particular a shard is always
``shard-<index>.safetensors`` in the cache folder itself, never a path elsewhere nor a symbolic link.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit.bounded import read_json
from saekit.errors import ArtifactError

MAX_MANIFEST_BYTES = 64 << 20
"""Largest manifest read: about 150 bytes a shard, so room for some 400,000 shards."""

FORMAT = "saekit-activation-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_TOKENS = 1 << 16
MAX_HEADER = 100_000_000
"""Largest safetensors header accepted, in bytes (the safetensors library's own bound)."""

# Storage dtype name -> (torch dtype, safetensors dtype code, numpy dtype of the stored bytes). numpy has
# no bfloat16, so those rows are read as int16 and reinterpreted by torch.
DTYPES: dict[str, tuple[torch.dtype, str, type[np.generic]]] = {
    "float16": (torch.float16, "F16", np.float16),
    "bfloat16": (torch.bfloat16, "BF16", np.int16),
    "float32": (torch.float32, "F32", np.float32),
}
SHARD_FILE = re.compile(r"shard-(\d+)\.safetensors")
"""Names the writer gives shards; a file named so that a manifest does not list is not overwritten."""

_KEYS = frozenset(
    ("format", "format_version", "complete", "info", "sites", "d_in", "dtype", "shard_tokens", "total_tokens", "chunks_done", "chunk_rows_done", "shards")
)
_SHARD_KEYS = frozenset(("file", "rows", "bytes", "sha256"))
_SHA256 = re.compile(r"[0-9a-f]{64}")


def shard_name(index: int) -> str:
    """The file name of shard ``index``: the only name a manifest may give it."""
    return f"shard-{index:06d}.safetensors"


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

    @property
    def row_bytes(self) -> int:
        """Bytes one row (token) takes in a shard: every site's values in the storage dtype."""
        return sum(self.d_in.values()) * np.dtype(DTYPES[self.dtype][2]).itemsize

    @classmethod
    def from_json(cls, data: Any, where: str) -> CacheManifest:
        """The manifest that parsed JSON ``data`` describes, after checking every field is one the writer
        could have written; otherwise an ArtifactError naming ``where`` and the field."""
        _check_keys(data, where)
        sites = data["sites"]
        if not isinstance(sites, list) or not sites or not all(isinstance(s, str) and s for s in sites) or len(set(sites)) != len(sites):
            raise ArtifactError(f"{where}: sites must be a non-empty list of distinct, non-empty names, found {_show(sites)}")
        d_in = data["d_in"]
        if not isinstance(d_in, dict) or set(d_in) != set(sites):
            raise ArtifactError(f"{where}: d_in must give a width for every site in {sites} and no other, found {_show(d_in)}")
        for site in sites:
            _count(d_in[site], f"d_in[{site!r}]", where, least=1)
        if not isinstance(data["dtype"], str) or data["dtype"] not in DTYPES:
            raise ArtifactError(f"{where}: dtype must be one of {list(DTYPES)}, found {_show(data['dtype'])}")
        if not isinstance(data["info"], dict):
            raise ArtifactError(f"{where}: info must be a JSON object, found {_show(data['info'])}")
        if not isinstance(data["complete"], bool):
            raise ArtifactError(f"{where}: complete must be true or false, found {_show(data['complete'])}")
        if not isinstance(data["shards"], list):
            raise ArtifactError(f"{where}: shards must be a list, found {_show(data['shards'])}")
        manifest = cls(
            info=data["info"],
            sites=tuple(sites),
            d_in=dict(d_in),
            dtype=data["dtype"],
            shard_tokens=_count(data["shard_tokens"], "shard_tokens", where, least=1),
            chunks_done=_count(data["chunks_done"], "chunks_done", where),
            chunk_rows_done=_count(data["chunk_rows_done"], "chunk_rows_done", where),
            complete=data["complete"],
        )
        shards = tuple(_shard(entry, k, manifest, where) for k, entry in enumerate(data["shards"]))
        manifest = dataclasses.replace(manifest, shards=shards)
        _check_progress(manifest, data["total_tokens"], where)
        return manifest


def _check_keys(data: Any, where: str) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f"{where}: not a saekit activation-cache manifest")
    version = data.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ArtifactError(f"{where}: cache format version {_show(version)}; this saekit reads version {FORMAT_VERSION}")
    _check_key_set(data, _KEYS, "the manifest", where)


def _check_key_set(data: dict[str, Any], keys: frozenset[str], name: str, where: str) -> None:
    if missing := sorted(keys - set(data)):
        raise ArtifactError(f"{where}: {name} is missing key {', '.join(map(repr, missing))}")
    if unknown := sorted(set(data) - keys):
        raise ArtifactError(f"{where}: {name} has unknown key {', '.join(map(repr, unknown))}")


def _shard(entry: Any, k: int, manifest: CacheManifest, where: str) -> ShardRecord:
    """Entry ``k`` of ``shards``: its name is the one the writer gives shard ``k`` (so it lies in the
    cache folder), and its size is that of ``rows`` rows and a header."""
    name = f"shards[{k}]"
    if not isinstance(entry, dict):
        raise ArtifactError(f"{where}: {name} must be a JSON object, found {_show(entry)}")
    _check_key_set(entry, _SHARD_KEYS, name, where)
    if entry["file"] != shard_name(k):
        raise ArtifactError(
            f"{where}: {name}.file must be {shard_name(k)!r} (shards lie in the cache folder, numbered in order), "
            f"found {_show(entry['file'])}"
        )
    rows = _count(entry["rows"], f"{name}.rows", where, least=1)
    if rows > manifest.shard_tokens:
        raise ArtifactError(f"{where}: {name}.rows is {rows}, more than shard_tokens ({manifest.shard_tokens})")
    size, data = _count(entry["bytes"], f"{name}.bytes", where), rows * manifest.row_bytes
    if not 8 + data + 2 <= size <= 8 + data + MAX_HEADER:
        raise ArtifactError(
            f"{where}: {name}.bytes is {size}, but a shard of {rows} rows holds {data} bytes of data "
            f"after a header of 10 to {MAX_HEADER + 8} bytes"
        )
    if not isinstance(entry["sha256"], str) or not _SHA256.fullmatch(entry["sha256"]):
        raise ArtifactError(f"{where}: {name}.sha256 must be 64 hexadecimal digits, found {_show(entry['sha256'])}")
    return ShardRecord(entry["file"], rows, size, entry["sha256"])


def _check_progress(manifest: CacheManifest, total_tokens: Any, where: str) -> None:
    """The counts that say how far the writer got agree with the shards and with ``complete``."""
    total = manifest.total_tokens
    if type(total_tokens) is not int or total_tokens != total:
        raise ArtifactError(f"{where}: total_tokens {_show(total_tokens)} disagrees with the shards' {total} rows")
    if manifest.chunk_rows_done > total:
        raise ArtifactError(f"{where}: chunk_rows_done {manifest.chunk_rows_done} exceeds total_tokens {total}")
    if manifest.complete and not manifest.shards:
        raise ArtifactError(f"{where}: the cache is marked complete but lists no shards")
    if manifest.complete and manifest.chunk_rows_done != total:
        raise ArtifactError(
            f"{where}: chunk_rows_done {manifest.chunk_rows_done} must equal total_tokens {total} in a complete cache"
        )


def _count(value: Any, name: str, where: str, least: int = 0) -> int:
    """``value`` if it is an integer (not a bool, not 3.0) of at least ``least`` (0 or 1)."""
    if type(value) is not int or value < least:
        kind = "positive" if least else "non-negative"
        raise ArtifactError(f"{where}: {name} must be a {kind} integer, found {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}..."


def read_manifest(folder: str | os.PathLike[str]) -> CacheManifest:
    """The manifest of the cache in ``folder``, checked by :meth:`CacheManifest.from_json`, with no
    listed shard a symbolic link; ArtifactError naming the manifest (and the entry) otherwise."""
    path = Path(folder) / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise ArtifactError(f"{path} does not exist: {folder} is not an activation cache (or its writer never started)")
    data = read_json(path, MAX_MANIFEST_BYTES, ArtifactError, allow_nan=False)
    manifest = CacheManifest.from_json(data, str(path))
    for k, shard in enumerate(manifest.shards):
        if (Path(folder) / shard.file).is_symlink():
            raise ArtifactError(
                f"{path}: shards[{k}] ({shard.file}) is a symbolic link; a cache's shards must be regular files in its folder"
            )
    return manifest


def manifest_bytes(manifest: CacheManifest) -> bytes:
    return (json.dumps(manifest.to_json(), indent=1) + "\n").encode()
