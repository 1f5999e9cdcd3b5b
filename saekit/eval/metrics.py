"""Reconstruction and sparsity metrics as pure functions of tensors (papers.md §0).

Shapes: ``x`` and ``x_hat`` are [n, d] (one row per token), ``codes`` is [n, d_sae]. Scalars come back
as Python floats; a ratio whose denominator is zero is ``nan`` rather than an exception, so a degenerate
evaluation set shows up in the results instead of stopping a sweep. Sums are taken in float64 so that
the one-shot values here and the streamed ones of :func:`saekit.eval.evaluate.evaluate` agree.
"""

from __future__ import annotations

import torch
from torch import Tensor


def safe_ratio(num: Tensor | float, den: Tensor | float) -> float:
    """num / den as a float, ``nan`` when den is 0."""
    num, den = float(num), float(den)
    return num / den if den != 0 else float("nan")


def _rows(x: Tensor) -> Tensor:
    # MPS has no float64; everywhere else the extra precision is what makes streamed sums agree.
    return x.detach().to(torch.float32 if x.device.type == "mps" else torch.float64)


# ---------------------------------------------------------------------------------------------------
# Reconstruction


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained: Σ_n ||x_n − x̂_n||² / Σ_n ||x_n − x̄||², x̄ the mean token.

    The Gemma Scope / EleutherAI / SAE-Dark-Matter definition (explained variance = 1 − FVU). It is
    not dictionary_learning's variant, which centres the residual too and sums per-dimension
    variances: 1 − Σ_j Var(x − x̂)_j / Σ_j Var(x)_j. Predicting x̄ for every token gives exactly 1.
    """
    x, x_hat = _rows(x), _rows(x_hat)
    return safe_ratio((x - x_hat).pow(2).sum(), (x - x.mean(0)).pow(2).sum())


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean squared error over tokens and dimensions."""
    return float((_rows(x) - _rows(x_hat)).pow(2).mean())


def nmse(x: Tensor, x_hat: Tensor) -> float:
    """Normalised MSE Σ_n ||x_n − x̂_n||² / Σ_n ||x_n||² (uncentred, unlike FVU)."""
    x, x_hat = _rows(x), _rows(x_hat)
    return safe_ratio((x - x_hat).pow(2).sum(), x.pow(2).sum())


def per_token_cosine(x: Tensor, x_hat: Tensor, eps: float = 1e-12) -> Tensor:
    """[n] cosine of each token with its reconstruction; 0 where either vector is zero."""
    x, x_hat = _rows(x), _rows(x_hat)
    return (x * x_hat).sum(-1) / (x.norm(dim=-1) * x_hat.norm(dim=-1)).clamp_min(eps)


def cosine(x: Tensor, x_hat: Tensor) -> float:
    """Mean over tokens of cos(x_n, x̂_n)."""
    return float(per_token_cosine(x, x_hat).mean())


def per_token_l2_ratio(x: Tensor, x_hat: Tensor) -> Tensor:
    """[m] ||x̂_n|| / ||x_n|| for the m tokens with ||x_n|| > 0 (a zero token has no meaningful ratio)."""
    x, x_hat = _rows(x), _rows(x_hat)
    norm = x.norm(dim=-1)
    keep = norm > 0
    return x_hat.norm(dim=-1)[keep] / norm[keep]


def l2_ratio(x: Tensor, x_hat: Tensor) -> float:
    """Mean over (non-zero) tokens of ||x̂_n|| / ||x_n||, as in dictionary_learning; < 1 means shrinkage."""
    ratios = per_token_l2_ratio(x, x_hat)
    return float(ratios.mean()) if ratios.numel() else float("nan")


def relative_reconstruction_bias(x: Tensor, x_hat: Tensor) -> float:
    """E||x̂||² / E[x · x̂] (Gated SAE paper): the γ minimising E||x̂/γ − x||².

    1 means unbiased; x̂ = s·x gives s, so values below 1 measure shrinkage.
    """
    x, x_hat = _rows(x), _rows(x_hat)
    return safe_ratio(x_hat.pow(2).sum(), (x * x_hat).sum())


# ---------------------------------------------------------------------------------------------------
# Sparsity


def l0(codes: Tensor) -> float:
    """Mean over tokens of the number of non-zero latents."""
    return float((codes != 0).sum(-1).float().mean())


def firing_frequency(codes: Tensor) -> Tensor:
    """[d_sae] fraction of tokens on which each latent is non-zero."""
    return (codes != 0).float().mean(0)


def dead_fraction(codes: Tensor) -> float:
    """Fraction of latents that are zero on every token."""
    return float((~(codes != 0).any(0)).float().mean())


def dense_fraction(codes: Tensor, threshold: float = 0.1) -> float:
    """Fraction of latents that fire on more than ``threshold`` of the tokens."""
    return float((firing_frequency(codes) > threshold).float().mean())


def density_histogram(frequency: Tensor, bins_per_decade: int = 4, lowest_decade: int = -7) -> dict[str, object]:
    """Histogram of latents by log10 firing frequency, the view of the Towards Monosemanticity and
    Gemma Scope papers: ``counts[i]`` latents have ``log10_edges[i] <= log10(f) < log10_edges[i+1]``
    (the last bin includes f = 1; frequencies below the lowest edge go to the first bin), and
    ``dead`` latents never fired and are not in the counts."""
    frequency = frequency.detach().double().cpu()
    alive = frequency[frequency > 0]
    n_bins = -lowest_decade * bins_per_decade
    edges = torch.linspace(float(lowest_decade), 0.0, n_bins + 1, dtype=torch.float64)
    index = ((alive.log10() - lowest_decade) * bins_per_decade).floor().long().clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    return {"log10_edges": edges.tolist(), "counts": counts.tolist(), "dead": int((frequency == 0).sum())}
