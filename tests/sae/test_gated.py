"""Gated SAE: gate and magnitude paths, the three-term loss, and where each term's gradient goes."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.sae import build, get
from saekit.sae import functional as F
from saekit.sae.gated import GatedConfig, GatedSAE
from saekit.types import ActBatch, StepCtx

X = torch.tensor([[1.5, 1.0], [0.5, -1.0]])
W_DEC = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
B_DEC = torch.tensor([0.5, 0.0])
# u = (x − b_dec) W_enc = [[1, 1, 2], [0, −1, −1]]
# π_gate = u + b_gate                 = [[0.5, 1.5, −0.5], [−0.5, −0.5, −3.5]]
# π_mag  = u · [1, 2, 0.5] + b_mag     = [[1.25, −0.5, 2.0], [0.25, −4.5, 0.5]]
# latent 0 open with positive magnitude; latent 1 open but negative magnitude; latent 2 closed.
CODES = torch.tensor([[1.25, 0.0, 0.0], [0.0, 0.0, 0.0]])


def hand_sae(l1_coef: float = 2.0) -> GatedSAE:
    sae = GatedSAE(GatedConfig(d_in=2, d_sae=3, l1_coef=l1_coef))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
        sae.b_gate.copy_(torch.tensor([-0.5, 0.5, -2.5]))
        sae.r_mag.copy_(torch.tensor([0.0, math.log(2.0), math.log(0.5)]))
        sae.b_mag.copy_(torch.tensor([0.25, -2.5, 1.0]))
        sae.b_dec.copy_(B_DEC)
        sae.W_dec.copy_(W_DEC)
    return sae


def test_encode_hand_computed() -> None:
    assert torch.allclose(hand_sae().encode(X), CODES)


def test_loss_terms_hand_computed() -> None:
    out = hand_sae(l1_coef=2.0).loss(ActBatch(X), StepCtx(sparsity_scale=0.5))
    # x̂ = [[1.75, 0], [0.5, 0]]: errors 0.0625 + 1 and 0 + 1.
    assert out.terms["mse"].item() == pytest.approx(1.03125)
    # ReLU(π_gate) = [[0.5, 1.5, 0], [0, 0, 0]].
    assert out.terms["l1"].item() == pytest.approx(1.0)
    # x̂_gate = ReLU(π_gate) W_dec + b_dec = [[1, 1.5], [0.5, 0]]: errors 0.25 + 0.25 and 0 + 1.
    assert out.terms["aux"].item() == pytest.approx(0.75)
    assert out.terms["l0"].item() == pytest.approx(0.5)
    assert out.loss.item() == pytest.approx(1.03125 + 0.5 * 2.0 * 1.0 + 0.75)
    assert torch.allclose(out.codes.to_dense(), CODES)


def test_gate_bias_gradient_hand_computed() -> None:
    sae = hand_sae(l1_coef=2.0)
    sae.loss(ActBatch(X), StepCtx(sparsity_scale=0.5)).loss.backward()
    # The step passes no reconstruction gradient; L1: s·λ·(#open)/B = [0.5, 0.5, 0]; auxiliary term:
    # (2/B)(x̂_gate − x) W_decᵀ on open gates = [−0.5, 0.5, ·] from token 0.
    assert torch.allclose(sae.b_gate.grad, torch.tensor([0.0, 1.0, 0.0]))


def test_sparsity_and_auxiliary_terms_leave_decoder_and_magnitudes_alone() -> None:
    full, recon_only = hand_sae(), hand_sae()
    full.loss(ActBatch(X), StepCtx()).loss.backward()
    F.mse_per_token(X, recon_only(X)).mean().backward()
    for name in ("W_dec", "r_mag", "b_mag"):
        assert torch.allclose(getattr(full, name).grad, getattr(recon_only, name).grad), name
    assert recon_only.b_gate.grad is None or not recon_only.b_gate.grad.any()


def test_layout_is_saelens_gated() -> None:
    sae = build("gated", d_in=4, d_sae=8, seed=0)
    assert set(sae.state_dict()) == {"W_enc", "W_dec", "b_gate", "b_mag", "r_mag", "b_dec"}
    assert not hasattr(sae, "b_enc")
    assert set(GatedSAE.scaled_params) == {"b_gate", "b_mag", "b_dec"}
    assert get("gated") is GatedSAE and GatedSAE.saelens_architecture == "gated"
    assert GatedSAE.unit_norm_decoder and GatedSAE.apply_b_dec_to_input
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(8))
    defaults = GatedSAE.optim_defaults(sae.cfg)
    assert defaults.lr == pytest.approx(8e-4 * (2**14 / 8) ** 0.5) and defaults.betas == (0.0, 0.999)


def test_bad_l1_coef_names_the_field() -> None:
    with pytest.raises(ValueError, match="l1_coef"):
        GatedConfig(d_in=4, d_sae=8, l1_coef=-1.0)
