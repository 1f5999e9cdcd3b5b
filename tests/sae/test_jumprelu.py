"""JumpReLU SAE (Gemma Scope recipe): encode, loss, and the threshold's straight-through gradients."""

from __future__ import annotations

import pytest
import torch

from saekit.sae import build, get
from saekit.sae.jumprelu import JumpReLUConfig, JumpReLUSAE
from saekit.types import ActBatch, StepCtx

EPS = 0.01
THETA = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
# With W_enc = I and b_enc = 0 the pre-activations z are the inputs. |z − θ| < ε/2 at:
# latent 0 rows 0, 1, 2; latent 1 rows 0, 2; latent 2 row 1.
X = torch.tensor([[1.003, 1.996, 0.2], [0.998, 3.0, 0.501], [1.0049, 2.004, 0.6]], dtype=torch.float64)
IN_WINDOW = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 0]], dtype=torch.float64)
W_DEC = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0]], dtype=torch.float64)
B_DEC = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)


def hand_sae(l0_coef: float) -> JumpReLUSAE:
    sae = JumpReLUSAE(JumpReLUConfig(d_in=3, d_sae=3, l0_coef=l0_coef, bandwidth=EPS)).double()
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.b_enc.zero_()
        sae.b_dec.copy_(B_DEC)
        sae.W_dec.copy_(W_DEC)
        sae.threshold.copy_(THETA)
    return sae


def test_encode_hand_computed_without_b_dec_subtraction() -> None:
    codes = hand_sae(0.0).encode(X)
    expected = torch.tensor([[1.003, 0.0, 0.0], [0.0, 3.0, 0.501], [1.0049, 2.004, 0.6]], dtype=torch.float64)
    assert torch.equal(codes, expected)


def test_loss_terms_match_independent_formula() -> None:
    sae = hand_sae(l0_coef=0.3)
    out = sae.loss(ActBatch(X), StepCtx(sparsity_scale=0.5))
    codes = X * (X > THETA)
    x_hat = codes @ W_DEC + B_DEC
    mse = ((X - x_hat) ** 2).sum(1).mean()
    l0 = (1 + 2 + 3) / 3
    assert out.terms["mse"].item() == pytest.approx(mse.item())
    assert out.terms["l0"].item() == pytest.approx(l0)
    assert out.loss.item() == pytest.approx(mse.item() + 0.5 * 0.3 * l0)


def upstream_code_grad() -> torch.Tensor:
    """∂mse/∂f, computed by hand: (2/B)(x̂ − x) W_decᵀ."""
    codes = X * (X > THETA)
    x_hat = codes @ W_DEC + B_DEC
    return 2 / 3 * (x_hat - X) @ W_DEC.t()


def test_threshold_gradient_of_reconstruction_is_the_jumprelu_estimator() -> None:
    sae = hand_sae(l0_coef=0.0)
    sae.loss(ActBatch(X), StepCtx()).loss.backward()
    # ð/ðθ_i = Σ_n −(θ_i/ε) K((z_ni − θ_i)/ε) ∂L/∂f_ni
    expected = (-(THETA / EPS) * IN_WINDOW * upstream_code_grad()).sum(0)
    assert torch.allclose(sae.threshold.grad, expected)
    assert bool((expected != 0).all())


def test_threshold_gradient_of_l0_is_minus_the_kernel_density() -> None:
    with_l0, without = hand_sae(l0_coef=0.3), hand_sae(l0_coef=0.0)
    for sae in (with_l0, without):
        sae.loss(ActBatch(X), StepCtx(sparsity_scale=0.5)).loss.backward()
    # ð/ðθ_i of the batch-mean L0 = −(1/ε) · #{n : |z_ni − θ_i| < ε/2} / B, times s · λ.
    l0_grad = -(1 / EPS) * IN_WINDOW.sum(0) / 3
    assert torch.allclose(with_l0.threshold.grad - without.threshold.grad, 0.5 * 0.3 * l0_grad)
    # ∂L0/∂z = 0: the penalty gives the encoder no gradient at all.
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(with_l0, name).grad, getattr(without, name).grad), name


def test_after_step_clamps_threshold_at_zero() -> None:
    sae = hand_sae(0.0)
    with torch.no_grad():
        sae.threshold.copy_(torch.tensor([-0.5, 0.3, 0.0], dtype=torch.float64))
    out = sae.loss(ActBatch(X), StepCtx())
    sae.after_step(out, StepCtx())
    assert torch.equal(sae.threshold.detach(), torch.tensor([0.0, 0.3, 0.0], dtype=torch.float64))


def test_defaults_and_flags() -> None:
    sae = build("jumprelu", d_in=4, d_sae=8, seed=0)
    assert get("jumprelu") is JumpReLUSAE
    assert JumpReLUSAE.saelens_architecture == "jumprelu"
    assert not JumpReLUSAE.apply_b_dec_to_input and JumpReLUSAE.b_dec_init == "zeros"
    assert not JumpReLUSAE.unit_norm_decoder  # free decoder rows, started at norm 0.1
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.full((8,), 0.1))
    assert set(JumpReLUSAE.scaled_params) == {"b_enc", "b_dec", "threshold"}
    assert isinstance(sae.threshold, torch.nn.Parameter)
    assert torch.equal(sae.threshold.detach(), torch.full((8,), 0.001))
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    defaults = JumpReLUSAE.optim_defaults(sae.cfg)
    assert defaults.lr == pytest.approx(8e-4 * (2**14 / 8) ** 0.5) and defaults.betas == (0.0, 0.999)
    assert sae.lr_multipliers() == {"threshold": 0.1}


@pytest.mark.parametrize("bad", [{"l0_coef": -1.0}, {"threshold_init": -0.1}, {"bandwidth": 0.0}])
def test_bad_hyperparameters_name_the_field(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        JumpReLUConfig(d_in=4, d_sae=8, **bad)
