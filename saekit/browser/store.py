"""The browser's data of one SAE, stored compactly in a folder inside the SAE's folder:

    <sae>/browser-cache/
      latents.bin   one fixed-size record per latent (:mod:`saekit.browser.record`): quantised example
                    activations, example rows, histogram, neighbours, logit effects
      tokens.bin    the token sample, uint32 ids [contexts, context], shared by every latent's examples
      meta.json     fingerprint (weights hash + settings), record sizes, token strings, sample facts
      boards.bin, boards.json   an SAE of a board-game model: its board panel (:mod:`saekit.browser.board_cache`)

The folder is written atomically (:func:`saekit.atomic.replace_folder`), so a cache is either complete
or absent; a cache whose fingerprint differs from the one asked for is stale and rebuilt. The page's
script reads the same files (:mod:`saekit.browser.pages`), so the server and the static export serve
them as they are.

:class:`Browser`, the data of every page of a suite, is defined here too: it is what both the builder
(:mod:`saekit.browser.build`) and the pages' server and exporter (:mod:`saekit.browser.server`,
:mod:`saekit.browser.export`) hold.

A cache can come from elsewhere (inside a downloaded SAE's folder), so :func:`load_data` trusts
nothing in it: :func:`saekit.browser.meta.read_meta` checks the JSON, :func:`records_problem` the
binary files against it (sizes, and every example row, neighbour and histogram within range), so that
a page never indexes out of range; either failure is an ArtifactError naming the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.atomic import replace_folder
from saekit.bounded import file_problem, read_bytes
from saekit.browser.board_cache import read_boards, write_boards
from saekit.browser.boards import Boards
from saekit.browser.dynamics import Dynamics
from saekit.browser.effects import LogitEffects, Neighbours
from saekit.browser.explanations import Explanations
from saekit.browser.meta import FORMAT, CacheMeta, SaeInfo, meta_text, read_meta
from saekit.browser.record import decode, dims_of, encode, record_dtype
from saekit.browser.stats import LatentStats, Layout
from saekit.errors import ArtifactError

CACHE_DIR = "browser-cache"

RECORDS, TOKENS, META = "latents.bin", "tokens.bin", "meta.json"


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
    boards: Boards | None = None
    """An SAE of a board-game model: the boards at each latent's top positions and its best property (cached)."""
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
    records = encode(data.stats, data.neighbours, data.effects)
    tokens = data.tokens.to(torch.int64).numpy().astype("<u4")
    dims = dims_of(data.stats, data.neighbours, data.effects)
    meta = CacheMeta(
        key, data.name, data.info, data.stats.n_rows, tuple(data.layout), data.window_before, dims, len(tokens), data.vocab
    )

    def fill(tmp: Path) -> None:
        (tmp / RECORDS).write_bytes(records.tobytes())
        (tmp / TOKENS).write_bytes(tokens.tobytes())
        (tmp / META).write_text(meta_text(meta), encoding="utf-8")
        if data.boards is not None:
            write_boards(tmp, data.boards)

    return replace_folder(folder / CACHE_DIR, fill)


def cached_key(folder: Path) -> str | None:
    """The fingerprint of the cache in ``folder``, or None when there is no readable cache (rebuild it)."""
    try:
        return read_meta(folder / CACHE_DIR / META).key
    except ArtifactError:
        return None


def load_data(folder: Path) -> SaeData:
    """The cached data of the SAE in ``folder``, checked: a cache may come from elsewhere."""
    cache = folder / CACHE_DIR
    meta = read_meta(cache / META)
    records, tokens = read_store(cache, meta)
    stats, neighbours, effects = decode(records, meta.n_rows, meta.dims.logit_k > 0)
    return SaeData(
        name=meta.name, info=meta.info, stats=stats, effects=effects, neighbours=neighbours,
        tokens=torch.from_numpy(tokens.astype(np.int64)).view(meta.contexts, meta.layout[0]),
        layout=Layout(*meta.layout), vocab=meta.vocab, window_before=meta.window_before,
        boards=read_boards(cache, meta.info.d_sae, meta.n_rows),
    )  # fmt: skip


def read_store(cache: Path, meta: CacheMeta) -> tuple[np.ndarray, np.ndarray]:
    """The records and the token ids of the cache folder ``cache``, checked against ``meta``."""
    dtype = record_dtype(meta.dims)
    arrays = []
    for name, item, count in ((RECORDS, dtype, meta.info.d_sae), (TOKENS, np.dtype("<u4"), meta.contexts * meta.layout[0])):
        path, size = cache / name, count * item.itemsize
        found = path.stat().st_size if file_problem(path) is None else None
        if found is not None and found != size:
            raise ArtifactError(
                f"{path} holds {found:,} bytes, not the {count:,} records of {item.itemsize} bytes its meta.json "
                f"describes; delete {cache} to rebuild it"
            )
        raw = read_bytes(path, size, ArtifactError, "browser cache file")
        arrays.append(np.frombuffer(raw, dtype=item, count=count))
    records, tokens = arrays
    problem = records_problem(records, meta)
    if problem:
        raise ArtifactError(f"{cache / RECORDS} does not match its meta.json: {problem}; delete {cache} to rebuild it")
    return records, tokens


def records_problem(records: np.ndarray, meta: CacheMeta) -> str | None:
    """What in ``records`` a page could not show: an example row outside the sample's ``n_rows``, a
    neighbour outside the SAE, a largest activation that is not a finite number >= 0; None if nothing."""
    bounded = [(k, -1, meta.n_rows) for k in ("top_rows", "quantile_rows", "random_rows")]
    bounded.append(("neighbour_ids", 0, meta.info.d_sae))
    for name, low, high in bounded:
        values = records[name]
        if values.size and (int(values.min()) < low or int(values.max()) >= high):
            return f"{name} holds values outside {low}..{high - 1}"
    top = records["max_act"]
    if not np.isfinite(top).all() or (top < 0).any():
        return "max_act holds a value that is not a finite number >= 0"
    if ((records["top_rows"][:, 0] < 0) & (top > 0)).any():
        return "a latent with a largest activation has no top example"
    return None
