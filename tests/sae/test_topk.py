"""TopK SAE: hand-set weights give hand-computed codes; the loss is the documented formula."""

from __future__ import annotations

import pytest
import torch
from hand import set_weights_

from saekit.errors import ConfigError
from saekit.sae import build, get
from saekit.sae.topk import TopKConfig, TopKSAE
from saekit.types import ActBatch, StepCtx


def hand_sae(k: int) -> TopKSAE:
    return set_weights_(TopKSAE(TopKConfig(d_in=2, d_sae=3, k=k, aux_k=1)))


X = torch.tensor([[1.5, 1.0], [0.5, -1.0]])  # x − b_dec = [[1, 1], [0, −1]]; pre = [[1, 1.25, 1.5], [0, −0.75, −1.5]]


def test_encode_hand_computed() -> None:
    assert torch.equal(hand_sae(1).encode(X), torch.tensor([[0.0, 0.0, 1.5], [0.0, 0.0, 0.0]]))
    assert torch.equal(hand_sae(2).encode(X), torch.tensor([[0.0, 1.25, 1.5], [0.0, 0.0, 0.0]]))


def test_encode_is_per_token() -> None:
    sae = build("topk", d_in=8, d_sae=32, k=4, seed=0)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    batched = sae.encode(x)
    for i in range(5):
        assert torch.allclose(batched[i], sae.encode(x[i : i + 1])[0])
    assert torch.all((batched != 0).sum(-1) <= 4)


def test_loss_terms_match_independent_formula() -> None:
    sae = hand_sae(2)
    out = sae.loss(ActBatch(X), StepCtx())
    codes = torch.tensor([[0.0, 1.25, 1.5], [0.0, 0.0, 0.0]])
    x_hat = codes @ torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]) + torch.tensor([0.5, 0.0])
    mse = ((X - x_hat) ** 2).sum(1).mean()
    assert torch.equal(out.codes.to_dense(), codes)
    assert torch.allclose(out.x_hat, x_hat)
    assert out.terms["mse"].item() == pytest.approx(mse.item())
    assert out.terms["l0"].item() == pytest.approx(1.0)
    assert out.terms["aux_k"].item() == 0.0  # no dead mask
    assert out.loss.item() == pytest.approx(mse.item())


def test_aux_loss_with_a_dead_latent() -> None:
    sae = hand_sae(1)
    dead = torch.tensor([False, True, False])
    out = sae.loss(ActBatch(X), StepCtx(dead_mask=dead))
    # Dead latent 1 (pre 1.25 and −0.75 → ReLU 0) reconstructs the residual along W_dec[1] = e₂.
    residual = X - out.x_hat.detach()
    residual_hat = torch.tensor([[0.0, 1.25], [0.0, 0.0]])
    aux = ((residual_hat - residual) ** 2).sum() / ((residual - residual.mean(0)) ** 2).sum()
    assert out.terms["aux_k"].item() == pytest.approx(aux.item())
    assert out.loss.item() == pytest.approx(out.terms["mse"].item() + aux.item() / 32)


def test_defaults_and_flags() -> None:
    cfg = TopKConfig(d_in=4, d_sae=4 * 2**14)
    assert TopKSAE.optim_defaults(cfg).lr == pytest.approx(4e-4)  # 8e-4 at 2^14 latents, ∝ 1/sqrt(d_sae)
    assert TopKSAE.optim_defaults(TopKConfig(d_in=4, d_sae=8, k=2, lr=3e-3)).lr == 3e-3
    assert get("topk") is TopKSAE and TopKSAE.saelens_architecture == "topk"
    assert TopKSAE.unit_norm_decoder
    sae = build("topk", d_in=4, d_sae=8, k=3, seed=0)
    assert sae.extra_saelens_cfg()["k"] == 3
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(8))
    assert torch.allclose(sae.W_enc, sae.W_dec.t() * sae.cfg.init_encoder_norm)


@pytest.mark.parametrize("bad", [{"k": 0}, {"k": 9}, {"aux_k": 0}, {"aux_coef": -1.0}])
def test_bad_hyperparameters_name_the_field(bad: dict) -> None:
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        TopKConfig(d_in=4, d_sae=8, **{"k": 2, **bad})
    with pytest.raises(ConfigError, match=name):
        build("topk", d_in=4, d_sae=8, **{"k": 2, **bad})
