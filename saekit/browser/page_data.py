"""The files the latent page reads, per SAE: the same bytes for the server (from memory) and the static
export (written beside the page):

    <sae>/page.json      the SAE's facts, the record layout, token strings, explanations, extra panels
    <sae>/latents.bin    one fixed-size record per latent (:mod:`saekit.browser.record`)
    <sae>/tokens.bin     the token sample, uint32 ids
    <sae>/dynamics.bin   with training dynamics: one record per latent of its curves (an extra panel)
    <sae>/boards.bin     an SAE of a board-game model: one record per latent of its boards (an extra panel)

``page.json`` is JSON served as ``application/json``; the page puts its strings into text nodes only
(:mod:`saekit.browser.latent_script`), so they need no HTML escaping here.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from saekit.browser.board_cache import BOARDS
from saekit.browser.boards import panel_entry
from saekit.browser.dynamics import Dynamics
from saekit.browser.explained import scores_text
from saekit.browser.meta import Dims
from saekit.browser.record import dims_of, encode, field_table, record_dtype
from saekit.browser.store import RECORDS, TOKENS, SaeData

PAGE_DATA, DYNAMICS = "page.json", "dynamics.bin"
FILES = (PAGE_DATA, RECORDS, TOKENS, DYNAMICS, BOARDS)
"""Every store file an SAE may have beside its latent page."""


def store_files(title: str, d: SaeData) -> dict[str, bytes]:
    """File name -> bytes of every file the latent page of ``d`` reads."""
    dims = dims_of(d.stats, d.neighbours, d.effects)
    files = {RECORDS: encode(d.stats, d.neighbours, d.effects).tobytes(), TOKENS: d.tokens.numpy().astype("<u4").tobytes()}
    extras = []
    if d.boards is not None:
        files[BOARDS] = d.boards.records.tobytes()
        extras.append(panel_entry(d.boards, BOARDS))
    if d.dynamics is not None:
        files[DYNAMICS], extra = _dynamics(d.dynamics)
        extras.append(extra)
    files[PAGE_DATA] = json.dumps(_page_json(title, d, dims, extras), allow_nan=False).encode()
    return files


def _page_json(title: str, d: SaeData, dims: Dims, extras: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "title": title, "name": d.name, "d_sae": d.info.d_sae, "n_rows": d.stats.n_rows, "layout": list(d.layout),
        "window_before": d.window_before, "window": dims.window, "dims": vars(dims), "record_size": record_dtype(dims).itemsize,
        "fields": field_table(record_dtype(dims)), "vocab": {str(k): v for k, v in d.vocab.items()},
        "explanations": _explanations(d), "extras": extras,
    }  # fmt: skip


def _explanations(d: SaeData) -> dict[str, Any] | None:
    e = d.explanations
    if e is None:
        return None
    latents = {
        str(i): {"explanation": x.explanation, "detection": scores_text(x.detection), "fuzzing": scores_text(x.fuzzing)}
        for i, x in e.latents.items()
    }  # fmt: skip
    failed = {str(i): why for i, why in e.failed.items()}
    return {"source": f"by {e.model} with prompts {e.prompts_version}", "latents": latents, "failed": failed}


def _dynamics(t: Dynamics) -> tuple[bytes, dict[str, Any]]:
    """The dynamics panel's records (float32 curves over the checkpoints, NaN where not measured) and
    its entry of ``extras``."""
    n = len(t.checkpoints)
    dtype = np.dtype([
        ("drift_to_final", "<f4", (n,)), ("progress_cosine", "<f4", (n,)), ("progress_wjaccard", "<f4", (n,)),
        ("formation", "<i4", ()), ("token_purity", "<f4", ()), ("alive", "u1", ()),
    ])  # fmt: skip
    records = np.zeros(t.n_latents, dtype=dtype)
    for name in ("drift_to_final", "progress_cosine", "progress_wjaccard"):
        records[name] = getattr(t, name).T.numpy()
    records["formation"], records["token_purity"] = t.formation.numpy(), t.token_purity.numpy()
    records["alive"] = t.alive.numpy()
    extra = {
        "kind": "dynamics", "file": DYNAMICS, "record_size": dtype.itemsize, "fields": field_table(dtype),
        "labels": t.checkpoints, "name": t.name, "site": t.site, "formed_fraction": _finite(t.formed_fraction),
    }  # fmt: skip
    return records.tobytes(), extra


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
