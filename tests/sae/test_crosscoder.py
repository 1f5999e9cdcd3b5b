"""The crosscoder's objective against hand computation: reconstruction of every site, and the L1
penalty weighted by the sum of the per-site decoder norms."""

from __future__ import annotations

import torch

from saekit.sae import build
from saekit.sae import functional as F
from saekit.types import ActBatch, StepCtx


def _crosscoder(sites: list[str] | None, d: int = 4, d_sae: int = 6):
    sae = build("crosscoder", d_in=2 * d, d_sae=d_sae, l1_coef=0.3, seed=1)
    if sites is not None:
        sae.metadata["sites"] = sites
    with torch.no_grad():
        sae.b_enc.copy_(torch.linspace(-0.1, 0.1, d_sae))
        sae.b_dec.copy_(torch.linspace(0.2, -0.2, 2 * d))
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 2 * d))  # the two sites' blocks of every row differ in norm
    return sae


def test_loss_is_the_papers_objective_by_hand() -> None:
    torch.manual_seed(0)
    sae = _crosscoder(["a", "b"])
    x = torch.randn(5, 8)
    out = sae.loss(ActBatch(x), StepCtx(step=0, total_steps=1, sparsity_scale=0.5))
    W_enc, W_dec, b_enc, b_dec = (t.detach() for t in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec))
    f = torch.zeros(5, 6)
    for t in range(5):
        for i in range(6):
            f[t, i] = max(0.0, float(sum(x[t, j] * W_enc[j, i] for j in range(8)) + b_enc[i]))  # no b_dec subtracted
    x_hat = f @ W_dec + b_dec
    mse = ((x - x_hat) ** 2).sum(-1).mean()
    norm_sum = torch.tensor([W_dec[i, :4].norm() + W_dec[i, 4:].norm() for i in range(6)])
    l1 = (f * norm_sum).sum(-1).mean()
    torch.testing.assert_close(out.x_hat, x_hat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, mse + 0.5 * 0.3 * l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.terms["l1"], l1, rtol=1e-5, atol=1e-6)


def test_the_penalty_is_an_l1_over_sites_not_the_rows_l2() -> None:
    """Over two sites the weight of a latent is ||d_a|| + ||d_b||; read as an SAE of one site it would be
    the norm of the whole row: the two differ, so the penalty tells them apart."""
    torch.manual_seed(0)
    x = torch.randn(7, 8)
    ctx = StepCtx(step=0, total_steps=1)
    two, one = _crosscoder(["a", "b"]), _crosscoder(None)
    W = two.W_dec.detach()
    codes = two.encode(x).detach()
    assert torch.allclose(two.loss(ActBatch(x), ctx).terms["l1"], (codes * F.site_norms(W, 2).sum(-1)).sum(-1).mean())
    assert torch.allclose(one.loss(ActBatch(x), ctx).terms["l1"], (codes * W.norm(dim=-1)).sum(-1).mean())
    assert not torch.allclose(F.site_norms(W, 2).sum(-1), W.norm(dim=-1))


def test_site_norms_splits_each_row_into_its_sites_blocks() -> None:
    W = torch.tensor([[3.0, 4.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0, 0.0, 5.0]])
    torch.testing.assert_close(F.site_norms(W, 2), torch.tensor([[5.0, 1.0], [2.0, 5.0]]))
    torch.testing.assert_close(F.site_norms(W, 3), torch.tensor([[5.0, 1.0, 0.0], [0.0, 2.0, 5.0]]))
