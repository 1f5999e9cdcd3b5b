"""Small caches for the tests of saekit.sources.cache, and tools to damage them on purpose.

The damaged caches keep their manifest consistent with the damaged file (size and sha256 rewritten)
wherever a test needs the checksum to vouch for the damage, so that only the check under test can
catch it.
"""

import hashlib
import itertools
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load, save

from saekit.sources.cache import CacheSource, write_cache

SITES = ("a", "b")
D = 3
INFO = {"model": "toy", "corpus": "unit-test", "context": 8, "seed": 0}
CHUNK_SIZES = (7, 13, 5, 9, 11, 3)  # 48 rows, chunk boundaries unaligned with shards of 10


def data(n: int = sum(CHUNK_SIZES)) -> torch.Tensor:
    """Site ``a`` rows: column 0 is the token index (exact in every dtype up to 256), the rest noise."""
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(0))
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return x


def chunks(x: torch.Tensor, sizes=CHUNK_SIZES, fail_after: int | None = None):
    """The chunk stream of ``x``: site b = 2 * site a, so rows of the two sites must stay aligned."""
    start = 0
    for k, n in enumerate(sizes):
        if k == fail_after:
            raise KeyboardInterrupt("killed")
        yield {"a": x[start : start + n], "b": 2 * x[start : start + n]}
        start += n


def write(folder: Path, x: torch.Tensor | None = None, **kwargs):
    """A float32 cache of ``x`` (default :func:`data`) in shards of 10 rows: 5 shards, the last of 8."""
    x = data() if x is None else x
    options = {"sites": SITES, "d_in": {"a": D, "b": D}, "info": INFO, "dtype": "float32", "shard_tokens": 10}
    return write_cache(folder, kwargs.pop("stream", None) or chunks(x), **{**options, **kwargs})


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.safetensors"))}


def ids(source: CacheSource, batch_size: int, n_batches: int, *, seed: int = 0, start: int = 0) -> list[list[int]]:
    batches = itertools.islice(source.batches(batch_size, seed=seed, start=start), n_batches)
    return [b["a"].x[:, 0].long().tolist() for b in batches]


def manifest_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def set_manifest(folder: Path, raw: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(raw))


def put_shard(folder: Path, index: int, content: bytes, *, rows: int | None = None) -> None:
    """Replace shard ``index`` with ``content`` and record its size and sha256 (and ``rows``, with the
    matching ``total_tokens``) in the manifest, so that the checksum vouches for the new bytes."""
    raw = manifest_of(folder)
    entry = raw["shards"][index]
    (folder / entry["file"]).write_bytes(content)
    entry.update(bytes=len(content), sha256=hashlib.sha256(content).hexdigest())
    if rows is not None:
        entry["rows"] = rows
        raw["total_tokens"] = raw["chunk_rows_done"] = sum(s["rows"] for s in raw["shards"])
    set_manifest(folder, raw)


def safetensors_file(header: Any, payload: bytes, *, header_len: int | None = None) -> bytes:
    """A file in the safetensors layout with any header at all (length, JSON header, data)."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if header_len is None else header_len) + text + payload


def shard_tensors(folder: Path, index: int) -> dict[str, torch.Tensor]:
    """Shard ``index``'s tensors, as safetensors reads them (for rewriting them changed)."""
    return load((folder / f"shard-{index:06d}.safetensors").read_bytes())


def with_tensors(folder: Path, index: int, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` as shard ``index``, recorded in the manifest (a shard whose checksum is valid)."""
    put_shard(folder, index, save(tensors))


def make_unreadable(path: Path) -> None:
    """Take every permission from ``path``; skips the test where that does not stop this user (root)."""
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("file permissions do not bind for this user (root with CAP_DAC_OVERRIDE)")
