"""Gated + p-annealing: the Gated SAE's three-term loss with the annealed Lp^p penalty on the gate path,
p and λ step by step against a plain replay, and its saved layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saekit.sae import build
from saekit.sae.gated_anneal import GatedAnnealConfig, GatedAnnealSAE
from saekit.types import ActBatch, StepCtx
from tests.sae.test_gated import W_DEC, X, hand_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def hand_anneal(**settings) -> GatedAnnealSAE:
    """The hand weights of test_gated in a GatedAnnealSAE."""
    sae = GatedAnnealSAE(GatedAnnealConfig(d_in=2, d_sae=3, **settings))
    sae.load_state_dict({**hand_sae().state_dict(), "sparsity_coef": sae.sparsity_coef, "lp_history": sae.lp_history})
    return sae


def test_at_p_one_it_is_the_gated_sae():
    gated = hand_sae(l1_coef=2.0).loss(ActBatch(X), StepCtx(sparsity_scale=0.5))
    annealed = hand_anneal(sparsity_coef=2.0).loss(ActBatch(X), StepCtx(step=0, total_steps=100, sparsity_scale=0.5))
    assert annealed.loss.item() == pytest.approx(gated.loss.item())
    assert annealed.terms["lp"].item() == pytest.approx(gated.terms["l1"].item())
    assert annealed.terms["aux"].item() == pytest.approx(0.75) and annealed.terms["p"].item() == 1.0
    torch.testing.assert_close(annealed.codes.to_dense(), gated.codes.to_dense())


def test_the_penalty_is_lp_of_the_gate_activations_once_p_falls():
    sae = hand_anneal(sparsity_coef=2.0, p_end=0.5, n_p_values=3, anneal_start=10)
    out = sae.loss(ActBatch(X), StepCtx(step=15, total_steps=20, sparsity_scale=1.0))
    # values 1, 0.75, 0.5 from steps 10, 15, 20: p = 0.75 at step 15. ReLU(π_gate) = [[0.5, 1.5, 0], [0, 0, 0]].
    lp = (0.5**0.75 + 1.5**0.75) / 2
    assert out.terms["p"].item() == pytest.approx(0.75) and out.terms["lp"].item() == pytest.approx(lp)
    assert out.terms["lp_next"].item() == pytest.approx((0.5**0.5 + 1.5**0.5) / 2)
    assert out.loss.item() == pytest.approx(1.03125 + 2.0 * lp + 0.75)


def test_lambda_is_rescaled_by_the_gate_activations_at_each_change_of_p():
    total, window = 40, 3
    sae = build("gated_anneal", d_in=8, d_sae=32, seed=0, sparsity_coef=0.05, n_p_values=3, anneal_start=10, rescale_batches=window)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    p_of, coef_of, gates = [], [], []
    for step in range(total):
        ctx = StepCtx(step=step, total_steps=total)
        x = torch.randn(32, 8, generator=g)
        gates.append(sae.paths(x).gate.relu().detach())
        out = sae.loss(ActBatch(x), ctx)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sae.after_step(out, ctx)
        p_of.append(out.terms["p"].item())
        coef_of.append(out.terms["sparsity_coef"].item())
    # a = 10; values 1, 0.6, 0.2 from steps 10, 25, 40: p changes at 25.
    assert p_of == pytest.approx([1.0] * 25 + [0.6] * 15)

    def lp(acts: torch.Tensor, p: float) -> float:
        return float(acts[acts > 0].pow(p).sum()) / acts.shape[0]

    before = range(25 - window, 25)
    ratio = np.mean([lp(gates[s], 1.0) for s in before]) / np.mean([lp(gates[s], 0.6) for s in before])
    assert coef_of[:25] == pytest.approx([0.05] * 25)
    assert coef_of[25:] == pytest.approx([0.05 * ratio] * 15, rel=1e-5)


def test_layout_is_gated_with_the_schedule_as_training_state():
    sae = build("gated_anneal", d_in=8, d_sae=16, seed=0, rescale_batches=4)
    assert set(sae.state_dict()) == {"W_enc", "W_dec", "b_gate", "b_mag", "r_mag", "b_dec", "sparsity_coef", "lp_history"}
    assert sae.saelens_architecture == "gated" and sae.training_state == ("sparsity_coef", "lp_history")
    assert torch.equal(hand_anneal().W_dec, W_DEC)


@pytest.mark.parametrize("bad", [{"sparsity_coef": -1.0}, {"p_end": 0.0}, {"n_p_values": 0}, {"rescale_batches": 0}])
def test_bad_hyperparameters_name_the_field(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        GatedAnnealConfig(d_in=4, d_sae=8, **bad)
