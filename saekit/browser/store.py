"""The browser's data of one SAE, cached in a folder inside the SAE's folder:

    <sae>/browser-cache/
      data.safetensors   the LatentStats tensors, logit effects, neighbours and the token contexts
      meta.json          fingerprint (weights hash + settings), token strings, sample facts

The folder is written atomically (:func:`saekit.atomic.replace_folder`), so a cache is either complete
or absent; a cache whose fingerprint differs from the one asked for is stale and rebuilt.

:class:`Browser`, the data of every page of a suite, is defined here too: it is what both the builder
(:mod:`saekit.browser.build`) and the pages' server and exporter (:mod:`saekit.browser.server`) hold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from saekit.atomic import replace_folder
from saekit.browser.effects import LogitEffects, Neighbours
from saekit.browser.stats import _TENSORS, LatentStats, Layout
from saekit.errors import ArtifactError

CACHE_DIR = "browser-cache"
FORMAT = 1
"""Bumped whenever what the cache holds changes meaning, so older caches are rebuilt."""


@dataclass(frozen=True)
class SaeData:
    """All a browser page needs about one SAE."""

    name: str
    info: dict[str, Any]
    """Architecture, site, model, d_sae, hparams, metrics from provenance / eval, sample settings."""
    stats: LatentStats
    effects: LogitEffects | None
    neighbours: Neighbours
    tokens: Tensor
    """[contexts, context] int token ids of the sample."""
    layout: Layout
    vocab: dict[int, str]
    """Display string of every token id that appears in ``tokens`` or ``effects``."""
    window_before: int


@dataclass(frozen=True)
class Browser:
    """The data of every page: a title and each SAE's data, in suite order."""

    root: Path
    title: str
    saes: dict[str, SaeData]


def weights_hash(sae_folder: Path) -> str:
    digest = hashlib.sha256()
    with open(sae_folder / "sae_weights.safetensors", "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(weights_sha: str, settings: dict[str, Any]) -> str:
    text = json.dumps({"format": FORMAT, "weights": weights_sha, "settings": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def save_data(folder: Path, data: SaeData, key: str) -> Path:
    """Write ``data`` into ``folder / CACHE_DIR`` atomically; returns the cache folder."""
    target = folder / CACHE_DIR
    tensors = {f"stats.{k}": v.contiguous() for k, v in data.stats.tensors().items()}
    tensors["neighbours.ids"], tensors["neighbours.cosine"] = data.neighbours
    if data.effects is not None:
        tensors.update({f"effects.{k}": v.contiguous() for k, v in data.effects._asdict().items()})
    tensors["tokens"] = data.tokens.to(torch.int32).contiguous()
    meta = {
        "format": FORMAT,
        "key": key,
        "name": data.name,
        "info": data.info,
        "n_rows": data.stats.n_rows,
        "layout": list(data.layout),
        "window_before": data.window_before,
        "vocab": {str(k): v for k, v in data.vocab.items()},
    }

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / "data.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")

    return replace_folder(target, fill)


def cached_key(folder: Path) -> str | None:
    """The fingerprint of the cache in ``folder``, or None when there is no readable cache."""
    try:
        meta = json.loads((folder / CACHE_DIR / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta.get("key") if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def load_data(folder: Path) -> SaeData:
    """The cached data of the SAE in ``folder``."""
    cache = folder / CACHE_DIR
    try:
        meta = json.loads((cache / "meta.json").read_text(encoding="utf-8"))
        tensors = load_file(str(cache / "data.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ArtifactError(f"cannot read the browser cache {cache}: {exc}; delete it to rebuild it") from exc
    stats = LatentStats(n_rows=int(meta["n_rows"]), **{k: tensors[f"stats.{k}"] for k in _TENSORS})
    effects = None
    if "effects.promoted" in tensors:
        effects = LogitEffects(*(tensors[f"effects.{k}"] for k in LogitEffects._fields))
    return SaeData(
        name=meta["name"],
        info=meta["info"],
        stats=stats,
        effects=effects,
        neighbours=Neighbours(tensors["neighbours.ids"], tensors["neighbours.cosine"]),
        tokens=tensors["tokens"].long(),
        layout=Layout(*meta["layout"]),
        vocab={int(k): v for k, v in meta["vocab"].items()},
        window_before=int(meta["window_before"]),
    )
