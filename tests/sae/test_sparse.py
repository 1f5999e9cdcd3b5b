"""The sparse training paths give the dense path's loss and gradients (saekit.sae.sparse)."""

from __future__ import annotations

import copy

import pytest
import torch
from dense_reference import dense_loss

from saekit._fast import scratch
from saekit.comm import LOCAL
from saekit.sae import build, jumprelu
from saekit.sae import sparse as S
from saekit.types import ActBatch, Codes, StepCtx

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
        for p_name, p in sae.named_parameters():
            if p_name in ("b_enc", "b_dec", "W_skip"):
                p.add_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1)
    return sae


def grads_of(sae, out) -> dict[str, torch.Tensor]:
    sae.zero_grad(set_to_none=True)
    out.loss.backward()
    return {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}


def assert_same(sparse_sae, dense_sae, x, ctx, grad=None, target=None):
    fast = sparse_sae.loss(ActBatch(x, grad, target), ctx)
    if dense_sae.architecture in ("jumprelu", "jumprelu_transcoder"):
        plain = jumprelu.dense_loss(dense_sae, dense_sae.cfg, dense_sae.threshold, ActBatch(x, grad, target), ctx)
    else:
        plain = dense_loss(dense_sae, x, ctx, grad, target)
    torch.testing.assert_close(fast.loss, plain.loss)
    torch.testing.assert_close(fast.x_hat, plain.x_hat)
    torch.testing.assert_close(fast.codes.to_dense(), plain.codes.to_dense())
    # The fired mask the loop's dead-latent count reads (the sparse selection gives it).
    fired = fast.codes.fired()
    assert fired.dtype == torch.bool and torch.equal(fired, (plain.codes.to_dense() != 0).any(0))
    assert int(fired.sum()) > 0, "vacuous: no latent fired"
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


def flat_topk_set(scores: torch.Tensor, n_keep: int) -> list[int]:
    return sorted(scores.flatten().topk(n_keep).indices.tolist())


@pytest.mark.parametrize("case", ["spread", "one_heavy_row", "many_heavy_rows", "keep_all_candidates"])
def test_batch_topk_flat_is_the_flat_topk(case):
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(48, 64, generator=g)
    k, per_row = 3, 6
    if case == "one_heavy_row":  # row 5 holds far more than per_row of the top entries: it is taken whole
        scores[5] += 10
    if case == "many_heavy_rows":  # more than 1/8 of the rows saturate: the plain flat top-k
        scores[:10] += 10
    if case == "keep_all_candidates":
        per_row = 2
    n_keep = 48 * k
    picked = S.batch_topk_flat(scores, n_keep, per_row)
    assert picked.numel() == n_keep and picked.unique().numel() == n_keep
    assert sorted(picked.tolist()) == flat_topk_set(scores, n_keep)
    if case == "one_heavy_row":
        assert (torch.div(picked, 64, rounding_mode="floor") == 5).sum() == 64


def test_sparse_codes_are_the_dense_codes_and_feed_the_threshold_and_dead_counts():
    from saekit.training import dead

    pattern = random_pattern(3)
    g = torch.Generator().manual_seed(4)
    values = torch.rand(pattern.nnz, generator=g) - 0.2  # some non-positive values among the kept
    values[pattern.cols == pattern.cols[0]] = 0.0  # a latent kept at 0 only: NaN threshold, not fired
    csr = S.sparse_codes(values, pattern)
    dense = S.densify(values, pattern)
    assert csr.layout == torch.sparse_csr
    assert torch.equal(csr.to_dense(), dense)
    sparse_codes, dense_codes = Codes(csr), Codes(dense)
    torch.testing.assert_close(sparse_codes.smallest_positive(), dense_codes.smallest_positive())
    torch.testing.assert_close(sparse_codes.smallest_positive(True), dense_codes.smallest_positive(True), equal_nan=True)
    assert dense_codes.smallest_positive(True).isnan().any(), "vacuous: every latent has a positive code"
    positive = dense.masked_fill(dense <= 0, float("inf"))
    assert float(dense_codes.smallest_positive()) == float(positive.min())  # by hand
    torch.testing.assert_close(sparse_codes.density(), (dense != 0).float().mean(0))
    assert torch.equal(sparse_codes.fired(), (dense != 0).any(0)) and torch.equal(dense_codes.fired(), (dense != 0).any(0))
    from_csr, from_dense = dead.new_counter(pattern.n_cols), dead.new_counter(pattern.n_cols)
    from_csr.fill_(5)
    from_dense.fill_(5)
    dead.update_counter_(from_csr, sparse_codes)
    dead.update_counter_(from_dense, dense_codes)
    assert torch.equal(from_csr, from_dense) and (from_dense == 0).any() and (from_dense == 5 + pattern.n_rows).any()


# ---------------------------------------------------------------------------------------------
# The auxiliary loss (AuxK with weight 1 on dead latents) by hand

_PRE = torch.tensor([[1.0, 2.0, -1.0], [0.5, 3.0, 2.0]])
_RESIDUAL = torch.tensor([[1.0, 1.0], [3.0, 1.0]])
_W_DEC = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
_DEAD = torch.tensor([1.0, 0.0, 1.0])


def aux(pre: torch.Tensor, weights, k_aux: int) -> torch.Tensor:
    """S.aux_loss with x − x̂ = the residual and the pre-activations themselves as the gathered values."""

    def gather(p: S.Pattern) -> torch.Tensor:
        return pre.reshape(-1)[p.flat]

    return S.aux_loss(pre.detach(), gather, torch.zeros_like(_RESIDUAL), _RESIDUAL, weights, k_aux, _W_DEC, LOCAL)


def test_aux_loss_hand_computed():
    # k_aux = 1: row 0 uses dead latent 0 (value 1), row 1 dead latent 2 (value 2).
    # Predictions [1, 0] and [2, 2]; squared error 1 + 1 + 1 = 3; variance of the residual about its
    # mean [2, 1] is 1 + 1 = 2.
    assert aux(_PRE, _DEAD, 1).item() == pytest.approx(1.5)


def test_aux_loss_uses_at_most_the_weighted_latents():
    # k_aux = 5 > 2 dead: both dead latents, negative values through the ReLU.
    # Row 0 codes [1, 0, 0] -> [1, 0]; row 1 codes [0.5, 0, 2] -> [2.5, 2]; error 1 + 0.25 + 1.
    assert aux(_PRE, _DEAD, 5).item() == pytest.approx(2.25 / 2)


def test_aux_loss_scales_codes_by_their_weights():
    # Weight 0.5 on latent 2: row 1 predicts [1, 1] instead of [2, 2]; error 1 + 4 + 0 + 0 over 2.
    assert aux(_PRE, torch.tensor([1.0, 0.0, 0.5]), 1).item() == pytest.approx(2.5)


def test_aux_loss_is_zero_without_weighted_latents():
    assert aux(_PRE, torch.zeros(3), 2).item() == 0.0
    assert aux(_PRE, None, 2).item() == 0.0


def test_aux_loss_gradient_reaches_only_selected_latents():
    pre = _PRE.clone().requires_grad_(True)
    aux(pre, _DEAD, 5).backward()
    # Row 1 error [-0.5, 1]: 2 · (error · W_dec[i]) / variance 2 for the dead latents 0 and 2; the live
    # latent 1 and the negative (ReLU-clipped) entry of row 0 get nothing.
    assert torch.allclose(pre.grad, torch.tensor([[0.0, 0.0, 0.0], [-0.5, 0.0, 0.5]]))


# ---------------------------------------------------------------------------------------------
# Architectures: the sparse loss against the dense one


DEAD_MASKS = {
    None: None,
    "few": torch.arange(D_SAE) % 8 == 0,  # AuxK selects among the dead columns only
    "some": torch.arange(D_SAE) % 3 == 0,  # AuxK masks the whole matrix
    "all": torch.ones(D_SAE, dtype=torch.bool),
}


@pytest.mark.parametrize("dead", [None, "few", "some", "all"])
def test_topk_sparse_loss_equals_dense(dead):
    sae = perturbed("topk", k=5, aux_k=7)
    mask = DEAD_MASKS[dead]
    out = assert_same(sae, copy.deepcopy(sae), rows(BATCH, 0), StepCtx(dead_mask=mask))
    assert (out.terms["aux_k"] > 0) == (dead is not None)
    assert torch.equal((out.codes.to_dense() != 0).sum(-1), torch.full((BATCH,), 5))


@pytest.mark.parametrize("dead", [None, "few", "some"])
def test_batch_topk_sparse_loss_equals_dense(dead):
    sae = perturbed("batch_topk", k=5, aux_k=7)
    mask = DEAD_MASKS[dead]
    out = assert_same(sae, copy.deepcopy(sae), rows(BATCH, 1), StepCtx(dead_mask=mask))
    assert out.codes.to_dense().count_nonzero() == BATCH * 5
    assert (out.codes.to_dense() != 0).sum(-1).unique().numel() > 1, "batch top-k should give tokens different counts"


@pytest.mark.parametrize("with_grad", [False, True])
@pytest.mark.parametrize("dead", [None, "few"])
def test_gradient_topk_sparse_loss_equals_dense(with_grad, dead):
    sae = perturbed("gradient_topk", k=5, aux_k=7, beta=2.0)
    x = rows(BATCH, 4)
    grad = rows(BATCH, 5) if with_grad else None
    out = assert_same(sae, copy.deepcopy(sae), x, StepCtx(dead_mask=DEAD_MASKS[dead]), grad)
    assert torch.equal((out.codes.to_dense() != 0).sum(-1), torch.full((BATCH,), 5))
    if with_grad:  # the gradient changed the choice, so the test compares the gradient-aware selection
        with torch.no_grad():
            plain_topk = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).topk(5, dim=-1).indices.sort(-1).values
        chosen = (out.codes.to_dense() != 0).nonzero()[:, 1].view(BATCH, 5)
        assert not torch.equal(plain_topk, chosen)


@pytest.mark.parametrize("widths", [None, (2, 3, 30, D_SAE)])
@pytest.mark.parametrize("dead", [None, "few", "some"])
def test_matryoshka_sparse_loss_equals_dense(dead, widths):
    """Every prefix's error, their sum and its gradients, against the textbook slices codes[:, :m] and
    W_dec[:m]; in (2, 3, 30, 96) the group of latent 2 selects nothing in this batch."""
    sae = perturbed("matryoshka_batch_topk", k=5, aux_k=7, widths=widths)
    out = assert_same(sae, copy.deepcopy(sae), rows(BATCH, 13), StepCtx(dead_mask=DEAD_MASKS[dead]))
    if widths is not None:
        assert out.codes.to_dense()[:, 2].count_nonzero() == 0 < out.codes.to_dense()[:, :2].count_nonzero()
    inner = sae.cfg.prefix_widths[:-1]
    assert {f"mse_{m}" for m in inner} <= out.terms.keys() and len(inner) >= 3
    errors = [float(out.terms[f"mse_{m}"]) for m in inner] + [float(out.terms["mse"])]
    assert len(set(errors)) >= len(errors) - (widths is not None), "vacuous: prefixes with equal errors would hide a mix-up"
    torch.testing.assert_close(out.loss - sae.cfg.aux_coef * out.terms["aux_k"], sum(out.terms[f"mse_{m}"] for m in inner) + out.terms["mse"])


@pytest.mark.parametrize("shuffled", [False, True])
def test_group_rows_decodes_each_rows_column_groups_apart(shuffled):
    """Row r · G + g of the grouped decode is row r of the codes in column group g times W_dec; a
    pattern whose columns do not ascend within a row is sorted into that order (``order``)."""
    pattern = random_pattern(4, n_rows=9, n_cols=13, density=0.4)
    values = torch.randn(pattern.nnz, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    dense = S.densify(values, pattern)
    if shuffled:  # the same pairs, each row's columns in reverse order
        flip = torch.cat([torch.arange(b - 1, a - 1, -1) for a, b in zip(pattern.crow[:-1].tolist(), pattern.crow[1:].tolist())])
        pattern, values = S.Pattern(pattern.rows[flip], pattern.cols[flip], pattern.crow, 9, 13), values[flip]
    table = torch.randn(13, 3, dtype=torch.float64)
    bounds = (4, 5, 12, 13)
    grouped = S.group_rows(pattern, bounds)
    assert (grouped.order is not None) == shuffled
    ordered = values if grouped.order is None else values[grouped.order]
    parts = S.rows_times(grouped.pattern, ordered, table).view(9, len(bounds), 3)
    for g, (start, stop) in enumerate(zip((0, *bounds), bounds)):
        torch.testing.assert_close(parts[:, g], dense[:, start:stop] @ table[start:stop])
    assert grouped.pattern.n_rows == 9 * len(bounds) and grouped.pattern.crow[-1] == pattern.nnz


@pytest.mark.parametrize("dead", [None, "few"])
def test_feature_choice_sparse_loss_equals_dense(dead):
    sae = perturbed("feature_choice", k=5, aux_k=7, capacity_zipf_exponent=1.0)
    out = assert_same(sae, copy.deepcopy(sae), rows(BATCH, 6), StepCtx(dead_mask=DEAD_MASKS[dead]))
    per_latent = (out.codes.to_dense() != 0).sum(0)
    assert per_latent.max() > per_latent.min(), "vacuous: every latent took the same number of tokens"


@pytest.mark.parametrize("name", ["topk", "batch_topk", "gradient_topk", "feature_choice", "matryoshka_batch_topk"])
def test_aux_zipf_sparse_loss_equals_dense(name):
    """aux_zipf_loss runs on the sparse path for every TopK-family selection, with a running density
    that has already seen a batch (so the weights are the running estimate's, not one batch's)."""
    sae = perturbed(name, k=5, aux_k=7, aux_zipf_coef=0.5)
    first = sae.loss(ActBatch(rows(BATCH, 10)), StepCtx(step=0))
    sae.after_step(first, StepCtx(step=0, total_steps=100))
    assert sae.zipf_seen > 0
    grad = rows(BATCH, 12) if name == "gradient_topk" else None
    out = assert_same(sae, copy.deepcopy(sae), rows(BATCH, 11), StepCtx(step=1, dead_mask=DEAD_MASKS["few"]), grad)
    assert out.terms["aux_zipf"] > 0 and out.terms["aux_k"] > 0


def test_jumprelu_sparse_loss_equals_dense_including_threshold_gradients():
    sae = perturbed("jumprelu", bandwidth=0.05, init_decoder_norm=1.0)
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
    assert not out.codes.to_dense().requires_grad  # the sparse path returns detached codes


D_OUT = 7


def sparse_jumprelu(name: str, x: torch.Tensor, **kw):
    """A JumpReLU SAE or transcoder whose thresholds keep about 1% of ``x``'s codes: the sparse regime."""
    sae = perturbed(name, bandwidth=0.05, init_decoder_norm=1.0, **kw)
    with torch.no_grad():
        sae.threshold.copy_((x @ sae.W_enc + sae.b_enc).quantile(0.99, dim=0))
    return sae


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("name", ["topk_transcoder", "batch_topk_transcoder", "jumprelu_transcoder"])
def test_transcoder_sparse_loss_equals_dense(name, skip):
    """A transcoder (d_out = 7 against d_in = 12, a target of its own, the skip term) on the sparse path
    gives the dense oracle's loss, output and gradients, W_skip's included."""
    x, target = rows(4 * BATCH, 20), torch.randn(4 * BATCH, D_OUT, generator=torch.Generator().manual_seed(21), dtype=torch.float64)
    if name == "jumprelu_transcoder":
        sae = sparse_jumprelu(name, x, d_out=D_OUT, skip=skip)
        ctx = StepCtx(sparsity_scale=0.7)
    else:
        sae = perturbed(name, k=5, aux_k=4, d_out=D_OUT, skip=skip)
        ctx = StepCtx(dead_mask=DEAD_MASKS["few"])
    out = assert_same(sae, copy.deepcopy(sae), x, ctx, target=target)
    assert out.x_hat.shape == (4 * BATCH, D_OUT)
    assert ("W_skip" in dict(sae.named_parameters())) == skip
    assert not out.codes.to_dense().requires_grad, "vacuous: the dense path ran"


def test_jumprelu_dense_regime_takes_the_dense_path():
    sae = perturbed("jumprelu")  # θ₀ = 0.001: about half the latents active
    x = rows(BATCH, 3)
    out = sae.loss(ActBatch(x), StepCtx())
    ref = jumprelu.dense_loss(sae, sae.cfg, sae.threshold, ActBatch(x), StepCtx())
    codes = out.codes.to_dense()
    assert codes.count_nonzero() > 0.3 * codes.numel()
    assert codes.requires_grad  # the dense path's codes carry autograd
    assert torch.equal(out.loss, ref.loss)


@pytest.mark.parametrize("name", ["topk", "batch_topk", "gradient_topk", "feature_choice", "matryoshka_batch_topk"])
def test_a_training_step_makes_no_dense_batch_by_latents_tensor_in_backward(name):
    """The issue's memory rule: the backward pass of a TopK-family step never materialises a dense
    [batch, d_sae] gradient (the forward pass has one [batch, d_sae] tensor, the pre-activations)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # Dense results only: the sparse CSR matrices of the sampled products hold nnz values.
            self.shapes += [
                tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.layout == torch.strided
            ]
            return out

    sae = build(name, d_in=D_IN, d_sae=D_SAE, seed=0, k=5)
    out = sae.loss(ActBatch(rows(BATCH, 7).float()), StepCtx(dead_mask=DEAD_MASKS["few"]))
    with Shapes() as backward:
        out.loss.backward()
    assert backward.shapes, "vacuous: no operation recorded"
    assert (D_SAE, D_IN) in backward.shapes  # the decoder gradient was seen, so the recording works
    assert (BATCH, D_SAE) not in backward.shapes
    dense = dense_loss(copy.deepcopy(sae), rows(BATCH, 7).float(), StepCtx(dead_mask=DEAD_MASKS["few"]))
    with Shapes() as dense_backward:
        dense.loss.backward()
    assert (BATCH, D_SAE) in dense_backward.shapes  # the check would catch the dense path


@pytest.mark.parametrize("name", ["topk", "batch_topk", "gradient_topk", "feature_choice", "matryoshka_batch_topk", "jumprelu"])
def test_sparse_losses_in_reused_buffers_equal_dense_step_after_step(name):
    # The training loop computes the pre-activations into one reused buffer (saekit._fast.scratch);
    # the second batch overwrites the first one's buffer, and both steps must still be exact.
    if name == "jumprelu":
        sae = perturbed(name, bandwidth=0.05, init_decoder_norm=1.0)
        with torch.no_grad():  # thresholds that keep ~1% active: the sparse regime
            sae.threshold.copy_((rows(4 * BATCH, 9) @ sae.W_enc + sae.b_enc).quantile(0.99, dim=0))
    else:
        sae = perturbed(name, k=5)
    with scratch.reusing():
        for seed in (7, 8):
            assert_same(sae, copy.deepcopy(sae), rows(BATCH, seed), StepCtx())
        assert (BATCH, D_SAE) in {key[0] for key in scratch._pool.get()}, "the loss did not use the reused buffer"


def test_pre_acts_with_autograd_does_not_write_into_a_reused_buffer():
    g = torch.Generator().manual_seed(3)
    x, W, b = torch.randn(7, 5, generator=g), torch.randn(5, 9, generator=g, requires_grad=True), torch.randn(9, generator=g)
    with scratch.reusing():
        pre = S.pre_acts(x, W, b)
        pre.sum().backward()
    torch.testing.assert_close(W.grad, x.sum(0)[:, None].expand(5, 9))


@pytest.mark.parametrize("width", [1, 63, 64, 65, 200])
def test_the_products_by_column_blocks_equal_one_embedding_bag_exactly(width):
    """rows_times and cols_times read the table a block of columns at a time (64 here): the same terms
    summed in the same order as one embedding_bag over the whole table, so the results are equal bit
    for bit."""
    from torch.nn import functional as tF

    g = torch.Generator().manual_seed(width)
    pattern = S.pattern_from_topk(torch.randn(40, 30, generator=g).topk(4, dim=-1).indices, 30)
    values = torch.randn(pattern.nnz, generator=g)
    table, dense = torch.randn(30, width, generator=g), torch.randn(40, width, generator=g)
    whole = tF.embedding_bag(pattern.cols, table, pattern.crow[:-1], mode="sum", per_sample_weights=values)
    assert torch.equal(S.rows_times(pattern, values, table), whole)
    by = pattern.by_column
    whole_t = tF.embedding_bag(by.rows, dense, by.ccol[:-1], mode="sum", per_sample_weights=values[by.order])
    assert torch.equal(S.cols_times(pattern, values, dense), whole_t)
    transposed = S.cols_times(pattern, values, dense, transposed=True)
    assert transposed.is_contiguous() and torch.equal(transposed, whole_t.t())


def test_the_products_of_an_empty_pattern_are_zeros():
    pattern = S.pattern_from_mask(torch.zeros(5, 7, dtype=torch.bool))
    values = torch.zeros(0)
    assert torch.equal(S.rows_times(pattern, values, torch.randn(7, 100)), torch.zeros(5, 100))
    assert torch.equal(S.cols_times(pattern, values, torch.randn(5, 100), transposed=True), torch.zeros(100, 7))


def test_a_block_of_columns_fits_the_cache_budget():
    def blocks(rows, dtype=torch.float32):
        empty = torch.zeros(0, dtype=torch.int64)
        return len(S._bags(empty, torch.empty(rows, 576, dtype=dtype), torch.zeros(1, dtype=torch.int64), torch.zeros(0, dtype=dtype)))

    assert (blocks(4096), blocks(4608), blocks(16384), blocks(65536)) == (9, 9, 18, 36)  # 64, 64, 32, 16 columns
    assert blocks(16384, torch.bfloat16) == 9  # half the bytes per entry
