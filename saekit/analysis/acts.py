"""Activations of a model at some sites, as [tokens, d] rows, for the studies that need a model."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saekit.models.load import LoadedModel, as_module
from saekit.sources.hf import collect_activations


@torch.no_grad()
def site_rows(
    model: nn.Module | LoadedModel, tokens: Tensor, sites: list[str], *, skip_positions: int = 1, batch_size: int = 8, progress: bool = True
) -> dict[str, Tensor]:
    """site -> [contexts · (T − skip_positions), d] float32 CPU activations of ``tokens`` [contexts, T],
    context-major, positions before ``skip_positions`` (BOS) left out."""
    model = as_module(model)
    # a site named twice (two SAEs of one layer) is read once: its rows must stay aligned with the tokens
    parts: dict[str, list[Tensor]] = {site: [] for site in sites}
    for start in tqdm(range(0, tokens.shape[0], batch_size), desc="activations", disable=not progress, leave=False):
        acts = collect_activations(model, tokens[start : start + batch_size], list(parts))
        for site in parts:
            a = acts[site][:, skip_positions:]
            parts[site].append(a.reshape(-1, a.shape[-1]).float().cpu())
    return {site: torch.cat(chunks) for site, chunks in parts.items()}
