"""BatchTopK SAE: batch-level selection in training, learned global threshold for inference."""

from __future__ import annotations

import pytest
import torch
from hand import set_weights_

from saekit.sae import build, get
from saekit.sae import functional as F
from saekit.sae import topk_family as family
from saekit.sae.batch_topk import BatchTopKConfig, BatchTopKSAE
from saekit.types import ActBatch, Codes, LossOut, StepCtx

W_DEC = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
X = torch.tensor([[1.5, 1.0], [0.5, -1.0]])  # x − b_dec = [[1, 1], [0, −1]]
ACTS = torch.tensor([[1.0, 1.25, 1.5], [0.0, 0.0, 0.0]])  # ReLU([[1, 1.25, 1.5], [0, −0.75, −1.5]])


def hand_sae(k: int = 1, **hparams) -> BatchTopKSAE:
    return set_weights_(BatchTopKSAE(BatchTopKConfig(d_in=2, d_sae=3, k=k, **hparams)), W_DEC)


def out_with(codes: list[list[float]]) -> LossOut:
    c = torch.tensor(codes)
    return LossOut(torch.zeros(()), torch.zeros(c.shape[0], 2), Codes(c), {})


def test_training_selection_is_batch_level() -> None:
    # k = 1 over 2 tokens keeps the 2 largest activations of the batch, both in the first token.
    out = hand_sae(k=1).loss(ActBatch(X), StepCtx())
    assert torch.equal(out.codes.to_dense(), torch.tensor([[0.0, 1.25, 1.5], [0.0, 0.0, 0.0]]))
    assert out.terms["l0"].item() == pytest.approx(1.0)


def test_training_keeps_exactly_batch_times_k_largest() -> None:
    sae = build("batch_topk", d_in=8, d_sae=32, k=3, seed=0)
    with torch.no_grad():
        sae.b_enc.fill_(10.0)  # every activation positive, so every kept entry is non-zero
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    out = sae.loss(ActBatch(x), StepCtx())
    acts = family.pre_acts(sae, x).relu()
    kept = out.codes.to_dense() != 0
    assert int(kept.sum()) == 6 * 3
    assert acts[kept].min() >= acts[~kept].max()
    torch.testing.assert_close(out.codes.to_dense()[kept], acts[kept].detach())
    assert len(set((kept.sum(-1)).tolist())) > 1  # tokens get different numbers of latents


def test_loss_terms_match_independent_formula() -> None:
    sae = hand_sae(k=1, aux_k=1)
    dead = torch.tensor([True, False, False])
    out = sae.loss(ActBatch(X), StepCtx(dead_mask=dead))
    codes = torch.tensor([[0.0, 1.25, 1.5], [0.0, 0.0, 0.0]])
    x_hat = codes @ W_DEC + torch.tensor([0.5, 0.0])
    mse = ((X - x_hat) ** 2).sum(1).mean()
    residual = X - x_hat
    residual_hat = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # dead latent 0: activations 1 and 0, along e₁
    aux = ((residual_hat - residual) ** 2).sum() / ((residual - residual.mean(0)) ** 2).sum()
    assert out.terms["mse"].item() == pytest.approx(mse.item())
    assert out.terms["aux_k"].item() == pytest.approx(aux.item())
    assert out.loss.item() == pytest.approx(mse.item() + aux.item() / 32)


def test_threshold_ema_follows_the_formula() -> None:
    sae = hand_sae(threshold_ema=0.1, threshold_start_step=2)
    ctx = lambda step: StepCtx(step=step, total_steps=100)  # noqa: E731
    sae.after_step(out_with([[0.5, 0.0, 0.0]]), ctx(1))  # before the start step: ignored
    assert not sae.threshold_set and torch.equal(sae.threshold, torch.full((3,), float("inf")))
    sae.after_step(out_with([[0.0, 0.8, 0.3], [1.0, 0.0, 0.0]]), ctx(2))  # first minimum: θ = 0.3
    assert sae.threshold_set
    assert torch.allclose(sae.threshold, torch.full((3,), 0.3))
    sae.after_step(out_with([[0.7, 0.9, 0.0]]), ctx(3))
    assert torch.allclose(sae.threshold, torch.full((3,), 0.9 * 0.3 + 0.1 * 0.7))
    sae.after_step(out_with([[0.0, 0.2, 0.0], [0.5, 0.0, 0.0]]), ctx(4))
    expected = 0.9 * (0.9 * 0.3 + 0.1 * 0.7) + 0.1 * 0.2
    assert torch.allclose(sae.threshold, torch.full((3,), expected))
    sae.after_step(out_with([[0.0, 0.0, 0.0]]), ctx(5))  # nothing active: θ unchanged
    assert torch.allclose(sae.threshold, torch.full((3,), expected))


def test_threshold_start_is_capped_at_half_the_run() -> None:
    sae = hand_sae(threshold_start_step=1000)
    sae.after_step(out_with([[0.5, 0.0, 0.0]]), StepCtx(step=49, total_steps=100))
    assert not sae.threshold_set
    sae.after_step(out_with([[0.5, 0.0, 0.0]]), StepCtx(step=50, total_steps=100))
    assert sae.threshold_set and torch.allclose(sae.threshold, torch.full((3,), 0.5))


def test_threshold_from_real_training_codes() -> None:
    sae = hand_sae(k=1, threshold_start_step=0)
    out = sae.loss(ActBatch(X), StepCtx())
    sae.after_step(out, StepCtx(step=0, total_steps=1000))
    assert torch.allclose(sae.threshold, torch.full((3,), 1.25))


def test_encode_before_and_after_the_threshold_is_set() -> None:
    sae = hand_sae(k=1, threshold_start_step=0)
    # Not set yet (θ = +inf): no latent fires, as SAELens's ReLU(z)·1[z > θ] computes from the folder.
    assert torch.equal(sae.encode(X), torch.zeros(2, 3))
    sae.after_step(out_with([[1.1, 0.0, 0.0]]), StepCtx(step=0, total_steps=1000))
    # Set: ReLU activations above θ = 1.1, whatever the rest of the batch.
    assert torch.equal(sae.encode(X), torch.tensor([[0.0, 1.25, 1.5], [0.0, 0.0, 0.0]]))
    assert torch.equal(sae.encode(X[:1]), sae.encode(X)[:1])


def test_resume_from_state_dict_continues_the_ema_exactly() -> None:
    a = hand_sae(threshold_start_step=0, threshold_ema=0.25)
    a.after_step(out_with([[0.4, 0.0, 0.9]]), StepCtx(step=0, total_steps=1000))
    state = a.state_dict()
    # Only SAELens's jumprelu tensors: the "not yet set" state is θ = +inf, not a separate flag.
    assert set(state) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
    b = hand_sae(threshold_start_step=0, threshold_ema=0.25)
    assert not b.threshold_set
    b.load_state_dict(state)
    assert b.threshold_set
    for sae in (a, b):
        sae.after_step(out_with([[0.8, 0.0, 0.0]]), StepCtx(step=1, total_steps=1000))
    assert torch.equal(a.threshold, b.threshold)
    assert torch.allclose(b.threshold, torch.full((3,), 0.75 * 0.4 + 0.25 * 0.8))


def test_defaults_and_flags() -> None:
    assert get("batch_topk") is BatchTopKSAE
    assert BatchTopKSAE.saelens_architecture == "jumprelu"
    assert "threshold" in BatchTopKSAE.scaled_params
    assert BatchTopKSAE.unit_norm_decoder and BatchTopKSAE.apply_b_dec_to_input
    assert BatchTopKSAE.optim_defaults(BatchTopKConfig(d_in=4, d_sae=4 * 2**14)).lr == pytest.approx(4e-4)
    sae = build("batch_topk", d_in=4, d_sae=8, k=2, seed=0)
    assert sae.threshold.shape == (8,)
    assert torch.allclose(sae.W_enc, sae.W_dec.t() * sae.cfg.init_encoder_norm)


@pytest.mark.parametrize(
    "bad", [{"k": 0}, {"k": 9}, {"aux_k": 0}, {"aux_coef": -1.0}, {"threshold_ema": 0.0}, {"threshold_ema": 1.5}, {"threshold_start_step": -1}]
)
def test_bad_hyperparameters_name_the_field(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        BatchTopKConfig(d_in=4, d_sae=8, **{"k": 2, **bad})


def test_ema_memory_is_at_most_a_tenth_of_the_run() -> None:
    """β = 0.001 keeps a threshold for about 1,000 steps: in a 2,000-step run it would still hold the
    minima of encoders from the run's first half. The weight used is at least 10 / total_steps."""
    assert F.threshold_ema_weight(0.001, 1_000_000) == 0.001
    assert F.threshold_ema_weight(0.001, 2000) == pytest.approx(0.005)
    assert F.threshold_ema_weight(0.5, 2000) == 0.5
    assert F.threshold_ema_weight(0.001, 5) == 1.0
    sae = hand_sae(threshold_ema=0.001, threshold_start_step=0)
    for step, value in enumerate([1.0, 0.5]):
        sae.after_step(out_with([[value, 0.0, 0.0]]), StepCtx(step=step, total_steps=100))
    torch.testing.assert_close(sae.threshold, torch.full((3,), 0.9 * 1.0 + 0.1 * 0.5))
