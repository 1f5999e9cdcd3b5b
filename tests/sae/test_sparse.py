"""The sparse training paths give the dense path's loss and gradients (saekit.sae.sparse)."""

from __future__ import annotations

import copy

import pytest
import torch

from saekit.sae import build
from saekit.sae import jumprelu
from saekit.sae import sparse as S
from saekit.types import ActBatch, StepCtx

pytestmark = pytest.mark.usefixtures("one_thread")

D_IN, D_SAE, BATCH = 12, 96, 40


def rows(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g, dtype=torch.float64)


def perturbed(name: str, **kw):
    """An SAE in float64 with non-trivial biases, so that every gradient term is exercised."""
    sae = build(name, d_in=D_IN, d_sae=D_SAE, seed=0, **kw).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p_name in ("b_enc", "b_dec"):
            getattr(sae, p_name).add_(torch.randn(getattr(sae, p_name).shape, generator=g, dtype=torch.float64) * 0.1)
    return sae


def grads_of(sae, out) -> dict[str, torch.Tensor]:
    sae.zero_grad(set_to_none=True)
    out.loss.backward()
    return {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}


def assert_same(sparse_sae, dense_sae, x, ctx):
    fast = sparse_sae.loss(ActBatch(x), ctx)
    plain = dense_sae._dense_loss(x, ctx)
    torch.testing.assert_close(fast.loss, plain.loss)
    torch.testing.assert_close(fast.x_hat, plain.x_hat)
    torch.testing.assert_close(fast.codes, plain.codes)
    # The fired mask the loop's dead-latent count reads instead of scanning the dense codes.
    assert fast.fired is not None and fast.fired.dtype == torch.bool
    assert torch.equal(fast.fired, (plain.codes != 0).any(0))
    assert int(fast.fired.sum()) > 0, "vacuous: no latent fired"
    for key in plain.terms:
        torch.testing.assert_close(fast.terms[key], plain.terms[key], msg=key)
    g_fast, g_plain = grads_of(sparse_sae, fast), grads_of(dense_sae, plain)
    assert g_fast.keys() == {n for n, _ in sparse_sae.named_parameters()}, "a parameter got no gradient"
    assert g_fast.keys() == g_plain.keys()
    for name in g_plain:
        assert g_plain[name].abs().sum() > 0 or name == "threshold", f"vacuous: dense gradient of {name} is 0"
        torch.testing.assert_close(g_fast[name], g_plain[name], msg=name)
    return fast


# ---------------------------------------------------------------------------------------------
# The primitives against dense matrices


def random_pattern(seed: int, n_rows: int = 7, n_cols: int = 11, density: float = 0.3) -> S.Pattern:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_rows, n_cols, generator=g) < density
    mask[3] = False  # an empty row
    return S.pattern_from_mask(mask)


def test_pattern_from_mask_lists_the_true_entries_row_major():
    mask = torch.tensor([[0, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    p = S.pattern_from_mask(mask)
    assert p.rows.tolist() == [0, 0, 2, 2] and p.cols.tolist() == [1, 2, 0, 2]
    assert p.crow.tolist() == [0, 2, 2, 4]


def test_fired_latents_and_l0_skip_zero_values():
    mask = torch.tensor([[True, False, True, False], [False, False, True, True], [True, False, False, False]])
    pattern = S.pattern_from_mask(mask)
    values = torch.tensor([0.0, 2.0, 1.0, 0.0, 0.0])  # pairs (0,0) (0,2) (1,2) (1,3) (2,0)
    codes = S.densify(values, pattern)
    assert S.fired_latents(values, pattern).tolist() == [False, False, True, False]
    assert torch.equal(S.fired_latents(values, pattern), (codes != 0).any(0))
    assert float(S.l0_per_row(values, pattern)) == pytest.approx(2 / 3)


def test_pre_acts_equals_the_unfused_product():
    g = torch.Generator().manual_seed(3)
    x, W, b = torch.randn(7, 5, generator=g), torch.randn(5, 9, generator=g), torch.randn(9, generator=g)
    torch.testing.assert_close(S.pre_acts(x, W, b), x @ W + b)


def test_products_equal_dense_ones():
    p = random_pattern(0)
    g = torch.Generator().manual_seed(5)
    values = torch.randn(p.nnz, generator=g, dtype=torch.float64)
    dense = S.densify(values, p)
    assert dense.count_nonzero() == p.nnz
    table = torch.randn(p.n_cols, 4, generator=g, dtype=torch.float64)
    other = torch.randn(p.n_rows, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(S.rows_times(p, values, table), dense @ table)
    torch.testing.assert_close(S.cols_times(p, values, other), dense.t() @ other)
    torch.testing.assert_close(S.pair_dots(p, other, table), (other @ table.t())[p.rows, p.cols])


def test_gather_and_decode_gradients_equal_dense_autograd():
    p = random_pattern(1, n_rows=9, n_cols=13, density=0.25)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    W_enc = torch.randn(5, 13, generator=g, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(13, generator=g, dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(13, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(9, 5, generator=g, dtype=torch.float64)
    params = (x, shift, W_enc, b_enc, W_dec)

    x_in = x - shift.detach()
    with torch.no_grad():
        pre = x_in @ W_enc + b_enc
    out = S.sparse_decode(S.gather_pre(pre, x_in, shift, W_enc, b_enc, p).relu(), p, W_dec)
    sparse_grads = torch.autograd.grad((out - target).pow(2).sum(), params)

    mask = S.densify(torch.ones(p.nnz, dtype=torch.float64), p)
    dense_out = (((x - shift) @ W_enc + b_enc) * mask).relu() @ W_dec
    torch.testing.assert_close(out, dense_out)
    dense_grads = torch.autograd.grad((dense_out - target).pow(2).sum(), params)
    for name, a, b in zip(("x", "shift", "W_enc", "b_enc", "W_dec"), sparse_grads, dense_grads):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, msg=name)


# ---------------------------------------------------------------------------------------------
# Architectures: the sparse loss against the dense one


@pytest.mark.parametrize("dead", [None, "some", "all"])
def test_topk_sparse_loss_equals_dense(dead):
    sae = perturbed("topk", k=5, aux_k=7)
    mask = {None: None, "some": torch.arange(D_SAE) % 3 == 0, "all": torch.ones(D_SAE, dtype=torch.bool)}[dead]
    out = assert_same(sae, copy.deepcopy(sae), rows(BATCH, 0), StepCtx(dead_mask=mask))
    assert (out.terms["aux_k"] > 0) == (dead is not None)
    assert torch.equal((out.codes != 0).sum(-1), torch.full((BATCH,), 5))


@pytest.mark.parametrize("dead", [None, "some"])
def test_batch_topk_sparse_loss_equals_dense(dead):
    sae = perturbed("batch_topk", k=5, aux_k=7)
    mask = None if dead is None else torch.arange(D_SAE) % 4 == 1
    out = assert_same(sae, copy.deepcopy(sae), rows(BATCH, 1), StepCtx(dead_mask=mask))
    assert out.codes.count_nonzero() == BATCH * 5
    assert (out.codes != 0).sum(-1).unique().numel() > 1, "batch top-k should give tokens different counts"


def test_jumprelu_sparse_loss_equals_dense_including_threshold_gradients():
    sae = perturbed("jumprelu", bandwidth=0.05)
    x = rows(4 * BATCH, 2)
    with torch.no_grad():
        z = x @ sae.W_enc + sae.b_enc
        # θ per latent at a quantile that keeps ~1% active, some pre-activations sitting just under θ
        sae.threshold.copy_(z.quantile(0.99, dim=0))
        z_near = sae.threshold - 0.01
        x_near = torch.linalg.lstsq(sae.W_enc.t()[:D_IN], (z_near - sae.b_enc)[:D_IN]).solution
    x = torch.cat([x, x_near[None]])
    ctx = StepCtx(sparsity_scale=0.7)
    with torch.no_grad():
        z = x @ sae.W_enc + sae.b_enc
        near = ((z - sae.threshold).abs() < 0.025) & (z <= sae.threshold)
    assert near.any(), "no pre-activation just below θ: the threshold gradient test would be weak"
    touched = ((z > sae.threshold) | near).sum()
    assert touched < jumprelu.SPARSE_MAX_DENSITY * z.numel(), "this case should take the sparse path"
    out = assert_same(sae, copy.deepcopy(sae), x, ctx)
    assert not out.codes.requires_grad  # the sparse path returns detached codes


def test_jumprelu_dense_regime_takes_the_dense_path():
    sae = perturbed("jumprelu")  # θ₀ = 0.001: about half the latents active
    x = rows(BATCH, 3)
    out = sae.loss(ActBatch(x), StepCtx())
    ref = sae._dense_loss(x, StepCtx())
    assert out.codes.count_nonzero() > 0.3 * out.codes.numel()
    assert out.codes.requires_grad  # the dense path's codes carry autograd
    assert torch.equal(out.loss, ref.loss)
