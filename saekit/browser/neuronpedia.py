"""Export the browser data in the format Neuronpedia takes for uploaded dashboards: SAEDashboard's
``NeuronpediaDashboardBatch`` JSON files, one folder per SAE:

    <out>/<sae>/batch-0.json   {"model_id", "layer", "sae_set", "features": [feature, ...]}  (BATCH latents each)

Each feature holds what the browser computed; Neuronpedia fields the browser does not compute are
written empty (``[]``) so that the schema stays whole:

    feature_index                latent id
    pos_str / pos_values         promoted tokens and their logit effect (empty without an unembedding)
    neg_str / neg_values         suppressed tokens and theirs
    frac_nonzero                 firing density on the sample
    freq_hist_data_bar_values    centres of the activation histogram's bins
    freq_hist_data_bar_heights   their counts
    n_prompts_total              contexts of the sample
    n_tokens_in_prompt           tokens per context
    dataset                      the corpus
    activations                  the top examples, then each quantile band's: {"bin_min", "bin_max",
                                 "bin_contains" (fraction of the latent's firings the group stands for),
                                 "tokens" (the window's strings), "values" (the latent's activation on
                                 each), "qualifying_token_index" (the example token in the window)}
    neuron_alignment_*, correlated_*, logits_hist_data_*, decoder_weights_dist: empty

``layer`` is the first number in the SAE's site (``layers.9.resid_post``: 9; 0 when there is none) and
``sae_set`` the SAE's name unless given. The folder is written whole by
:func:`saekit.atomic.replace_folder`, and only where there is nothing yet (absent or empty).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from saekit.atomic import replace_folder
from saekit.browser.export import check_folder_names
from saekit.browser.stats import window_positions
from saekit.browser.store import Browser, SaeData
from saekit.errors import ConfigError

BATCH = 128
"""Latents per batch file (SAEDashboard's default ``n_features_per_batch``)."""
_EMPTY = (
    "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices",
    "correlated_neurons_l1", "correlated_neurons_pearson", "correlated_features_indices", "correlated_features_l1",
    "correlated_features_pearson", "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist",
)  # fmt: skip


def export_neuronpedia(browser: Browser, out: str | os.PathLike[str], *, model_id: str | None = None, sae_set: str | None = None) -> Path:
    """Write every SAE of ``browser`` under ``out`` (see the module docstring); ``model_id``: the
    Neuronpedia model name (default: the last part of the model the sample ran through)."""
    out = check_neuronpedia_target(out)
    check_folder_names(browser)

    def fill(tmp: Path) -> None:
        for name, data in browser.saes.items():
            (tmp / name).mkdir()
            features = [neuronpedia_feature(data, i) for i in range(data.info.d_sae)]
            head = {"model_id": model_id or _model_id(data), "layer": _layer(data.info.site), "sae_set": sae_set or name}
            for k, start in enumerate(range(0, len(features), BATCH)):
                batch = {**head, "features": features[start : start + BATCH]}
                (tmp / name / f"batch-{k}.json").write_text(json.dumps(batch, allow_nan=False), encoding="utf-8")

    return replace_folder(out, fill)


def check_neuronpedia_target(out: str | os.PathLike[str]) -> Path:
    """``out`` as a Path when it is absent or an empty folder; else a ConfigError naming it."""
    out = Path(out)
    if out.is_symlink() or out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise ConfigError(f"Neuronpedia export folder {out} exists and is not an empty folder: export into a new one")
    return out


def neuronpedia_feature(d: SaeData, latent: int) -> dict[str, Any]:
    """One latent as a Neuronpedia dashboard feature."""
    s = d.stats
    max_act, fired = float(s.max_act[latent]), int(s.fire_count[latent])
    bins = s.histogram.shape[1]
    feature: dict[str, Any] = {k: [] for k in _EMPTY}
    e = d.effects
    feature.update(
        feature_index=latent,
        pos_str=[] if e is None else [d.vocab.get(int(t), "?") for t in e.promoted_ids[latent]],
        pos_values=[] if e is None else [_finite(v) for v in e.promoted[latent].tolist()],
        neg_str=[] if e is None else [d.vocab.get(int(t), "?") for t in e.suppressed_ids[latent]],
        neg_values=[] if e is None else [_finite(v) for v in e.suppressed[latent].tolist()],
        frac_nonzero=fired / max(s.n_rows, 1),
        freq_hist_data_bar_values=[max_act * (b + 0.5) / bins for b in range(bins)],
        freq_hist_data_bar_heights=s.histogram[latent].tolist(),
        n_prompts_total=d.info.sample.contexts, n_tokens_in_prompt=d.info.sample.context_size, dataset=d.info.sample.corpus,
        activations=_activations(d, latent, fired),
    )  # fmt: skip
    return feature


def _activations(d: SaeData, latent: int, fired: int) -> list[dict[str, Any]]:
    s = d.stats
    groups = [(s.top_rows[latent], s.top_values[latent], s.top_windows[latent], s.top_rows.shape[1] / max(fired, 1))]
    bands = s.quantile_rows.shape[1]
    groups += [(s.quantile_rows[latent, b], s.quantile_values[latent, b], s.quantile_windows[latent, b], 1 / bands) for b in range(bands)]
    out = []
    for rows, values, windows, share in groups:
        present = values[rows >= 0]
        if not len(present):
            continue
        low, high = float(present.min()), float(present.max())
        for row, acts in zip(rows.tolist(), windows.tolist()):
            if row >= 0:
                tokens, shown, centre = _window(d, row, acts)
                out.append({"bin_min": low, "bin_max": high, "bin_contains": min(share, 1.0), "tokens": tokens,
                            "values": shown, "qualifying_token_index": centre})  # fmt: skip
    return out


def _window(d: SaeData, row: int, acts: list[float]) -> tuple[list[str], list[float], int]:
    """The strings and activations of the tokens of an example's window that lie inside its context,
    and the index of the example's token among them."""
    after = len(acts) - d.window_before - 1
    seq, positions = window_positions(torch.tensor([row]), d.layout, d.window_before, after)
    tokens, shown, centre = [], [], 0
    for w, (p, a) in enumerate(zip(positions[0].tolist(), acts)):
        if p < 0:
            continue
        if w == d.window_before:
            centre = len(tokens)
        tokens.append(d.vocab.get(int(d.tokens[int(seq[0]), p]), "?"))
        shown.append(float(a))
    return tokens, shown, centre


def _layer(site: str) -> int:
    found = re.search(r"[0-9]+", site)
    return int(found.group()) if found else 0


def _model_id(d: SaeData) -> str:
    return Path(d.info.model).name if d.info.model else "model"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
