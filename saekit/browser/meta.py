"""The JSON half of a browser cache, ``meta.json``: what it holds, as typed values, and its strict reader.

A cache can come from elsewhere (a ``browser-cache`` folder shipped inside a downloaded SAE), so
nothing in it is trusted: the file is read only up to :data:`MAX_JSON_BYTES`, then every key is
checked for presence and type before a page sees it (a number is a number, a name a string). Any
problem is an :class:`~saekit.errors.ArtifactError` naming the file and the key. Escaping whatever
the pages show is the pages' job (:mod:`saekit.browser.fmt`); this module makes the types true.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.bounded import read_json
from saekit.errors import ArtifactError, ConfigError
from saekit.strict import from_dict

FORMAT = 3
"""Bumped whenever what the cache holds changes meaning, so older caches are rebuilt."""

MAX_JSON_BYTES = 64 << 20
"""Largest JSON file the browser reads (64 MiB): a cache's ``meta.json``, a suite's ``index.json``, an
SAE's ``cfg.json``, an export's marker. The largest, ``meta.json``, holds the display text of each
token id that the sample or the logit effects use, at most a vocabulary's worth of short strings: a
few MB even for a 256k-token vocabulary. A larger file is refused before it is parsed into memory."""

_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Sample:
    """The token sample the statistics are over."""

    corpus: str
    split: str
    tokens: int
    """Activation rows (tokens) after the skipped positions."""
    contexts: int
    context_size: int
    skip_positions: int
    l0: float
    """Mean number of latents firing per token."""
    dead_fraction: float
    """Fraction of latents that never fired."""


@dataclass(frozen=True)
class SaeInfo:
    """What the pages say about one SAE besides its per-latent statistics."""

    architecture: str
    site: str
    d_in: int
    d_sae: int
    sample: Sample
    hparams: dict[str, Any] = field(default_factory=dict)
    """Architecture hyper-parameters: JSON scalars, or lists of them."""
    logit_effects: str | None = None
    """How the logit effects were computed; None when the model has no unembedding of width d_in."""
    model: str | None = None
    """The model the sample ran through."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Numbers from training and evaluation, by label ("train mse", "eval fvu")."""

    def __post_init__(self) -> None:
        if self.d_sae < 1 or self.d_in < 1:
            raise ValueError(f"d_in and d_sae must be positive, got {self.d_in} and {self.d_sae}")


@dataclass(frozen=True)
class Dims:
    """The sizes a record is made of (``meta.json``'s ``dims``)."""

    top: int
    bands: int
    per_band: int
    random: int
    window: int
    bins: int
    neighbours: int
    logit_k: int
    """Promoted and suppressed tokens per latent; 0 when the model has no unembedding of the SAE's width."""

    def __post_init__(self) -> None:
        sizes = [self.top, self.bands, self.per_band, self.random, self.window, self.bins, self.neighbours, self.logit_k]
        if min(self.top, self.bands, self.per_band, self.window, self.bins) < 1 or min(sizes) < 0 or max(sizes) > 4096:
            raise ValueError(f"record sizes must be in 0..4096 (top, bands, per_band, window, bins at least 1), got {sizes}")


@dataclass(frozen=True)
class CacheMeta:
    """The contents of ``meta.json``."""

    key: str
    """Fingerprint of the weights and settings the cache was computed from."""
    name: str
    info: SaeInfo
    n_rows: int
    layout: tuple[int, ...]
    """(context, skip) of :class:`saekit.browser.stats.Layout`."""
    window_before: int
    dims: Dims
    """The sizes of each latent's record in ``latents.bin``."""
    contexts: int
    """Contexts of the token sample in ``tokens.bin``."""
    vocab: dict[int, str]

    def __post_init__(self) -> None:
        if len(self.layout) != 2 or not 0 <= self.layout[1] < self.layout[0]:
            raise ValueError(f"layout must be [context, skip] with 0 <= skip < context, got {list(self.layout)}")
        if self.window_before < 0 or self.window_before >= self.dims.window:
            raise ValueError(f"window_before={self.window_before} is outside the windows of {self.dims.window} tokens")
        if not 0 <= self.n_rows <= self.contexts * (self.layout[0] - self.layout[1]):
            raise ValueError(
                f"n_rows={self.n_rows} is not in 0..the rows of {self.contexts} contexts of the layout {list(self.layout)}"
            )


def meta_text(meta: CacheMeta) -> str:
    """``meta`` as the text of ``meta.json``."""
    data = {"format": FORMAT, **dataclasses.asdict(meta)}
    data["vocab"] = {str(k): v for k, v in meta.vocab.items()}
    return json.dumps(data) + "\n"


def read_meta(path: Path) -> CacheMeta:
    """The checked contents of the ``meta.json`` at ``path``."""
    raw = read_json(path, MAX_JSON_BYTES, ArtifactError)
    try:
        return _parse(raw)
    except ConfigError as exc:
        raise ArtifactError(f"{path} is not a browser cache's meta.json: {exc}; delete {path.parent} to rebuild it") from exc


def _parse(raw: Any) -> CacheMeta:
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a JSON object, found {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise ConfigError(f"format is {raw.get('format')!r}, this saekit reads format {FORMAT}")
    body = {k: v for k, v in raw.items() if k != "format"}
    if "info" in body:
        body["info"] = _info(body["info"])
    if "dims" in body:
        body["dims"] = from_dict(Dims, body["dims"], where="meta.dims")
    if "vocab" in body:
        body["vocab"] = _vocab(body["vocab"])
    return from_dict(CacheMeta, body, where="meta")


def _info(raw: Any) -> SaeInfo:
    where = "meta.info"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object, got {type(raw).__name__}")
    body = dict(raw)
    if "sample" in body:
        body["sample"] = from_dict(Sample, body["sample"], where=f"{where}.sample")
    for key in ("hparams", "metrics"):
        values = body.get(key, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{where}.{key}: expected an object, got {type(values).__name__}")
        number = key == "metrics"
        for name, value in values.items():
            if not _allowed(value, number):
                kind = "a number" if number else "a JSON scalar or a list of them"
                raise ConfigError(f"{where}.{key}[{name!r}]: expected {kind}, got {type(value).__name__}")
    return from_dict(SaeInfo, body, where=where)


def _allowed(value: Any, number: bool) -> bool:
    if number:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _SCALARS) or (isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value))


def _vocab(raw: Any) -> dict[int, str]:
    if not isinstance(raw, dict):
        raise ConfigError(f"meta.vocab: expected an object, got {type(raw).__name__}")
    vocab = {}
    for key, text in raw.items():
        if not (key.isascii() and key.isdigit()) or not isinstance(text, str):
            raise ConfigError(f"meta.vocab[{key[:40]!r}]: expected a token id mapped to its text")
        vocab[int(key)] = text
    return vocab
