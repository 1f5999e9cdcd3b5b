"""Least-squares helpers of the dark-matter study: affine fits, R², and train/test splits of tokens."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saekit.errors import DataError


class Split(NamedTuple):
    """Row indices of the tokens a fit is made on (train) and scored on (test)."""

    train: Tensor
    test: Tensor


class AffineMap(NamedTuple):
    """y ≈ x @ weight + bias, fitted by least squares (float64)."""

    weight: Tensor
    bias: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return (x.to(self.weight.dtype) @ self.weight + self.bias).to(x.dtype)


def split_tokens(n: int, test_fraction: float = 0.5, seed: int = 0) -> Split:
    """A seeded random split of ``n`` rows into train and test."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = int(round(n * test_fraction))
    if n_test < 2 or n - n_test < 2:
        raise DataError(f"{n} tokens are too few to split into train and test")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Split(train=order[n_test:].sort().values, test=order[:n_test].sort().values)


def fit_affine(x: Tensor, y: Tensor, ridge: float = 1e-8, *, intercept: bool = True) -> AffineMap:
    """Least-squares affine map from ``x`` [n, d] to ``y`` [n, k] (or [n]); with ``intercept=False`` a
    linear map through the origin (bias 0), as ``torch.linalg.lstsq(x, y)`` without a column of ones.

    Normal equations in float64 (centred when there is an intercept) with a ridge of ``ridge`` times
    the mean diagonal of the Gram matrix, which only matters when ``x`` is rank-deficient (e.g. a dead
    direction)."""
    if x.dim() != 2 or x.shape[0] != y.shape[0]:
        raise DataError(f"cannot regress targets of shape {tuple(y.shape)} on inputs of shape {tuple(x.shape)}")
    if x.shape[0] <= x.shape[1]:
        raise DataError(f"a linear fit on {x.shape[1]} inputs needs more than {x.shape[1]} tokens, got {x.shape[0]}")
    vector = y.dim() == 1
    X, Y = x.double(), (y[:, None] if vector else y).double()
    mx, my = (X.mean(0), Y.mean(0)) if intercept else (X.new_zeros(X.shape[1]), Y.new_zeros(Y.shape[1]))
    Xc, Yc = X - mx, Y - my
    gram = Xc.T @ Xc
    gram.diagonal().add_(ridge * float(gram.diagonal().mean().clamp_min(1e-30)))
    weight = torch.linalg.solve(gram, Xc.T @ Yc)
    bias = my - mx @ weight
    if vector:
        weight, bias = weight[:, 0], bias[0]
    return AffineMap(weight, bias)


def r2_per_dim(y: Tensor, y_pred: Tensor) -> Tensor:
    """[k] coefficient of determination of each column: 1 − Σ(y − ŷ)² / Σ(y − ȳ)²."""
    y, y_pred = y.double(), y_pred.double()
    if y.dim() == 1:
        y, y_pred = y[:, None], y_pred[:, None]
    total = (y - y.mean(0)).pow(2).sum(0)
    return 1 - (y - y_pred).pow(2).sum(0) / total.clamp_min(1e-300)


def r2_pooled(y: Tensor, y_pred: Tensor) -> float:
    """One R² over all columns together: 1 − Σ||y − ŷ||² / Σ||y − ȳ||² (columns weighted by variance)."""
    y, y_pred = y.double(), y_pred.double()
    return float(1 - (y - y_pred).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-300))


def design(*columns: Tensor) -> Tensor:
    """Stack [n] or [n, k] tensors into one [n, K] float64 input matrix."""
    return torch.cat([c.double()[:, None] if c.dim() == 1 else c.double() for c in columns], dim=1)
