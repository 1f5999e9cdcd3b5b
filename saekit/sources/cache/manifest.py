"""The activation cache's format: ``manifest.json`` (:class:`CacheManifest`), the shard files' names and
the storage dtypes (see :mod:`saekit.sources.cache` for the layout)."""

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

from saekit.errors import ArtifactError

FORMAT = "saekit-activation-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_TOKENS = 1 << 16

# Storage dtype name -> (torch dtype, safetensors dtype code, numpy dtype of the stored bytes). numpy has
# no bfloat16, so those rows are read as int16 and reinterpreted by torch.
DTYPES: dict[str, tuple[torch.dtype, str, type[np.generic]]] = {
    "float16": (torch.float16, "F16", np.float16),
    "bfloat16": (torch.bfloat16, "BF16", np.int16),
    "float32": (torch.float32, "F32", np.float32),
}
SHARD_FILE = re.compile(r"shard-(\d+)\.safetensors")


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
        if manifest.dtype not in DTYPES or set(manifest.d_in) != set(manifest.sites):
            raise ArtifactError(f"{where}: malformed manifest (dtype {manifest.dtype!r}, sites {list(manifest.sites)})")
        if data.get("total_tokens") != manifest.total_tokens:
            raise ArtifactError(
                f"{where}: total_tokens {data.get('total_tokens')!r} disagrees with the shards' {manifest.total_tokens} rows"
            )
        return manifest


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


def manifest_bytes(manifest: CacheManifest) -> bytes:
    return (json.dumps(manifest.to_json(), indent=1) + "\n").encode()
