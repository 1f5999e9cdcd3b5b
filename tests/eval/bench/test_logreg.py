"""Logistic regression by Newton's method: a case solved by hand, the optimality condition of the L2
objective, and the refusals of unusable inputs."""

import math

import pytest
import torch

from saekit.errors import ConfigError, DataError
from saekit.eval.bench.logreg import fit_logistic


def test_unpenalised_fit_matches_the_log_odds_computed_by_hand():
    # x = 0: one positive of four -> logit b = log(1/3); x = 1: three of four -> b + w = log 3.
    x = torch.tensor([[0.0], [0.0], [0.0], [0.0], [1.0], [1.0], [1.0], [1.0]])
    y = torch.tensor([1, 0, 0, 0, 1, 1, 1, 0])
    probe = fit_logistic(x, y, C=math.inf)
    assert probe.converged
    assert probe.bias == pytest.approx(math.log(1 / 3), abs=1e-9)
    assert probe.weight.item() == pytest.approx(2 * math.log(3), abs=1e-9)
    assert probe.accuracy(x, y) == pytest.approx(6 / 8)


def test_l2_fit_satisfies_the_optimality_condition():
    # At the minimum of Σ logloss + ‖w‖²/(2C): Xᵀ(p − y) + w/C = 0 and Σ(p − y) = 0 (free intercept).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64) * 3
    y = (x[:, 0] - x[:, 1] + torch.randn(200, generator=g, dtype=torch.float64) > 0).long()
    probe = fit_logistic(x, y, C=0.5)
    p = torch.sigmoid(probe.logits(x))
    grad_w = x.T @ (p - y.double()) + probe.weight / 0.5
    assert probe.converged
    assert grad_w.abs().max().item() < 1e-6
    assert (p - y.double()).sum().abs().item() < 1e-6


def test_separable_data_stays_finite_with_a_penalty():
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    y = torch.tensor([0, 0, 1, 1])
    probe = fit_logistic(x, y)
    assert probe.converged and math.isfinite(probe.weight.item()) and probe.accuracy(x, y) == 1.0


def test_constant_labels_and_duplicate_columns_still_fit():
    x = torch.ones(6, 3)
    assert fit_logistic(x, torch.ones(6, dtype=torch.long)).accuracy(x, torch.ones(6)) == 1.0


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "error", "words"),
    [
        (torch.zeros(3, 2), torch.zeros(4), {}, DataError, "rows [n, d] and labels [n]"),
        (torch.tensor([[float("nan")]]), torch.zeros(1), {}, DataError, "NaN"),
        (torch.zeros(2, 1), torch.tensor([0, 2]), {}, DataError, "0 or 1"),
        (torch.zeros(2, 1), torch.tensor([0, 1]), {"C": 0.0}, ConfigError, "C must be positive"),
    ],
)
def test_bad_inputs_are_named(x, y, kwargs, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        fit_logistic(x, y, **kwargs)


def test_a_wide_badly_scaled_problem_reaches_the_optimum():
    # More columns than rows (separable) with column scales from 0.1 to 100: the conjugate-gradient
    # steps must still reach the stationary point of the penalised objective.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(120, 300, generator=g, dtype=torch.float64) * torch.logspace(-1, 2, 300, dtype=torch.float64)
    y = (torch.rand(120, generator=g) < 0.2).long()
    probe = fit_logistic(x, y)
    p = torch.sigmoid(probe.logits(x))
    assert probe.converged and probe.accuracy(x, y) == 1.0
    assert (x.T @ (p - y.double()) + probe.weight).abs().max().item() < 1e-5
