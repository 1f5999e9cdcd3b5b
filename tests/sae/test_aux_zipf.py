"""aux_zipf_loss (provisional reading, papers.md §3): hand-computed deficits and loss, its reduction
to AuxK, and the option on every TopK-family SAE."""

from __future__ import annotations

import pytest
import torch
from dense_reference import aux_zipf_loss

from saekit.comm import LOCAL
from saekit.sae import build
from saekit.sae import functional as F
from saekit.sae import sparse as S
from saekit.sae.topk import TopKConfig, TopKSAE
from saekit.types import ActBatch, StepCtx

pytestmark = pytest.mark.usefixtures("one_thread")


def test_zipf_deficit_hand_computed() -> None:
    # Ranks 1, 2, 3; Zipf shape 1, 1/2, 1/3 (sum 11/6) scaled to the total 0.75: targets 9/22, 9/44, 3/22.
    w = F.zipf_deficit(torch.tensor([0.6, 0.1, 0.05]), exponent=1.0)
    torch.testing.assert_close(w, torch.tensor([0.0, 1 - 0.1 * 44 / 9, 1 - 0.05 * 22 / 3]))
    # Rank follows density, not index; a latent that never fired has deficit 1.
    w = F.zipf_deficit(torch.tensor([0.0, 0.05, 0.6, 0.1]), exponent=1.0)
    assert w[0] == 1.0 and w[2] == 0.0
    assert torch.equal(F.zipf_deficit(torch.zeros(4), 1.0), torch.zeros(4))


def test_aux_zipf_loss_hand_computed() -> None:
    pre = torch.tensor([[5.0, 2.0, 1.0], [5.0, -1.0, 3.0]])
    residual = torch.tensor([[1.0, 1.0], [0.0, 2.0]])  # mean [0.5, 1.5], total variance 1
    W_dec = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    w1, w2 = 4.6 / 9, 1.9 / 3  # deficits of latents 1 and 2 (previous test); latent 0 is excluded
    # Token 0 keeps latents 1, 2 (values 2, 1); token 1 keeps 2 (3) and 1 (ReLU(−1) = 0).
    r_hat = torch.tensor([[2 * w1, 1 * w2], [0.0, 3 * w2]])
    expected = ((r_hat - residual) ** 2).sum() / 1.0
    weights = F.zipf_deficit(torch.tensor([0.6, 0.1, 0.05]), exponent=1.0)
    got = S.aux_loss(pre, lambda p: pre.reshape(-1)[p.flat], torch.zeros_like(residual), residual, weights, 2, W_dec, LOCAL)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_with_unit_deficits_it_is_aux_k() -> None:
    # Exponent 0: uniform target 1/6 each; latents at 0.25 are above it, the unused ones 1 short, so
    # the weights are AuxK's (1 on the dead latents, 0 elsewhere).
    density = torch.tensor([0.25, 0.0, 0.25, 0.0, 0.25, 0.25])
    assert torch.equal(F.zipf_deficit(density, exponent=0.0), (density == 0).float())


def hand_topk(coef: float) -> TopKSAE:
    sae = TopKSAE(TopKConfig(d_in=2, d_sae=3, k=1, aux_k=1, aux_zipf_coef=coef))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, 0.25, -0.5]))
        sae.b_dec.copy_(torch.tensor([0.5, 0.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    return sae


def test_topk_option_hand_computed() -> None:
    X = torch.tensor([[1.5, 1.0], [0.5, -1.0]])  # pre = [[1, 1.25, 1.5], [0, −0.75, −1.5]]
    # k = 1: codes [[0, 0, 1.5], [0, 0, 0]], densities [0, 0, 0.5]; latents 0 and 1 have deficit 1,
    # latent 2 none. The top underutilised latent of token 0 is 1 (1.25), of token 1 latent 0 (ReLU 0).
    # x̂ = [[1.4, 1.2], [0.5, 0]], residual [[0.1, −0.2], [0, −1]], centred sum of squares 0.325.
    expected = ((0 - 0.1) ** 2 + (1.25 + 0.2) ** 2 + 0 + 1.0) / 0.325
    out = hand_topk(0.5).loss(ActBatch(X), StepCtx())
    assert out.terms["aux_zipf"].item() == pytest.approx(expected, rel=1e-6)
    plain = hand_topk(0.0).loss(ActBatch(X), StepCtx())
    assert "aux_zipf" not in plain.terms
    assert out.loss.item() == pytest.approx(plain.loss.item() + 0.5 * expected, rel=1e-6)


@pytest.mark.parametrize("name", ["topk", "batch_topk", "feature_choice", "mutual_choice", "gradient_topk"])
def test_every_topk_family_sae_takes_the_option(name: str) -> None:
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    on = build(name, d_in=8, d_sae=32, k=2, seed=0, aux_zipf_coef=1.0)
    off = build(name, d_in=8, d_sae=32, k=2, seed=0)
    out_on, out_off = on.loss(ActBatch(x), StepCtx()), off.loss(ActBatch(x), StepCtx())
    zipf = out_on.terms["aux_zipf"]
    assert zipf > 0  # 32 latents, 128 kept entries: some latents are below a Zipf law
    assert out_on.loss.item() == pytest.approx(out_off.loss.item() + zipf.item(), rel=1e-5)
    out_on.loss.backward()
    assert on.W_enc.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [{"aux_zipf_coef": -1.0}, {"aux_zipf_exponent": -0.5}])
def test_bad_values_name_the_field(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        TopKConfig(d_in=4, d_sae=8, k=2, **bad)


def test_density_is_a_running_estimate_not_the_batch_alone() -> None:
    """The paper's utilisation is a latent's firing frequency over training, not in one batch: after a
    batch where latent 2 fired on half the tokens, a batch where it is silent must not call it unused."""
    sae = hand_topk(0.5)
    weight = sae.cfg.aux_zipf_ema
    first = torch.tensor([[1.5, 1.0], [0.5, -1.0]])  # codes [[0, 0, 1.5], [0, 0, 0]]: densities [0, 0, 0.5]
    out = sae.loss(ActBatch(first), StepCtx(step=0))
    sae.after_step(out, StepCtx(step=0))
    torch.testing.assert_close(sae.zipf_density, weight * torch.tensor([0.0, 0.0, 0.5]))
    torch.testing.assert_close(sae.zipf_seen, torch.tensor(weight))
    second = torch.tensor([[0.5, 1.5], [0.5, 1.5]])  # pre [[0, 1.75, 1], [0, 1.75, 1]]: latent 1 fires on both
    batch = torch.tensor([0.0, 1.0, 0.0])
    running = (weight * (1 - weight) * torch.tensor([0.0, 0.0, 0.5]) + weight * batch) / (weight * (1 - weight) + weight)
    out = sae.loss(ActBatch(second), StepCtx(step=1))
    with torch.no_grad():
        pre = (second - sae.b_dec) @ sae.W_enc + sae.b_enc
        expected = aux_zipf_loss(pre, (second - out.x_hat).detach(), running, 1, sae.W_dec, 1.0)
        batch_only = aux_zipf_loss(pre, (second - out.x_hat).detach(), batch, 1, sae.W_dec, 1.0)
    assert out.terms["aux_zipf"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() != pytest.approx(batch_only.item(), rel=1e-3)  # the two readings differ here


def test_running_density_is_training_state(tmp_path) -> None:
    from saekit.io import load_sae, save_sae

    sae = build("batch_topk", d_in=8, d_sae=32, k=2, seed=0, aux_zipf_coef=0.5)
    assert set(F.ZIPF_STATE) <= set(sae.state_dict())  # in checkpoints, so a resumed run continues it
    loaded = load_sae(save_sae(sae, tmp_path / "s"))  # but not in the folder SAELens reads
    assert torch.equal(loaded.zipf_seen, torch.zeros(()))
    assert set(F.ZIPF_STATE).isdisjoint(build("batch_topk", d_in=8, d_sae=32, k=2, seed=0).state_dict())


@pytest.mark.parametrize("unused", [{"aux_zipf_exponent": 2.0}, {"aux_zipf_ema": 0.1}])
def test_zipf_settings_without_the_loss_are_refused(unused: dict) -> None:
    with pytest.raises(ValueError, match=f"{next(iter(unused))} has no effect when aux_zipf_coef is 0"):
        TopKConfig(d_in=4, d_sae=8, k=2, **unused)
