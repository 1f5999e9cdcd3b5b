"""g-SAE (gradient_topk): the selection score by hand, the no-gradient fallback, and the evidence that
gradient-aware selection keeps what matters downstream better than TopK at equal k."""

import pytest
import torch
from readout_task import ReadoutSource

from saekit.errors import DataError
from saekit.sae import build
from saekit.sae.gradient_topk import GradientTopKConfig, GradientTopKSAE, gradient_scores
from saekit.training import train
from saekit.types import ActBatch, StepCtx

pytestmark = pytest.mark.usefixtures("one_thread")


def hand_sae(beta: float) -> GradientTopKSAE:
    sae = GradientTopKSAE(GradientTopKConfig(d_in=2, d_sae=3, k=1, beta=beta))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2, 3))  # z = ReLU(x) on latents 0, 1; latent 2 never fires
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


X = torch.tensor([[2.0, 0.5]])  # z = [2, 0.5, 0]: TopK with k=1 keeps latent 0
G = torch.tensor([[0.1, 3.0]])  # the loss moves along latent 1: effects |W_dec g| = [0.1, 3, 2.46]


def test_scores_by_hand():
    z = torch.tensor([[2.0, 0.5, 0.0]])
    # effects / max effect = [0.1/3, 1, 0.82]; s = z (1 + β e)
    expected = torch.tensor([[2.0 * (1 + 4 * 0.1 / 3), 0.5 * (1 + 4 * 1.0), 0.0]])
    torch.testing.assert_close(gradient_scores(z, X, G, hand_sae(4.0).W_dec, 4.0, True), expected)
    # unnormalised: effects times ||x|| = sqrt(4.25)
    n = 4.25**0.5
    unnormalised = torch.tensor([[2.0 * (1 + 4 * 0.1 * n), 0.5 * (1 + 4 * 3.0 * n), 0.0]])
    torch.testing.assert_close(gradient_scores(z, X, G, hand_sae(4.0).W_dec, 4.0, False), unnormalised)


@torch.no_grad()
def test_selection_follows_the_gradient_and_keeps_z_values():
    # β = 4: scores [2.27, 2.5, 0] -> latent 1 wins, with its value z = 0.5 (not its score)
    assert torch.equal(hand_sae(4.0).encode_with_grad(X, G), torch.tensor([[0.0, 0.5, 0.0]]))
    # β = 1: scores [2.07, 1.0, 0] -> latent 0 stays
    assert torch.equal(hand_sae(1.0).encode_with_grad(X, G), torch.tensor([[2.0, 0.0, 0.0]]))
    # without a gradient, or with β = 0: plain TopK on z
    assert torch.equal(hand_sae(4.0).encode(X), torch.tensor([[2.0, 0.0, 0.0]]))
    assert torch.equal(hand_sae(0.0).encode_with_grad(X, G), torch.tensor([[2.0, 0.0, 0.0]]))
    # a gradient scaled by any positive factor selects the same latents (normalised effects)
    assert torch.equal(hand_sae(4.0).encode_with_grad(X, 1e-6 * G), hand_sae(4.0).encode_with_grad(X, G))


def test_loss_uses_the_gradient_of_the_batch_and_trains_values_only():
    sae = hand_sae(4.0)
    out = sae.loss(ActBatch(X, G), StepCtx())
    assert torch.equal(out.codes.to_dense().detach(), torch.tensor([[0.0, 0.5, 0.0]]))
    # x̂ = 0.5·[0, 1] = [0, 0.5]; ||x − x̂||² = 4
    torch.testing.assert_close(out.terms["mse"], torch.tensor(4.0))
    out.loss.backward()
    # only the kept latent's decoder row learns: dL/dW_dec[1] = 2 z_1 (x̂ − x) = [−2, 0]
    torch.testing.assert_close(sae.W_dec.grad, torch.tensor([[0.0, 0.0], [-2.0, 0.0], [0.0, 0.0]]))


def test_gradient_of_the_wrong_shape_is_named():
    with pytest.raises(DataError, match="gradient of shape"):
        hand_sae(1.0).encode_with_grad(X, torch.zeros(1, 3))


def test_beta_equal_zero_is_topk_exactly():
    topk = build("topk", d_in=8, d_sae=32, k=3, seed=0)
    g_sae = build("gradient_topk", d_in=8, d_sae=32, k=3, beta=0.0, seed=0)
    x, g = torch.randn(20, 8), torch.randn(20, 8)
    with torch.no_grad():
        assert torch.equal(topk.encode(x), g_sae.encode_with_grad(x, g))


def test_training_without_gradients_warns():
    from saekit.sources.synthetic import SyntheticSource

    with pytest.warns(UserWarning, match="downstream gradient"):
        train(build("gradient_topk", d_in=8, d_sae=16, k=2), SyntheticSource(d=8, n_features=16), steps=2, batch_size=32, progress=False, norm_estimation_tokens=32)


def test_g_sae_keeps_the_read_out_better_than_topk_at_equal_k():
    """Small features decide the read-out, large ones do not (tests/readout_task.py). At k = 3, TopK
    spends its slots on the large features; the g-SAE, trained and applied with the read-out's
    gradient, keeps the read-out's prediction far better (numbers in docs/architectures.md, "g-SAE")."""
    task = ReadoutSource()
    settings = dict(steps=250, batch_size=256, progress=False, norm_estimation_tokens=1024)
    topk = train(build("topk", d_in=32, d_sae=128, k=3, seed=0, lr=3e-3), task, **settings).sae
    g_sae = train(build("gradient_topk", d_in=32, d_sae=128, k=3, beta=4.0, seed=0, lr=3e-3), task, **settings).sae
    x = task.held_out(4096)
    with torch.no_grad():
        base = task.downstream(x, topk(x))
        ours = task.downstream(x, g_sae.decode(g_sae.encode_with_grad(x, task.grad(x))))
        assert (topk.encode(x) != 0).sum(-1).max() <= 3 and (g_sae.encode_with_grad(x, task.grad(x)) != 0).sum(-1).max() <= 3
    assert ours.ce < base.ce - 0.3, (ours, base)
    assert ours.accuracy > base.accuracy + 0.2, (ours, base)


@pytest.mark.parametrize("normalize", [True, False])
def test_selection_does_not_depend_on_the_activation_scale(normalize):
    """x -> c·x divides d loss/dx by c: the latents chosen are the same at any scale, so an SAE trained
    on normalised activations and folded back to raw units selects as it did in training."""
    g = torch.Generator().manual_seed(0)
    sae = build("gradient_topk", d_in=8, d_sae=32, k=3, beta=2.0, normalize_grad=normalize, seed=0)
    with torch.no_grad():
        sae.b_enc.uniform_(-0.1, 0.1, generator=g)
        sae.b_dec.uniform_(-0.5, 0.5, generator=g)
    x, grad = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    folded = build("gradient_topk", d_in=8, d_sae=32, k=3, beta=2.0, normalize_grad=normalize, seed=0)
    c = 37.0
    with torch.no_grad():
        folded.load_state_dict(sae.state_dict())
        folded.b_enc.mul_(c)
        folded.b_dec.mul_(c)
        plain, scaled = sae.encode_with_grad(x, grad), folded.encode_with_grad(c * x, grad / c)
    assert torch.equal(plain != 0, scaled != 0)
    assert not torch.equal(plain != 0, sae.encode(x) != 0), "vacuous: the gradient changed no choice"
