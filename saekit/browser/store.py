"""The browser's data of one SAE, cached in a folder inside the SAE's folder:

    <sae>/browser-cache/
      data.safetensors   the LatentStats tensors, logit effects, neighbours and the token contexts
      meta.json          fingerprint (weights hash + settings), token strings, sample facts

The folder is written atomically (:func:`saekit.atomic.replace_folder`), so a cache is either complete
or absent; a cache whose fingerprint differs from the one asked for is stale and rebuilt.

:class:`Browser`, the data of every page of a suite, is defined here too: it is what both the builder
(:mod:`saekit.browser.build`) and the pages' server and exporter (:mod:`saekit.browser.server`,
:mod:`saekit.browser.export`) hold.

A cache can come from elsewhere (inside a downloaded SAE's folder), so :func:`load_data` trusts
nothing in it: :func:`saekit.browser.meta.read_meta` checks the JSON, :func:`tensor_problem` the
tensors against it, so that a page never indexes out of range; either failure is an ArtifactError
naming the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from saekit.atomic import replace_folder, write_safetensors
from saekit.browser.dynamics import Dynamics
from saekit.browser.effects import LogitEffects, Neighbours
from saekit.browser.explanations import Explanations
from saekit.browser.meta import FORMAT, CacheMeta, SaeInfo, meta_text, read_meta
from saekit.browser.stats import _TENSORS, LatentStats, Layout
from saekit.errors import ArtifactError

CACHE_DIR = "browser-cache"

_RANKS = {
    "stats.top_values": 2, "stats.top_rows": 2, "stats.quantile_values": 3, "stats.quantile_rows": 3,
    "stats.top_windows": 3, "stats.quantile_windows": 4, "stats.random_rows": 2, "stats.random_windows": 3,
    "stats.histogram": 2, "stats.fire_count": 1,
    "stats.act_sum": 1, "neighbours.ids": 2, "neighbours.cosine": 2,
    **{f"effects.{k}": 2 for k in LogitEffects._fields},
}  # fmt: skip
"""Rank of each cached tensor; each has one row per latent."""
_INTEGERS = ("stats.top_rows", "stats.quantile_rows", "stats.random_rows", "stats.histogram", "stats.fire_count",
            "neighbours.ids",
            "effects.promoted_ids", "effects.suppressed_ids")  # fmt: skip
"""Tensors of integers; the others hold floats."""


@dataclass(frozen=True)
class SaeData:
    """All a browser page needs about one SAE."""

    name: str
    info: SaeInfo
    stats: LatentStats
    effects: LogitEffects | None
    neighbours: Neighbours
    tokens: Tensor
    """[contexts, context] int token ids of the sample."""
    layout: Layout
    vocab: dict[int, str]
    """Display string of every token id that appears in ``tokens`` or ``effects``."""
    window_before: int
    dynamics: Dynamics | None = None
    """The SAE's training dynamics (``saekit track``), when the browser was given them; never cached."""
    explanations: Explanations | None = None
    """The latents' explanations and scores (``saekit interpret``), read from beside the SAE; never cached."""


@dataclass(frozen=True)
class Browser:
    """The data of every page: a title and each SAE's data, in suite order."""

    root: Path
    title: str
    saes: dict[str, SaeData]


def weights_hash(sae_folder: Path) -> str:
    with open(sae_folder / "sae_weights.safetensors", "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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
    meta = CacheMeta(key, data.name, data.info, data.stats.n_rows, tuple(data.layout), data.window_before, data.vocab)

    def fill(tmp: Path) -> None:
        write_safetensors(tmp / "data.safetensors", tensors)
        (tmp / "meta.json").write_text(meta_text(meta), encoding="utf-8")

    return replace_folder(target, fill)


def cached_key(folder: Path) -> str | None:
    """The fingerprint of the cache in ``folder``, or None when there is no readable cache (rebuild it)."""
    try:
        return read_meta(folder / CACHE_DIR / "meta.json").key
    except ArtifactError:
        return None


def load_data(folder: Path) -> SaeData:
    """The cached data of the SAE in ``folder``, checked: a cache may come from elsewhere."""
    cache = folder / CACHE_DIR
    meta = read_meta(cache / "meta.json")
    path = cache / "data.safetensors"
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ArtifactError(f"cannot read the browser cache {path}: {exc}; delete {cache} to rebuild it") from exc
    problem = tensor_problem(tensors, meta)
    if problem:
        raise ArtifactError(f"{path} does not match its meta.json: {problem}; delete {cache} to rebuild it")
    stats = LatentStats(n_rows=meta.n_rows, **{k: tensors[f"stats.{k}"] for k in _TENSORS})
    effects = None
    if "effects.promoted" in tensors:
        effects = LogitEffects(*(tensors[f"effects.{k}"] for k in LogitEffects._fields))
    return SaeData(
        name=meta.name,
        info=meta.info,
        stats=stats,
        effects=effects,
        neighbours=Neighbours(tensors["neighbours.ids"], tensors["neighbours.cosine"]),
        tokens=tensors["tokens"].long(),
        layout=Layout(*meta.layout),
        vocab=meta.vocab,
        window_before=meta.window_before,
    )


def tensor_problem(tensors: dict[str, Tensor], meta: CacheMeta) -> str | None:
    """What makes ``tensors`` unusable with ``meta``: a tensor missing, of the wrong rank, dtype or
    shape, or an example row, latent id or window outside what the cache holds; None if nothing."""
    has_effects = any(k.startswith("effects.") for k in tensors)  # a model without unembedding has none
    ranked = [k for k in _RANKS if has_effects or not k.startswith("effects.")]
    missing = [k for k in [*ranked, "tokens"] if k not in tensors]
    if missing:
        return f"missing tensor(s) {', '.join(missing)}"
    t = {k: tensors[k] for k in [*ranked, "tokens"]}
    for k in ranked:
        if t[k].ndim != _RANKS[k] or t[k].shape[0] != meta.info.d_sae:
            return f"{k} has shape {list(t[k].shape)}, not {_RANKS[k]} dimensions with d_sae={meta.info.d_sae} rows"
        if t[k].is_floating_point() == (k in _INTEGERS) or t[k].dtype == torch.bool:
            return f"{k} is stored as {t[k].dtype}"
    tokens, layout = t["tokens"], Layout(*meta.layout)
    if tokens.ndim != 2 or tokens.shape[1] != layout.context or tokens.is_floating_point():
        return f"tokens is {tokens.dtype} {list(tokens.shape)}, not integer [contexts, {layout.context}]"
    return _shape_problem(t, meta, tokens.shape[0] * layout.per_context)


def _shape_problem(t: dict[str, Tensor], meta: CacheMeta, rows: int) -> str | None:
    """The part of :func:`tensor_problem` that relates tensors to each other and to the ``rows``
    activation rows that the stored tokens hold."""
    top, quantile = t["stats.top_values"].shape, t["stats.quantile_values"].shape
    same = [("stats.top_rows", top), ("stats.quantile_rows", quantile), ("neighbours.cosine", t["neighbours.ids"].shape)]
    same += [("stats.top_windows", (*top, t["stats.top_windows"].shape[2]))]
    same += [("stats.quantile_windows", (*quantile, t["stats.top_windows"].shape[2]))]
    same += [("stats.random_windows", (*t["stats.random_rows"].shape, t["stats.top_windows"].shape[2]))]
    same += [(k, t["effects.promoted"].shape) for k in t if k.startswith("effects.")]
    for k, shape in same:
        if t[k].shape != shape:
            return f"{k} has shape {list(t[k].shape)}, expected {list(shape)}"
    if top[1] < 1 or not meta.window_before < t["stats.top_windows"].shape[2]:
        return "no top example slot, or window_before outside the stored windows"
    if meta.n_rows > rows:
        return f"n_rows={meta.n_rows} is more than the {rows} rows of the stored tokens"
    bounded = ("stats.top_rows", "stats.quantile_rows", "stats.random_rows")
    for k, high in [*((k, meta.n_rows) for k in bounded), ("neighbours.ids", meta.info.d_sae)]:
        low = 0 if k == "neighbours.ids" else -1
        if t[k].numel() and (int(t[k].min()) < low or int(t[k].max()) >= high):
            return f"{k} holds values outside {low}..{high - 1}"
    return None
