"""Shared maths of the studies: cosine matrices, one-to-one (Hungarian) matching, matched-similarity
statistics.

Matching uses ``scipy.optimize.linear_sum_assignment`` (papers.md §0, §5, §10): the permutation that
maximises the total similarity (or minimises the total cost) with each row used at most once. With
more rows than columns, the extra rows stay unmatched.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from saekit.errors import DataError


class Matching(NamedTuple):
    """A one-to-one matching between the rows of ``A`` and the rows of ``B``.

    rows:  [m] indices into A, ascending.
    cols:  [m] the matched index into B of each of ``rows``.
    score: [m] the similarity (or cost) of each matched pair.
    """

    rows: Tensor
    cols: Tensor
    score: Tensor


class SimilarityStats(NamedTuple):
    """Summary of the matched similarities of one matching.

    mean, median: of the matched similarities.
    shared_fraction: fraction of matched pairs with similarity >= threshold.
    threshold: the threshold used.
    hist_counts, hist_edges: histogram of the matched similarities on [-1, 1].
    """

    mean: float
    median: float
    shared_fraction: float
    threshold: float
    hist_counts: list[int]
    hist_edges: list[float]


def _as_2d(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise DataError(f"{name} must be a non-empty [n, d] tensor, got {shape}")
    return x.detach().to(torch.float64)


def unit_rows(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows scaled to unit norm (rows of zeros stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def cosine_matrix(A: Tensor, B: Tensor) -> Tensor:
    """[n_A, n_B] cosine similarities between the rows of ``A`` [n_A, d] and ``B`` [n_B, d] (float64)."""
    A, B = _as_2d(A, "A"), _as_2d(B, "B")
    if A.shape[1] != B.shape[1]:
        raise DataError(f"cannot compare rows of width {A.shape[1]} with rows of width {B.shape[1]}")
    return unit_rows(A) @ unit_rows(B).T


def squared_distance_matrix(A: Tensor, B: Tensor) -> Tensor:
    """[n_A, n_B] squared Euclidean distances ||A_i − B_j||² (float64, clamped at 0)."""
    A, B = _as_2d(A, "A"), _as_2d(B, "B")
    if A.shape[1] != B.shape[1]:
        raise DataError(f"cannot compare rows of width {A.shape[1]} with rows of width {B.shape[1]}")
    d = A.pow(2).sum(1, keepdim=True) + B.pow(2).sum(1) - 2 * A @ B.T
    return d.clamp_min(0)


def assign(matrix: Tensor, *, maximize: bool) -> Matching:
    """The one-to-one assignment of rows to columns with the largest (or smallest) total of ``matrix``."""
    if matrix.dim() != 2 or 0 in matrix.shape:
        raise DataError(f"assignment needs a non-empty 2-d matrix, got shape {tuple(matrix.shape)}")
    values = matrix.detach().cpu().to(torch.float64).numpy()
    if not np.isfinite(values).all():
        raise DataError("assignment matrix contains NaN or inf")
    rows, cols = linear_sum_assignment(values, maximize=maximize)
    rows_t, cols_t = torch.from_numpy(rows).long(), torch.from_numpy(cols).long()
    return Matching(rows_t, cols_t, torch.from_numpy(values[rows, cols]))


def match_cosine(A: Tensor, B: Tensor) -> Matching:
    """Hungarian matching of the rows of A and B maximising total cosine; ``score`` is the cosine."""
    return assign(cosine_matrix(A, B), maximize=True)


def match_distance(A: Tensor, B: Tensor) -> Matching:
    """Hungarian matching minimising the total squared distance; ``score`` is the squared distance."""
    return assign(squared_distance_matrix(A, B), maximize=False)


def paired_cosine(A: Tensor, B: Tensor) -> Tensor:
    """[n] cosine between row i of A and row i of B."""
    A, B = _as_2d(A, "A"), _as_2d(B, "B")
    if A.shape != B.shape:
        raise DataError(f"paired rows must have the same shape, got {tuple(A.shape)} and {tuple(B.shape)}")
    return (unit_rows(A) * unit_rows(B)).sum(-1)


def similarity_stats(similarity: Tensor, threshold: float = 0.7, bins: int = 40) -> SimilarityStats:
    """Mean, median, fraction at or above ``threshold`` and a histogram on [-1, 1] of matched similarities."""
    s = similarity.detach().cpu().to(torch.float64).flatten()
    if s.numel() == 0:
        raise DataError("no matched similarities to summarise")
    counts, edges = np.histogram(s.clamp(-1, 1).numpy(), bins=bins, range=(-1.0, 1.0))
    return SimilarityStats(
        mean=float(s.mean()),
        median=float(s.median()),
        shared_fraction=float((s >= threshold).double().mean()),
        threshold=float(threshold),
        hist_counts=[int(c) for c in counts],
        hist_edges=[float(e) for e in edges],
    )


def max_cosine(A: Tensor, B: Tensor) -> Tensor:
    """[n_A] for each row of A, the largest cosine with any row of B (not one-to-one; the MMCS terms)."""
    return cosine_matrix(A, B).max(dim=1).values
