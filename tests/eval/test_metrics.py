import math

import pytest
import torch

from saekit.eval import metrics

# Hand example (3 tokens, d = 2):
#   x     = [1,0], [0,1], [1,1]        x̂ = [1,0], [0,0], [2,2]
#   x − x̂ = [0,0], [0,1], [-1,-1]      Σ||x − x̂||² = 0 + 1 + 2 = 3
#   x̄ = [2/3, 2/3];  Σ||x − x̄||² = 5/9 + 5/9 + 2/9 = 4/3       → FVU  = 3 / (4/3) = 9/4
#   MSE = 3 / (3·2) = 1/2;  Σ||x||² = 1 + 1 + 2 = 4             → NMSE = 3/4
#   cos per token: 1, 0 (x̂ = 0), 1                             → cos  = 2/3
#   ||x̂||/||x|| per token: 1, 0, 2                              → l2_ratio = 1
#   Σ||x̂||² = 1 + 0 + 8 = 9;  Σ x·x̂ = 1 + 0 + 4 = 5            → relative bias = 9/5
X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
X_HAT = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 2.0]])

# Codes (3 tokens, 4 latents): non-zeros per token 2, 1, 2 → L0 = 5/3;
# firing frequency = [2/3, 0, 0, 1] → dead = 2/4; dense(>0.1) = 2/4, dense(>0.7) = 1/4, dense(>1) = 0.
CODES = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 3.0], [1.0, 0.0, 0.0, 0.5]])


def test_hand_computed_reconstruction_metrics():
    assert metrics.fvu(X, X_HAT) == pytest.approx(9 / 4)
    assert metrics.mse(X, X_HAT) == pytest.approx(1 / 2)
    assert metrics.nmse(X, X_HAT) == pytest.approx(3 / 4)
    assert metrics.cosine(X, X_HAT) == pytest.approx(2 / 3)
    assert metrics.l2_ratio(X, X_HAT) == pytest.approx(1.0)
    assert metrics.relative_reconstruction_bias(X, X_HAT) == pytest.approx(9 / 5)


def test_hand_computed_sparsity_metrics():
    assert metrics.l0(CODES) == pytest.approx(5 / 3)
    torch.testing.assert_close(metrics.firing_frequency(CODES), torch.tensor([2 / 3, 0.0, 0.0, 1.0]))
    assert metrics.dead_fraction(CODES) == pytest.approx(0.5)
    assert metrics.dense_fraction(CODES) == pytest.approx(0.5)
    assert metrics.dense_fraction(CODES, threshold=0.7) == pytest.approx(0.25)
    assert metrics.dense_fraction(CODES, threshold=1.0) == 0.0  # strictly more than the threshold


def test_perfect_reconstruction():
    x = torch.randn(50, 8)
    assert metrics.fvu(x, x) == 0.0
    assert metrics.mse(x, x) == 0.0 and metrics.nmse(x, x) == 0.0
    assert metrics.cosine(x, x) == pytest.approx(1.0)
    assert metrics.l2_ratio(x, x) == pytest.approx(1.0)
    assert metrics.relative_reconstruction_bias(x, x) == pytest.approx(1.0)


def test_predicting_the_mean_token_explains_no_variance():
    x = torch.randn(40, 6) + 3.0
    assert metrics.fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)


def test_shrinkage_is_measured_by_the_relative_bias():
    x = torch.randn(30, 5)
    assert metrics.relative_reconstruction_bias(x, 0.5 * x) == pytest.approx(0.5)
    assert metrics.l2_ratio(x, 0.5 * x) == pytest.approx(0.5)
    assert metrics.cosine(x, 0.5 * x) == pytest.approx(1.0)


def test_fvu_does_not_centre_the_residual():
    # A constant offset is unexplained variance here; dictionary_learning's per-dimension variant,
    # which centres x − x̂, would call it perfect.
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # Σ||x − x̄||² = 2
    offset = torch.tensor([0.0, 1.0])  # Σ||x − x̂||² = 2 · 1
    assert metrics.fvu(x, x + offset) == pytest.approx(1.0)


def test_degenerate_denominators_give_nan():
    one_token = torch.tensor([[1.0, 2.0]])
    assert math.isnan(metrics.fvu(one_token, torch.zeros(1, 2)))
    zeros = torch.zeros(2, 3)
    assert math.isnan(metrics.nmse(zeros, zeros))
    assert math.isnan(metrics.l2_ratio(zeros, zeros))
    assert metrics.cosine(zeros, torch.ones(2, 3)) == 0.0


def test_density_histogram_by_hand():
    # log10 frequencies: dead, -9 (below the range: first bin), -3, about -0.3, 0 (the last bin holds f = 1)
    frequency = torch.tensor([0.0, 1e-9, 1e-3, 0.5, 1.0, 0.0])
    hist = metrics.density_histogram(frequency, bins_per_decade=2, lowest_decade=-4)
    assert hist["log10_edges"] == [-4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0]
    assert hist["counts"] == [1, 0, 1, 0, 0, 0, 0, 2]
    assert hist["dead"] == 2
