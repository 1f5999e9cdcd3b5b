"""The maths of SAE-Track's analyses (papers.md §7), on tensors: how the latents of a series of SAEs,
one per training checkpoint with latent ``i`` the same feature throughout, move and form.

* Drift: the cosine of latent ``i``'s decoder direction at checkpoint ``t`` with its direction at the
  final checkpoint (and with the previous one).
* Progress measure: for latent ``i``, take its top-K activating tokens at the final checkpoint; at
  checkpoint ``t`` compare the code vectors (every latent's activation) of those tokens pairwise and
  average over the pairs of distinct tokens; subtract the same average over random tokens. A latent has
  *formed* once its top tokens share a representation that random tokens do not. The similarity is the
  cosine or the weighted Jaccard Σ min / Σ max; the same statistic on the model's activations is the
  activation-space variant.
* Trajectories: a latent's decoder directions over the checkpoints, projected on the top two principal
  axes of that trajectory.

A vector of zeros (a token on which no latent fires) has cosine and weighted Jaccard 0 with anything.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saekit.analysis.matching import unit_rows
from saekit.errors import DataError


class Drift(NamedTuple):
    to_final: Tensor
    """[checkpoints, latents]: cos(d_i(t), d_i(T))."""
    to_previous: Tensor
    """[checkpoints, latents]: cos(d_i(t), d_i(t-1)); 1 at the first checkpoint."""


def drift(decoders: Tensor) -> Drift:
    """Drift of each latent of ``decoders`` [checkpoints, latents, d] (rows are decoder directions)."""
    if decoders.ndim != 3 or decoders.shape[0] < 2:
        raise DataError(f"drift needs decoders [checkpoints >= 2, latents, d], got {tuple(decoders.shape)}")
    unit = unit_rows(decoders.double())
    to_final = (unit * unit[-1:]).sum(-1)
    to_previous = torch.cat([torch.ones_like(to_final[:1]), (unit[1:] * unit[:-1]).sum(-1)])
    return Drift(to_final.float(), to_previous.float())


class TopTokens(NamedTuple):
    index: Tensor
    """[latents, k] rows of the codes with the largest activations of each latent, largest first."""
    valid: Tensor
    """[latents, k] bool: the row's activation is above 0 (a latent that fires on fewer than k rows has
    fewer valid entries)."""


def top_tokens(codes: Tensor, k: int) -> TopTokens:
    """The ``k`` rows of ``codes`` [rows, latents] on which each latent is largest."""
    if codes.ndim != 2 or not 2 <= k <= codes.shape[0]:
        raise DataError(f"top_tokens needs codes [rows >= k, latents] and k >= 2, got {tuple(codes.shape)} and k={k}")
    values, index = codes.T.topk(k, dim=1)
    return TopTokens(index, values > 0)


def mean_pairwise_cosine(vectors: Tensor, valid: Tensor) -> Tensor:
    """[sets]: the mean cosine over ordered pairs of distinct valid vectors of each set ``vectors``
    [sets, k, d]; NaN for a set of fewer than two. Computed as (|Σu|² − Σ|u|²) / (m(m−1)) over unit rows u."""
    unit = unit_rows(vectors.double()) * valid.unsqueeze(-1)
    m = valid.sum(1).double()
    total = unit.sum(1).pow(2).sum(-1) - unit.pow(2).sum((1, 2))
    return torch.where(m >= 2, total / (m * (m - 1)).clamp_min(1), torch.nan).float()


def mean_pairwise_wjaccard(vectors: Tensor, valid: Tensor, block: int = 16) -> Tensor:
    """[sets]: the mean weighted Jaccard Σ_j min(u_j, v_j) / Σ_j max(u_j, v_j) over ordered pairs of
    distinct valid non-negative vectors of each set ``vectors`` [sets, k, d]; NaN for fewer than two."""
    if (vectors < 0).any():
        raise DataError("the weighted Jaccard similarity needs non-negative vectors (codes), got negative entries")
    out = []
    k = vectors.shape[1]
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    for start in range(0, vectors.shape[0], block):
        v = vectors[start : start + block].double()
        ok = valid[start : start + block]
        low = torch.minimum(v.unsqueeze(2), v.unsqueeze(1)).sum(-1)
        high = torch.maximum(v.unsqueeze(2), v.unsqueeze(1)).sum(-1)
        sim = torch.where(high > 0, low / high.clamp_min(1e-300), 0.0)
        pairs = ok.unsqueeze(2) & ok.unsqueeze(1) & off_diagonal
        count = pairs.sum((1, 2)).double()
        out.append(torch.where(count > 0, (sim * pairs).sum((1, 2)) / count.clamp_min(1), torch.nan))
    return torch.cat(out).float()


class Progress(NamedTuple):
    """The progress measure of every latent at one checkpoint."""

    cosine: Tensor
    """[latents]: mean pairwise cosine of the top tokens' vectors minus ``cosine_baseline``."""
    wjaccard: Tensor
    """[latents]: the same with the weighted Jaccard similarity (NaN when the vectors are not codes)."""
    cosine_baseline: float
    """Mean pairwise cosine of the random tokens' vectors."""
    wjaccard_baseline: float


def progress(vectors: Tensor, top: TopTokens, random_rows: Tensor, *, jaccard: bool = True) -> Progress:
    """The progress measure at one checkpoint: ``vectors`` [rows, d] are the checkpoint's codes (or
    activations, with ``jaccard=False``) of the rows ``top`` and ``random_rows`` index."""
    sets = vectors[top.index]
    random = vectors[random_rows].unsqueeze(0)
    everything = torch.ones(1, len(random_rows), dtype=torch.bool)
    base_cos = float(mean_pairwise_cosine(random, everything)[0])
    cos = mean_pairwise_cosine(sets, top.valid) - base_cos
    if not jaccard:
        return Progress(cos, torch.full_like(cos, torch.nan), base_cos, float("nan"))
    base_wj = float(mean_pairwise_wjaccard(random, everything)[0])
    return Progress(cos, mean_pairwise_wjaccard(sets, top.valid) - base_wj, base_cos, base_wj)


def formation(progress_curve: Tensor, fraction: float = 0.5) -> Tensor:
    """[latents]: the first checkpoint at which each latent's progress [checkpoints, latents] reaches
    ``fraction`` of its final value; -1 where the final value is not above 0 (the latent never formed)."""
    final = progress_curve[-1]
    reached = progress_curve >= fraction * final
    first = reached.int().argmax(0)
    return torch.where(final > 0, first, -1)


def token_purity(top: TopTokens, token_ids: Tensor) -> Tensor:
    """[latents]: the share of a latent's valid top tokens that are its most common token id (1: the
    latent fires on one token; small: on many); NaN for a latent with no valid top token."""
    ids = token_ids[top.index]
    out = torch.full((ids.shape[0],), torch.nan)
    for i in range(ids.shape[0]):
        chosen = ids[i][top.valid[i]]
        if chosen.numel():
            out[i] = chosen.unique(return_counts=True)[1].max().float() / chosen.numel()
    return out


def trajectory_2d(directions: Tensor) -> Tensor:
    """[checkpoints, 2]: the unit directions [checkpoints, d] of one latent projected on the top two
    principal axes of that trajectory (centred)."""
    unit = unit_rows(directions.double())
    centred = unit - unit.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2]
    if axes.shape[0] < 2:
        axes = torch.cat([axes, torch.zeros(2 - axes.shape[0], axes.shape[1], dtype=axes.dtype)])
    return (centred @ axes.T).float()


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors over the entries finite in both (NaN for fewer
    than three); ties get their mean rank."""
    keep = torch.isfinite(a.double()) & torch.isfinite(b.double())
    if int(keep.sum()) < 3:
        return float("nan")
    ra, rb = _ranks(a[keep].double()), _ranks(b[keep].double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else float("nan")


def _ranks(x: Tensor) -> Tensor:
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    for value in x.unique():
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks
