"""Shared SAE maths against hand-computed values or an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from saekit.sae import functional as F


def test_mse_per_token_sums_over_features() -> None:
    x = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    x_hat = torch.tensor([[0.0, 0.0], [3.0, -1.0]])
    assert torch.equal(F.mse_per_token(x, x_hat), torch.tensor([5.0, 10.0]))


def test_l0_counts_nonzero_per_token() -> None:
    codes = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, -3.0]], requires_grad=True)
    l0 = F.l0_of(codes)
    assert l0.item() == pytest.approx(1.5)
    assert not l0.requires_grad


def test_topk_codes_keeps_k_largest_through_relu() -> None:
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-2.0, -3.0, -1.0, -4.0]])
    dense = F.scatter_codes(F.topk_codes(pre, 2), 4)
    assert torch.equal(dense, torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_scatter_codes_places_values_at_indices() -> None:
    sparse = F.TopKCodes(torch.tensor([[5.0, 7.0]]), torch.tensor([[3, 0]]))
    assert torch.equal(F.scatter_codes(sparse, 4), torch.tensor([[7.0, 0.0, 0.0, 5.0]]))


# ---------------------------------------------------------------------------------------------
# JumpReLU pseudo-derivatives (paper §1): the estimator values, checked through autograd

EPS = 0.01
THETA = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
# |z − θ| < ε/2 = 0.005 at: latent 0 rows 0, 1, 2; latent 1 rows 0, 2; latent 2 row 1.
Z = torch.tensor(
    [[1.003, 1.996, 0.2], [0.998, 3.0, 0.501], [1.0049, 2.004, 0.6]],
    dtype=torch.float64,
)


def test_jumprelu_forward_and_gradients() -> None:
    z = Z.clone().requires_grad_(True)
    theta = THETA.clone().requires_grad_(True)
    out = F.jumprelu(z, theta, EPS)
    assert torch.equal(out.detach(), Z * (Z > THETA))
    upstream = torch.arange(1.0, 10.0, dtype=torch.float64).view(3, 3)
    (out * upstream).sum().backward()
    # ð/ðθ_i = Σ_n −(θ_i/ε) K((z_ni − θ_i)/ε) g_ni
    expected = torch.tensor(
        [-(1.0 / EPS) * (1 + 4 + 7), -(2.0 / EPS) * (2 + 8), -(0.5 / EPS) * 6], dtype=torch.float64
    )
    assert torch.allclose(theta.grad, expected)
    # ∂/∂z is exact: the upstream gradient where the latent fires, 0 elsewhere.
    assert torch.equal(z.grad, upstream * (Z > THETA))


def test_heaviside_step_l0_gradient() -> None:
    z = Z.clone().requires_grad_(True)
    theta = THETA.clone().requires_grad_(True)
    l0 = F.heaviside_step(z, theta, EPS).sum(-1).mean()
    assert l0.item() == pytest.approx((1 + 2 + 3) / 3)
    l0.backward()
    # ð/ðθ_i of the batch-mean L0 = −(1/ε) · #{n : |z_ni − θ_i| < ε/2} / B
    counts = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    assert torch.allclose(theta.grad, -(1.0 / EPS) * counts / 3)
    assert torch.equal(z.grad, torch.zeros_like(Z))


def test_rectangle_kernel() -> None:
    u = torch.tensor([-0.6, -0.5, -0.49, 0.0, 0.49, 0.5])
    assert torch.equal(F.rectangle(u), torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.0]))


# ---------------------------------------------------------------------------------------------
# Decoder geometry and initialisation


def test_normalize_rows_keeps_directions() -> None:
    W = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    F.normalize_rows_(W)
    assert torch.allclose(W, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))


def test_remove_parallel_grad_leaves_only_orthogonal_part() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 4, generator=g)
    F.normalize_rows_(W)
    W.requires_grad_(True)
    grad = torch.randn(6, 4, generator=g)
    W.grad = grad.clone()
    F.remove_parallel_grad_(W)
    assert torch.allclose((W.grad * W.detach()).sum(-1), torch.zeros(6), atol=1e-6)
    # What was removed is parallel to each row: (grad · w) w.
    removed = grad - W.grad
    assert torch.allclose(removed, (grad * W.detach()).sum(-1, keepdim=True) * W.detach(), atol=1e-6)


def test_remove_parallel_grad_without_grad_is_a_no_op() -> None:
    W = torch.ones(2, 2, requires_grad=True)
    F.remove_parallel_grad_(W)
    assert W.grad is None


def test_tied_init() -> None:
    W_enc, W_dec = F.tied_init(8, 32, torch.Generator().manual_seed(1))
    assert W_enc.shape == (8, 32) and W_dec.shape == (32, 8)
    assert torch.allclose(W_dec.norm(dim=-1), torch.ones(32))
    assert torch.equal(W_enc, W_dec.t())
    assert W_enc.data_ptr() != W_dec.data_ptr()
    again, _ = F.tied_init(8, 32, torch.Generator().manual_seed(1))
    assert torch.equal(W_enc, again)


# ---------------------------------------------------------------------------------------------
# Geometric median


def test_geometric_median_of_symmetric_set_is_its_centre() -> None:
    centre = torch.tensor([1.0, -2.0, 0.5])
    offsets = torch.cat([torch.eye(3), -torch.eye(3), 2 * torch.eye(3), -2 * torch.eye(3)])
    assert torch.allclose(F.geometric_median(centre + offsets), centre, atol=1e-5)


def test_geometric_median_matches_scipy_minimisation() -> None:
    rng = np.random.default_rng(0)
    # Skewed set (an outlier cluster), where mean and median differ.
    points = np.concatenate([rng.normal(size=(40, 3)), rng.normal(loc=8.0, size=(8, 3))])

    def total_distance(m: np.ndarray) -> float:
        return float(np.linalg.norm(points - m, axis=1).sum())

    reference = minimize(total_distance, points.mean(0), method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 20000}).x
    ours = F.geometric_median(torch.tensor(points, dtype=torch.float32)).double().numpy()
    assert np.allclose(ours, reference, atol=1e-3)
    assert total_distance(ours) <= total_distance(reference) + 1e-4
    assert np.linalg.norm(ours - points.mean(0)) > 0.5
