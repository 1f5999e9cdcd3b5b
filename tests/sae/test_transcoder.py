"""Transcoders against hand computation (encode, output with the skip term, loss, the skip gradient),
their configuration, and a planted sparse map from one site to another recovered through the engine."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.errors import ConfigError, DataError
from saekit.eval.recovery import feature_recovery
from saekit.sae import build, get
from saekit.sae.transcoder import saelens_name
from saekit.sources.synthetic import SyntheticSource
from saekit.training import train
from saekit.types import ActBatch, StepCtx

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
Y = torch.tensor([[6.0, 2.0, 14.0], [2.6, 1.2, 6.3]])


def hand_weights(name: str, **hparams):
    """A transcoder d_in = 2 -> d_out = 3 with two latents and weights small enough to follow by hand:
    pre = x W_enc + b_enc is [5.5, −1] for x = [1, 2] and [2.5, −0.5] for x = [0, 1]."""
    sae = build(name, d_in=2, d_out=3, d_sae=2, skip=True, **hparams)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.5]]))
        sae.b_enc.copy_(torch.tensor([0.5, -1.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
        sae.b_dec.copy_(torch.tensor([0.1, 0.2, 0.3]))
        sae.W_skip.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    return sae


@pytest.mark.parametrize("name", ["relu_transcoder", "topk_transcoder", "batch_topk_transcoder", "jumprelu_transcoder"])
def test_output_is_the_decoded_codes_plus_the_skip_term_by_hand(name):
    extra = {"k": 1, "aux_coef": 0.0} if "topk" in name else {}
    sae = hand_weights(name, **extra)
    with torch.no_grad():
        if name == "jumprelu_transcoder":
            sae.threshold.copy_(torch.tensor([5.0, 0.0]))  # 5.5 passes, 2.5 does not
        if name == "batch_topk_transcoder":
            sae.threshold.copy_(torch.tensor([1.0, 1.0]))
        codes = sae.encode(X)
        expected = torch.tensor([[5.5, 0.0], [0.0 if name == "jumprelu_transcoder" else 2.5, 0.0]])
        torch.testing.assert_close(codes, expected)
        # ŷ = f W_dec + b_dec + x W_skipᵀ, with x W_skipᵀ = [1, 2, 3] and [0, 1, 1]
        skip = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 1.0]])
        torch.testing.assert_close(sae.skip(X), skip)
        y_hat = expected[:, :1] * torch.tensor([1.0, 0.0, 2.0]) + torch.tensor([0.1, 0.2, 0.3]) + skip
        torch.testing.assert_close(sae(X), y_hat)
        torch.testing.assert_close(y_hat[0], torch.tensor([6.6, 2.2, 14.3]))


def test_relu_transcoder_loss_and_skip_gradient_by_hand():
    sae = hand_weights("relu_transcoder", l1_coef=0.1)
    out = sae.loss(ActBatch(X[:1], target=Y[:1]), StepCtx())
    # error [0.6, 0.2, 0.3]: 0.49; L1: 5.5 · ||W_dec[0]|| = 5.5 · √5
    assert out.terms["mse"].item() == pytest.approx(0.49, rel=1e-5)
    assert out.terms["l1"].item() == pytest.approx(5.5 * math.sqrt(5), rel=1e-6)
    assert out.loss.item() == pytest.approx(0.49 + 0.1 * 5.5 * math.sqrt(5), rel=1e-5)
    out.loss.backward()
    # d/dW_skip ||ŷ − y||² = 2 (ŷ − y)ᵀ x
    torch.testing.assert_close(sae.W_skip.grad, 2 * torch.tensor([[0.6], [0.2], [0.3]]) * torch.tensor([[1.0, 2.0]]))


def test_topk_transcoder_loss_compares_with_the_target_by_hand():
    sae = hand_weights("topk_transcoder", k=1, aux_coef=0.0)
    out = sae.loss(ActBatch(X, target=Y), StepCtx())
    # row 0 misses by [0.6, 0.2, 0.3] (0.49), row 1 is exact: mean 0.245
    assert out.terms["mse"].item() == pytest.approx(0.245, rel=1e-5)
    assert out.loss.item() == pytest.approx(0.245, rel=1e-5)
    torch.testing.assert_close(out.x_hat, torch.tensor([[6.6, 2.2, 14.3], [2.6, 1.2, 6.3]]))


def test_jumprelu_transcoder_loss_by_hand():
    sae = hand_weights("jumprelu_transcoder", l0_coef=0.5)
    with torch.no_grad():
        sae.threshold.copy_(torch.tensor([6.0, 0.0]))  # nothing fires: ŷ = b_dec + x W_skipᵀ
    out = sae.loss(ActBatch(X[:1], target=Y[:1]), StepCtx())
    error = torch.tensor([6.0, 2.0, 14.0]) - torch.tensor([1.1, 2.2, 3.3])
    assert out.loss.item() == pytest.approx(float(error.pow(2).sum()), rel=1e-5)
    assert out.terms["l0"].item() == 0


def test_the_skip_connection_starts_at_zero_and_exists_only_when_asked():
    with_skip = build("topk_transcoder", d_in=8, d_out=5, d_sae=16, k=2, skip=True, seed=0)
    assert with_skip.W_skip.shape == (5, 8) and not with_skip.W_skip.any()
    without = build("topk_transcoder", d_in=8, d_out=5, d_sae=16, k=2, seed=0)
    assert "W_skip" not in without.state_dict() and without.skip(torch.ones(3, 8)) is None
    x = torch.randn(4, 8)
    torch.testing.assert_close(with_skip(x), without(x))  # the same draw: a zero skip adds nothing


def test_d_out_defaults_to_d_in_and_is_checked():
    assert build("relu_transcoder", d_in=8, d_sae=16).d_out == 8
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="d_out"):
            build("relu_transcoder", d_in=8, d_sae=16, d_out=bad)
    with pytest.raises(ConfigError, match="skip"):
        build("relu_transcoder", d_in=8, d_sae=16, skip="yes")


def test_saelens_names_follow_the_skip_field():
    assert saelens_name("transcoder", True) == "skip_transcoder"
    assert saelens_name("jumprelu_transcoder", True) == "jumprelu_skip_transcoder"
    assert saelens_name("transcoder", False) == "transcoder"
    for name in ("topk_transcoder", "batch_topk_transcoder", "relu_transcoder", "jumprelu_transcoder"):
        cls = get(name)
        assert cls.transcoder and not cls.apply_b_dec_to_input and "W_enc" in cls.ratio_params


# ---------------------------------------------------------------------------------------------
# A planted sparse map


def planted_pair(n: int, d_out: int = 24, seed: int = 0):
    """x = f A from planted sparse features f (the synthetic source's), and y = f B: the same features
    through other directions B [n_features, d_out] of another width; returns (x, y, B)."""
    source = SyntheticSource(d=32, n_features=96, mean_active=3, seed=seed)
    sample = source.sample_with_codes(n, seed=seed)
    B = torch.randn(96, d_out, generator=torch.Generator().manual_seed(seed + 1))
    B = B / B.norm(dim=-1, keepdim=True)
    return sample.x, sample.codes @ B, B


def fvu(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["topk_transcoder", "batch_topk_transcoder"])
def test_a_transcoder_recovers_a_planted_sparse_map(name):
    """Trained through the engine on x (site "in") and y (site "out"), the decoder rows find the planted
    output directions B, and the output is reconstructed from the input alone."""
    x, y, B = planted_pair(65536)
    sae = build(name, d_in=32, d_out=24, d_sae=192, k=3, seed=0)
    sae.metadata.update(site="in", site_out="out")
    sae = train(sae, {"in": x * 3.0, "out": y * 0.5}, steps=1500, batch_size=512, seed=0, progress=False).sae
    recovery = feature_recovery(sae, B)
    print(name, recovery)
    assert recovery.recovered >= 0.9 and recovery.mmcs >= 0.95, recovery
    with torch.no_grad():
        # 0.165 for TopK, whose k = 3 cuts the tokens with more planted features; under 0.1 for BatchTopK
        assert fvu(y[:4096] * 0.5, sae(x[:4096] * 3.0)) < 0.2


def test_a_transcoder_learns_a_planted_map_quickly():
    """A short run: the input and output sites' factors differ (3 and 0.5 on top of the data's own),
    and the transcoder still writes the output site's raw units."""
    x, y, B = planted_pair(8192)
    sae = build("topk_transcoder", d_in=32, d_out=24, d_sae=192, k=3, seed=0)
    sae.metadata.update(site="in", site_out="out")
    sae = train(sae, {"in": x * 3.0, "out": y * 0.5}, steps=150, batch_size=256, seed=0, progress=False).sae
    assert sae.metadata["site_out"] == "out" and sae.metadata["normalization_factor_out"] != sae.metadata["normalization_factor"]
    with torch.no_grad():
        assert fvu(y[:2048] * 0.5, sae(x[:2048] * 3.0)) < 0.5
    assert feature_recovery(sae, B).mmcs > 0.6  # random rows score about 0.35 here


def test_a_skip_transcoder_learns_the_dense_linear_part():
    """y = f B + x M: the skip connection takes the linear part M, the latents the sparse rest."""
    x, y, _ = planted_pair(8192)
    M = 0.3 * torch.randn(32, 24, generator=torch.Generator().manual_seed(9))
    y = y + x @ M
    runs = {}
    for skip in (False, True):
        sae = build("topk_transcoder", d_in=32, d_out=24, d_sae=192, k=3, seed=0, skip=skip)
        sae.metadata.update(site="in", site_out="out")
        runs[skip] = train(sae, {"in": x, "out": y}, steps=150, batch_size=256, seed=0, progress=False).sae
    with torch.no_grad():
        errors = {skip: fvu(y[:2048], sae(x[:2048])) for skip, sae in runs.items()}
        cos = torch.nn.functional.cosine_similarity(runs[True].W_skip.t().flatten(), M.flatten(), dim=0)
    assert errors[True] < errors[False], errors
    assert cos > 0.8, cos


def test_a_source_without_the_output_site_is_refused():
    x, y, _ = planted_pair(512)
    sae = build("topk_transcoder", d_in=32, d_out=24, d_sae=64, k=3)
    sae.metadata.update(site="in", site_out="elsewhere")
    with pytest.raises(ConfigError, match=r"reconstructs site 'elsewhere', but the activation source provides \['in', 'out'\]"):
        train(sae, {"in": x, "out": y}, steps=1, batch_size=64, progress=False)
    sae = build("topk_transcoder", d_in=32, d_out=20, d_sae=64, k=3)
    sae.metadata.update(site="in", site_out="out")
    with pytest.raises(DataError, match=r"d_out=20 but activations at its output site 'out' have width 24"):
        train(sae, {"in": x, "out": y}, steps=1, batch_size=64, progress=False)
