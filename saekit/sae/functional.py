"""Pure maths shared by the architectures: selection rules, the JumpReLU estimator, decoder
normalisation, initialisation, the auxiliary loss on dead latents and the geometric median."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


# ---------------------------------------------------------------------------------------------
# Reconstruction and sparsity measures used inside losses


def mse_per_token(x: Tensor, x_hat: Tensor) -> Tensor:
    """Squared error summed over the activation dimension: one value per token."""
    return (x_hat - x).pow(2).sum(-1)


def l0_of(codes: Tensor) -> Tensor:
    """Mean number of non-zero latents per token, detached."""
    return (codes != 0).sum(-1).float().mean().detach()


# ---------------------------------------------------------------------------------------------
# Selection rules


class TopKCodes(NamedTuple):
    """Sparse form of per-token TopK codes: ``values`` and ``indices`` are [..., k]."""

    values: Tensor
    indices: Tensor


def topk_codes(pre: Tensor, k: int) -> TopKCodes:
    """Keep the k largest pre-activations of each row, through a ReLU (ties broken by torch.topk)."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return TopKCodes(values.relu(), indices)


def scatter_codes(sparse: TopKCodes, d_sae: int) -> Tensor:
    """Dense [..., d_sae] codes from (values, indices)."""
    dense = sparse.values.new_zeros(*sparse.values.shape[:-1], d_sae)
    return dense.scatter(-1, sparse.indices, sparse.values)


def batch_topk_mask(acts: Tensor, k: int) -> Tensor:
    """Mask of the ``batch * k`` largest entries of a [batch, d_sae] matrix, over the whole batch."""
    flat = acts.flatten()
    n_keep = min(flat.numel(), acts.shape[0] * k)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(n_keep, sorted=False).indices] = True
    return mask.view_as(acts)


# ---------------------------------------------------------------------------------------------
# JumpReLU with straight-through pseudo-derivatives for the threshold (Rajamanoharan et al. 2024)


def rectangle(u: Tensor) -> Tensor:
    """Rectangle kernel K(u) = 1[|u| < 1/2]."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad_out * (z > threshold).to(z.dtype)
        # ð/ðθ JumpReLU_θ(z) = -(θ/ε) K((z-θ)/ε)
        grad_theta = -(threshold / eps) * rectangle((z - threshold) / eps) * grad_out
        return grad_z, _sum_to(grad_theta, threshold.shape), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        # ∂/∂z H(z-θ) = 0 ; ð/ðθ H(z-θ) = -(1/ε) K((z-θ)/ε)
        grad_theta = -(1.0 / eps) * rectangle((z - threshold) / eps) * grad_out
        return torch.zeros_like(z), _sum_to(grad_theta, threshold.shape), None


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    return grad.reshape(-1, *shape).sum(0) if grad.shape != shape else grad


def jumprelu(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """z · H(z − θ), with the rectangle-kernel pseudo-derivative for θ and the exact one for z."""
    return _JumpReLU.apply(z, threshold, bandwidth)


def heaviside_step(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """H(z − θ), giving no gradient to z and the rectangle-kernel pseudo-derivative to θ."""
    return _Step.apply(z, threshold, bandwidth)


# ---------------------------------------------------------------------------------------------
# Decoder geometry and initialisation


@torch.no_grad()
def normalize_rows_(W_dec: Tensor, eps: float = 1e-8) -> None:
    """Scale every decoder row (feature direction) to unit norm, in place."""
    W_dec.div_(W_dec.norm(dim=-1, keepdim=True).clamp_min(eps))


@torch.no_grad()
def remove_parallel_grad_(W_dec: Tensor) -> None:
    """Remove from W_dec.grad the component of each row parallel to that row (rows assumed unit norm),
    so that the optimiser step moves along the sphere and renormalising after it loses little."""
    if W_dec.grad is None:
        return
    rows = W_dec / W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    W_dec.grad.sub_((W_dec.grad * rows).sum(-1, keepdim=True) * rows)


def tied_init(d_in: int, d_sae: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Decoder rows drawn Kaiming-uniform and scaled to unit norm; encoder = decoderᵀ.

    Returns ``(W_enc [d_in, d_sae], W_dec [d_sae, d_in])``.
    """
    bound = math.sqrt(6.0 / d_in)  # Kaiming uniform with gain sqrt(2) on fan_in = d_in
    W_dec = torch.empty(d_sae, d_in).uniform_(-bound, bound, generator=generator)
    normalize_rows_(W_dec)
    return W_dec.t().clone(), W_dec


# ---------------------------------------------------------------------------------------------
# Auxiliary loss on dead latents (Gao et al. 2024)


def aux_k_loss(
    pre_acts: Tensor,
    residual: Tensor,
    dead_mask: Tensor | None,
    k_aux: int,
    W_dec: Tensor,
) -> Tensor:
    """Reconstruct the main residual with the top-``k_aux`` dead latents, normalised by its variance.

    pre_acts: [batch, d_sae] encoder pre-activations; residual: [batch, d_in] ``x - x_hat`` (detached
    by the caller). Returns 0 when no latent is dead. The number of latents used is
    min(k_aux, #dead), as in sparsify, so a few dead latents are not asked to explain everything.
    """
    if dead_mask is None or not bool(dead_mask.any()):
        return pre_acts.new_zeros(())
    k = min(k_aux, int(dead_mask.sum()))
    masked = pre_acts.masked_fill(~dead_mask, float("-inf"))
    values, indices = masked.topk(k, dim=-1, sorted=False)
    codes = torch.zeros_like(pre_acts).scatter(-1, indices, values.relu())
    residual_hat = codes @ W_dec
    variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
    return (residual_hat - residual).pow(2).sum() / variance


# ---------------------------------------------------------------------------------------------
# Geometric median (Weiszfeld), the b_dec initialisation of the TopK family


@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """Point minimising the sum of Euclidean distances to the rows of ``points`` [n, d]."""
    points = points.float()
    median = points.mean(0)
    for _ in range(max_iter):
        dist = (points - median).norm(dim=-1).clamp_min(1e-8)
        weights = 1.0 / dist
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - median).norm() <= tol * median.norm().clamp_min(1e-8):
            return new
        median = new
    return median
