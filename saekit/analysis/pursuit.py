"""Sparse approximation of vectors over a dictionary's rows: the two pursuits the analyses use.

* :func:`signed_pursuit`: orthogonal matching pursuit of one vector (steering-vector decomposition).
* :func:`gradient_pursuit`: gradient pursuit of many rows at once, each with its own budget of atoms
  (dark matter: how much of an SAE's error a better inference over its own decoder removes).

Coefficients are signed: a pursuit is an inference-time optimum, not an SAE code.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saekit.analysis.matching import unit_rows
from saekit.errors import DataError


class Pursuit(NamedTuple):
    """Orthogonal matching pursuit of a vector over unit dictionary rows.

    indices: [k] selected rows, in order; coefs: [k] signed coefficients of the final least-squares fit
    (on unit rows); explained: [k] fraction of ||v||² explained after 1..k atoms.
    """

    indices: Tensor
    coefs: Tensor
    explained: Tensor


def signed_pursuit(vector: Tensor, dictionary: Tensor, n_atoms: int) -> Pursuit:
    """Orthogonal matching pursuit: add the unit row most correlated (in absolute value) with the
    residual, refit all coefficients by least squares, repeat ``n_atoms`` times."""
    v = vector.detach().double().cpu()
    D = unit_rows(dictionary.detach().double().cpu())
    total = float(v.pow(2).sum())
    if total == 0:
        raise DataError("cannot decompose a zero vector")
    residual, chosen, explained = v.clone(), [], []
    coefs = torch.zeros(0, dtype=torch.float64)
    for _ in range(min(n_atoms, D.shape[0])):
        scores = (D @ residual).abs()
        if chosen:
            scores[chosen] = -1
        chosen.append(int(scores.argmax()))
        basis = D[chosen]
        coefs = torch.linalg.lstsq(basis.T, v[:, None]).solution[:, 0]
        residual = v - coefs @ basis
        explained.append(1 - float(residual.pow(2).sum()) / total)
    return Pursuit(torch.tensor(chosen), coefs, torch.tensor(explained))



class PursuitCodes(NamedTuple):
    """Codes found by :func:`gradient_pursuit` and the reconstruction they give."""

    codes: Tensor
    x_hat: Tensor


@torch.no_grad()
def gradient_pursuit(x: Tensor, W_dec: Tensor, b_dec: Tensor, n_atoms: Tensor) -> PursuitCodes:
    """Gradient pursuit (Blumensath & Davies 2008) of ``x − b_dec`` over the rows of ``W_dec``.

    Token n gets at most ``n_atoms[n]`` distinct atoms: each iteration adds the atom most correlated
    with the residual to the support and takes an exact line-search step along the gradient restricted
    to the support. Coefficients are signed (pursuit is an inference-time optimum, not an SAE code)."""
    x = x.double()
    D = W_dec.detach().double()
    norms = D.norm(dim=-1).clamp_min(1e-12)
    D_unit = D / norms[:, None]
    residual = x - b_dec.detach().double()
    coef = torch.zeros(x.shape[0], D.shape[0], dtype=torch.float64, device=x.device)
    support = torch.zeros_like(coef, dtype=torch.bool)
    n_atoms = n_atoms.to(x.device)
    for it in range(int(n_atoms.max().item()) if n_atoms.numel() else 0):
        active = n_atoms > it
        corr = residual @ D_unit.T
        pick = corr.abs().argmax(dim=-1)
        support[active, pick[active]] = True
        grad = torch.where(support, corr, 0.0) * active[:, None]
        step_dir = grad @ D_unit
        denom = step_dir.pow(2).sum(-1)
        alpha = torch.where(denom > 0, grad.pow(2).sum(-1) / denom.clamp_min(1e-300), 0.0)
        coef += alpha[:, None] * grad
        residual -= alpha[:, None] * step_dir
    codes = coef / norms  # back to the scale of W_dec's own rows
    return PursuitCodes(codes, x - residual)
