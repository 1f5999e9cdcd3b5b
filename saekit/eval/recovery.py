"""How well a learned dictionary recovers known feature directions (synthetic data, papers.md §0, §C4).

MMCS (mean max cosine similarity, Sharkey et al. 2022) = (1/|T|) Σ_{t ∈ T} max_{l ∈ L} cos(t, l), with T
the true directions and L the learned ones. The cosine is signed: an SAE latent is a non-negative
coefficient on its decoder row, so a row pointing against a true feature does not represent it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saekit.errors import DataError
from saekit.sae.base import SAE
from saekit.types import Recovery

_CHUNK = 4096  # true features per block of the cosine matrix, to bound memory for large dictionaries


def feature_recovery(learned: nn.Module | Tensor, true_features: Tensor, threshold: float = 0.9) -> Recovery:
    """Compare ``learned`` directions (an SAE, whose ``W_dec`` rows are used, or an [n_learned, d]
    tensor) with ``true_features`` [n_true, d]; rows need not be unit norm.

    ``recovered`` is the fraction of true features whose best cosine is >= ``threshold``.
    """
    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold is a cosine and must be in [-1, 1], got {threshold}")
    learned_rows = _directions(learned, "learned")
    true_rows = _directions(true_features, "true_features").to(learned_rows.device)
    if learned_rows.shape[1] != true_rows.shape[1]:
        raise DataError(
            f"learned directions have width {learned_rows.shape[1]} but true features have width {true_rows.shape[1]}"
        )
    best = torch.cat([(block @ learned_rows.T).max(dim=1).values for block in true_rows.split(_CHUNK)]).cpu()
    return Recovery(
        mmcs=float(best.mean()),
        recovered=float((best >= threshold).float().mean()),
        threshold=threshold,
        best_cos=best,
    )


def _directions(value: nn.Module | Tensor, name: str) -> Tensor:
    """Row-normalised float32 copy of a direction matrix (zero rows stay zero: cosine 0 with everything)."""
    if isinstance(value, Tensor):
        rows = value
    elif isinstance(value, SAE):
        rows = value.W_dec
    else:
        raise TypeError(f"{name}: expected an SAE or a [n, d] tensor, got {type(value).__name__}")
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise DataError(f"{name}: expected a non-empty [n, d] matrix of directions, got shape {tuple(rows.shape)}")
    return nn.functional.normalize(rows.detach().float(), dim=1)
