"""Binary logistic regression with an L2 penalty, fitted by truncated Newton's method in float64.

The objective is scikit-learn's ``LogisticRegression(penalty="l2", C=C)`` (what SAEBench's sparse
probing fits): ``Σ_i log(1 + exp(-s_i (x_i·w + b))) + ‖w‖² / (2C)``, the intercept unpenalised. It is
strictly convex in ``w`` for finite C, so Newton's method with a backtracking line search converges to
the one minimum. Each Newton step is solved by conjugate gradients with Hessian-vector products
(``Xᵀ(p(1−p) ⊙ Xv)``, never the (d+1)² Hessian), to a tolerance that tightens as the gradient shrinks
(liblinear's trust-region Newton does the same): a raw-activation probe on d_model columns costs
matrix-vector products, not d_model³ solves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.errors import ConfigError, DataError

INTERCEPT_RIDGE = 1e-9
"""Added to the intercept's curvature so that the Newton system stays solvable on separable data."""


class LogisticProbe(NamedTuple):
    """``P(y = 1 | x) = sigmoid(x @ weight + bias)``; ``converged`` is False when ``max_iter`` ran out."""

    weight: Tensor
    bias: float
    iterations: int
    converged: bool

    def logits(self, x: Tensor) -> Tensor:
        return x.to(torch.float64) @ self.weight + self.bias

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        """Fraction of rows whose predicted class (logit > 0) is their label."""
        return ((self.logits(x) > 0).long() == y.long()).double().mean().item()


def _objective(z: Tensor, y: Tensor, w: Tensor, l2: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(z, y, reduction="sum") + 0.5 * l2 * (w @ w)


def fit_logistic(x: Tensor, y: Tensor, *, C: float = 1.0, max_iter: int = 100, tol: float = 1e-8) -> LogisticProbe:
    """Fit on rows ``x [n, d]`` and labels ``y [n]`` in {0, 1}; ``C = inf`` fits without a penalty."""
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise DataError(f"logistic regression needs rows [n, d] and labels [n], got {tuple(x.shape)} and {tuple(y.shape)}")
    if not C > 0:
        raise ConfigError(f"the inverse penalty C must be positive, got {C}")
    if not torch.isfinite(x).all():
        raise DataError("logistic regression rows hold NaN or infinite values")
    labels = y.to(torch.float64)
    if ((labels != 0) & (labels != 1)).any():
        raise DataError("logistic regression labels must be 0 or 1")
    n, d = x.shape
    xb = torch.cat([x.to(torch.float64), torch.ones(n, 1, dtype=torch.float64)], dim=1)
    l2 = 0.0 if math.isinf(C) else 1.0 / C
    penalty = torch.full((d + 1,), l2, dtype=torch.float64)
    penalty[d] = INTERCEPT_RIDGE
    theta = torch.zeros(d + 1, dtype=torch.float64)
    z = xb @ theta
    loss = _objective(z, labels, theta[:d], l2)
    for it in range(1, max_iter + 1):
        p = torch.sigmoid(z)
        grad = xb.T @ (p - labels)
        grad[:d] += l2 * theta[:d]
        if grad.abs().max().item() <= tol * max(1.0, n):
            return LogisticProbe(theta[:d], theta[d].item(), it - 1, True)
        gnorm = grad.norm().item()
        weights = p * (1 - p)
        diagonal = (xb * xb).T @ weights + penalty
        step = _conjugate_gradients(_hessian_product(xb, weights, penalty), diagonal, grad, min(0.5, math.sqrt(gnorm)) * gnorm, d + 1)
        moved = _line_search(xb, labels, theta, step, grad, loss, l2, d)
        if moved is None:  # no decrease along the Newton direction: the minimum to working precision
            return LogisticProbe(theta[:d], theta[d].item(), it, True)
        theta, z, loss = moved
    return LogisticProbe(theta[:d], theta[d].item(), max_iter, False)


def _hessian_product(xb: Tensor, weights: Tensor, penalty: Tensor) -> Callable[[Tensor], Tensor]:
    """v -> (Xᵀ diag(weights) X + diag(penalty)) v, without forming the matrix."""
    return lambda v: xb.T @ (weights * (xb @ v)) + penalty * v


def _conjugate_gradients(hv: Callable[[Tensor], Tensor], diagonal: Tensor, g: Tensor, tol: float, max_iter: int) -> Tensor:
    """An approximate solution of ``H s = g`` (H symmetric positive definite, given by ``hv``; its
    ``diagonal`` the preconditioner), stopped once the residual's norm is at most ``tol`` or after
    ``max_iter`` steps."""
    inverse = 1.0 / diagonal.clamp_min(1e-12)
    s, r = torch.zeros_like(g), g.clone()
    z = inverse * r
    direction, rz = z.clone(), (r @ z).item()
    for _ in range(max_iter):
        if r.norm().item() <= tol:
            break
        hd = hv(direction)
        curvature = (direction @ hd).item()
        if curvature <= 0:
            break
        alpha = rz / curvature
        s += alpha * direction
        r -= alpha * hd
        z = inverse * r
        rz, previous = (r @ z).item(), rz
        direction = z + (rz / previous) * direction
    return s if s.abs().sum() > 0 else inverse * g


def _line_search(
    xb: Tensor, y: Tensor, theta: Tensor, step: Tensor, grad: Tensor, loss: Tensor, l2: float, d: int
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Backtrack along the Newton direction until the objective decreases enough (Armijo's rule); None
    when no step length does."""
    slope = -(grad @ step).item()
    t = 1.0
    for _ in range(40):
        candidate = theta - t * step
        z = xb @ candidate
        new = _objective(z, y, candidate[:d], l2)
        if new.item() <= loss.item() + 1e-4 * t * slope:
            return candidate, z, new
        t *= 0.5
    return None
