"""ReLU SAE with the decoder-norm-weighted L1 penalty (Anthropic April update)."""

from __future__ import annotations

import pytest
import torch
from hand import set_weights_

from saekit.sae import build, get
from saekit.sae.relu import ReLUConfig, ReLUSAE
from saekit.types import ActBatch, StepCtx

W_DEC = torch.tensor([[2.0, 0.0], [0.0, 0.5], [1.0, 1.0]])  # row norms 2, 0.5, √2
X = torch.tensor([[1.5, 1.0], [0.5, -1.0]])  # x − b_dec = [[1, 1], [0, −1]]
CODES = torch.tensor([[1.0, 1.25, 1.5], [0.0, 0.0, 0.0]])  # ReLU of [[1, 1.25, 1.5], [0, −0.75, −1.5]]


def hand_sae(l1_coef: float = 2.0) -> ReLUSAE:
    return set_weights_(ReLUSAE(ReLUConfig(d_in=2, d_sae=3, l1_coef=l1_coef)), W_DEC)


def test_encode_hand_computed() -> None:
    assert torch.equal(hand_sae().encode(X), CODES)


def test_loss_terms_match_independent_formula() -> None:
    sae = hand_sae(l1_coef=2.0)
    out = sae.loss(ActBatch(X), StepCtx(sparsity_scale=0.5))
    x_hat = CODES @ W_DEC + torch.tensor([0.5, 0.0])
    mse = ((X - x_hat) ** 2).sum(1).mean()
    l1 = (1.0 * 2.0 + 1.25 * 0.5 + 1.5 * 2**0.5) / 2  # Σ_i f_i ||W_dec[i]||, mean over 2 tokens
    assert torch.allclose(out.x_hat, x_hat)
    assert out.terms["mse"].item() == pytest.approx(mse.item())
    assert out.terms["l1"].item() == pytest.approx(l1)
    assert out.terms["l0"].item() == pytest.approx(1.5)
    assert out.loss.item() == pytest.approx(mse.item() + 0.5 * 2.0 * l1)


def test_loss_is_invariant_to_moving_scale_into_the_decoder() -> None:
    # The reason the decoder may stay unconstrained: f_i → a f_i, W_dec[i] → W_dec[i] / a changes
    # neither the reconstruction nor the penalty.
    sae = build("relu", d_in=6, d_sae=10, seed=0)
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
    before = sae.loss(ActBatch(x), StepCtx()).loss
    a = torch.linspace(0.5, 3.0, 10)
    with torch.no_grad():
        sae.W_enc.mul_(a)
        sae.b_enc.mul_(a)
        sae.W_dec.div_(a[:, None])
    after = sae.loss(ActBatch(x), StepCtx()).loss
    assert after.item() == pytest.approx(before.item(), rel=1e-5)


def test_init_and_flags() -> None:
    sae = build("relu", d_in=8, d_sae=16, seed=0, init_decoder_norm=0.2)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.full((16,), 0.2))
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    assert torch.equal(sae.b_enc, torch.zeros(16)) and torch.equal(sae.b_dec, torch.zeros(8))
    assert get("relu") is ReLUSAE
    assert ReLUSAE.saelens_architecture == "standard"
    assert not ReLUSAE.unit_norm_decoder and ReLUSAE.apply_b_dec_to_input
    assert ReLUSAE.scaled_params == ("b_enc", "b_dec")
    assert ReLUSAE.optim_defaults(sae.cfg).lr == pytest.approx(8e-4 * (2**14 / 16) ** 0.5)


def test_encode_is_per_token_and_nonnegative() -> None:
    sae = build("relu", d_in=8, d_sae=16, seed=0)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    codes = sae.encode(x)
    assert torch.all(codes >= 0)
    assert torch.allclose(codes[2], sae.encode(x[2:3])[0])


@pytest.mark.parametrize("bad", [{"l1_coef": -0.1}, {"init_decoder_norm": 0.0}])
def test_bad_hyperparameters_name_the_field(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        ReLUConfig(d_in=4, d_sae=8, **bad)
