"""SAEBench's core formulas against hand computation on tensors of a few entries."""

import math

import pytest
import torch

from saekit.eval.bench.core_stats import (
    CoreTotals,
    explained_variance,
    l2_ratio_tokens,
    legacy_explained_variance_tokens,
    max_cosine_sim,
    misc_metrics,
    weight_metrics,
)
from saekit.sae import build


def test_l2_ratio_divides_a_tiny_norm_by_one():
    x = torch.tensor([[3.0, 4.0], [0.0, 1e-5]])
    x_hat = torch.tensor([[0.0, 2.5], [1.0, 0.0]])
    assert l2_ratio_tokens(x, x_hat).tolist() == pytest.approx([0.5, 1.0])


def test_legacy_explained_variance_is_a_per_token_ratio_about_the_batch_mean():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean token [2, 0]: each token is 1 away
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    assert legacy_explained_variance_tokens(x, x_hat).tolist() == pytest.approx([0.0, 1.0])


def test_explained_variance_is_saebenchs_variance_about_zero():
    # batches' mean ||x||² 2 and 4, mean residuals 1 and 0, d = 2: 1 − 0.5 / (3 − (3/2)²)
    assert explained_variance([2.0, 4.0], [1.0, 0.0], 2) == pytest.approx(1 - 0.5 / 0.75)


def test_core_totals_match_the_hand_computation():
    totals = CoreTotals(d_sae=3)
    x = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])  # one context of two positions
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    codes = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    totals.update(x, x_hat, codes)
    got = totals.result(d=2)
    assert got["l2_norm_in"] == pytest.approx(2.0)
    assert got["l2_norm_out"] == pytest.approx((math.sqrt(2) + 3) / 2)
    assert got["l2_ratio"] == pytest.approx((math.sqrt(2) + 1) / 2)
    assert got["l0"] == 1.0 and got["l1"] == pytest.approx(1.5)
    assert got["mse"] == pytest.approx((1 / 2 + 0) / 2)  # each token's squared error over the batch's 2 tokens
    assert got["cossim"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert got["relative_reconstruction_bias"] == pytest.approx(5.5 / 5.0)  # E||x̂||² / E[x·x̂]
    assert got["explained_variance"] == pytest.approx(1 - 0.5 / (5 - 2.5**2))
    assert got["explained_variance_legacy"] == pytest.approx(0.5)
    assert got["feature_density"].tolist() == [0.5, 0.0, 0.5]
    cah = got["consistent_activation_heuristic"].tolist()
    assert cah[0] == 1.0 and math.isnan(cah[1]) and cah[2] == 1.0


def test_relative_reconstruction_bias_is_a_mean_over_batches():
    totals = CoreTotals(d_sae=1)
    x = torch.tensor([[[1.0, 0.0]]])
    totals.update(x, torch.tensor([[2.0, 0.0]]), torch.ones(1, 1))  # 4 / 2
    totals.update(x, torch.tensor([[0.5, 0.0]]), torch.ones(1, 1))  # 0.25 / 0.5
    assert totals.result(d=2)["relative_reconstruction_bias"] == pytest.approx((2.0 + 0.5) / 2)


def test_misc_metrics_of_four_densities():
    density = torch.tensor([0.0, 0.005, 0.05, 0.5])
    got = misc_metrics(density, torch.tensor([0.2, 0.4]), torch.tensor([0.1, 0.3]))
    assert got["freq_over_1_percent"] == 0.5 and got["freq_over_10_percent"] == 0.25 and got["frac_alive"] == 0.75
    assert got["normalized_freq_over_1_percent"] == pytest.approx(0.55 / 0.555)
    assert got["normalized_freq_over_10_percent"] == pytest.approx(0.5 / 0.555)
    assert got["average_max_encoder_cosine_sim"] == pytest.approx(0.3)
    assert got["average_max_decoder_cosine_sim"] == pytest.approx(0.2)
    assert misc_metrics(torch.zeros(2), None, torch.zeros(2))["normalized_freq_over_1_percent"] == 0.0


def test_max_cosine_sim_leaves_each_row_out():
    rows = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    assert max_cosine_sim(rows, chunk=2).tolist() == pytest.approx([1 / math.sqrt(2)] * 3)


def test_weight_metrics_of_an_sae_a_gated_sae_and_a_transcoder():
    relu = build("relu", d_in=4, d_sae=6, seed=0)
    got = weight_metrics(relu)
    assert got.encoder_norm.tolist() == pytest.approx(relu.W_enc.detach().norm(dim=0).tolist())
    assert got.encoder_bias.tolist() == pytest.approx(relu.b_enc.detach().tolist())
    cos = torch.nn.functional.cosine_similarity(relu.W_enc.detach().T, relu.W_dec.detach(), dim=1)
    assert got.encoder_decoder_cosine_sim.tolist() == pytest.approx(cos.tolist())
    gated = build("gated", d_in=4, d_sae=6, seed=0)
    with torch.no_grad():
        gated.b_mag.fill_(0.5)
    assert weight_metrics(gated).encoder_bias.tolist() == [0.5] * 6
    transcoder = build("relu_transcoder", d_in=4, d_sae=6, d_out=5, seed=0)
    got = weight_metrics(transcoder)
    assert got.encoder_decoder_cosine_sim is None and got.max_encoder_cosine_sim is None
    assert got.max_decoder_cosine_sim.shape == (6,)
