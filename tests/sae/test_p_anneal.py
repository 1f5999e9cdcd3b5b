"""p-annealing: the schedule of p and the rescaled coefficient, step by step against a plain replay,
in the training log, and the sparsity it buys against ReLU + L1 (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import saekit
from saekit.eval.evaluate import evaluate
from saekit.sae import build
from saekit.sae import functional as F
from saekit.sae.p_anneal import PAnnealConfig, p_schedule
from saekit.types import ActBatch, StepCtx

pytestmark = pytest.mark.usefixtures("one_thread")

SCHED = dict(p_start=1.0, p_end=0.2, n_values=5, anneal_start=20)


@pytest.mark.parametrize(
    "step, p, next_p, next_step",
    # a = 20; values 1, .8, .6, .4, .2 from steps 20, 40, 60, 80, 100 (the last one is the end of the run).
    [(0, 1.0, 0.8, 40), (39, 1.0, 0.8, 40), (40, 0.8, 0.6, 60), (79, 0.6, 0.4, 80), (80, 0.4, 0.2, 100), (99, 0.4, 0.2, 100)],
)
def test_schedule_hand_computed(step, p, next_p, next_step) -> None:
    got = p_schedule(step, 100, **SCHED)
    assert got.p == pytest.approx(p) and got.next_p == pytest.approx(next_p) and got.next_step == next_step


def test_schedule_start_is_capped_and_one_value_is_constant() -> None:
    # anneal_start 1000 > half of 40 steps: a = 20, values from steps 20, 25, 30, 35, 40.
    assert p_schedule(24, 40, **{**SCHED, "anneal_start": 1000}).p == pytest.approx(1.0)
    assert p_schedule(25, 40, **{**SCHED, "anneal_start": 1000}).p == pytest.approx(0.8)
    assert p_schedule(10**6, 40, **{**SCHED, "n_values": 1}).p == 1.0


def test_lp_pow_hand_computed_and_finite_gradient_at_zero() -> None:
    codes = torch.tensor([[0.25, 0.0, 1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    value = F.lp_pow(codes, 0.5)
    assert value.item() == pytest.approx((0.5 + 1.0 + 0.0) / 2)
    value.backward()
    assert torch.isfinite(codes.grad).all()
    torch.testing.assert_close(codes.grad, torch.tensor([[0.5 * 0.5 * 0.25**-0.5, 0.0, 0.25], [0.0, 0.0, 0.0]]))


def plain_lp(codes: torch.Tensor, p: float) -> float:
    return float(sum(float(v) ** p for v in codes.flatten() if v > 0)) / codes.shape[0]


def test_terms_follow_the_schedule_and_the_rescale_rule() -> None:
    total, window = 60, 3
    sae = build("p_anneal", d_in=8, d_sae=32, seed=0, sparsity_coef=0.05, n_p_values=4, anneal_start=10, rescale_batches=window)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    p_of, coef_of, codes_of = [], [], []
    for step in range(total):
        ctx = StepCtx(step=step, total_steps=total)
        out = sae.loss(ActBatch(torch.randn(32, 8, generator=g)), ctx)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sae.after_step(out, ctx)
        p_of.append(out.terms["p"].item())
        coef_of.append(out.terms["sparsity_coef"].item())
        codes_of.append(out.codes.to_dense().detach())
    # a = 10; values 1, 11/15, 7/15, 0.2 from steps 10, 26, 43, 60: p changes at 26 and 43.
    expected_p = [1.0] * 26 + [1 - 0.8 / 3] * 17 + [1 - 1.6 / 3] * 17
    assert p_of == pytest.approx(expected_p)
    # λ: 0.05 until step 26; at each change p → p′, times mean Σf^p / mean Σf^p′ over the 3 batches before.
    coef, expected_coef = 0.05, []
    for step in range(total):
        if step in (26, 43):
            before = range(step - window, step)
            old, new = p_of[step - 1], p_of[step]
            coef *= np.mean([plain_lp(codes_of[s], old) for s in before]) / np.mean([plain_lp(codes_of[s], new) for s in before])
        expected_coef.append(coef)
    assert coef_of == pytest.approx(expected_coef, rel=1e-5)
    assert coef_of[-1] < 0.05  # lower p makes Σf^p of codes below 1 larger, so λ shrinks


def test_the_training_log_shows_the_schedule(tmp_path) -> None:
    data = saekit.SyntheticSource(d=8, n_features=16, mean_active=2, seed=0)
    sae = build("p_anneal", d_in=8, d_sae=16, seed=0, n_p_values=3, anneal_start=4)
    saekit.train(sae, data, steps=20, batch_size=32, log_every=1, norm_estimation_tokens=64, progress=False, out_dir=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # a = 4; values 1, 0.6, 0.2 from steps 4, 12, 20. A record at step s holds the terms of step s − 1.
    assert [r["p"] for r in records] == pytest.approx([1.0] * 12 + [0.6] * 8)
    coefs = [r["sparsity_coef"] for r in records]
    assert len(set(coefs[:12])) == 1 and coefs[0] == pytest.approx(0.1)
    assert len(set(coefs[12:])) == 1 and coefs[12] != coefs[11]
    assert sae.provenance["final_metrics"]["p"] == pytest.approx(0.6)


def test_resumed_state_lives_in_the_state_dict() -> None:
    sae = build("p_anneal", d_in=8, d_sae=16, seed=0, rescale_batches=4)
    assert set(sae.state_dict()) == {"W_enc", "W_dec", "b_enc", "b_dec", "sparsity_coef", "lp_history"}
    assert sae.lp_history.shape == (4, 2)


@pytest.mark.parametrize(
    "bad", [{"sparsity_coef": -1.0}, {"p_end": 0.0}, {"p_start": 1.5}, {"n_p_values": 0}, {"anneal_start": -1}, {"rescale_batches": 0}]
)
def test_bad_hyperparameters_name_the_field(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        PAnnealConfig(d_in=4, d_sae=8, **bad)


@pytest.mark.slow
def test_lower_l0_than_relu_at_equal_fvu() -> None:
    """ReLU + L1 at three coefficients draws an L0-vs-FVU curve; p-annealing lies well below it."""
    data = saekit.SyntheticSource(d=32, n_features=128, mean_active=4, seed=0)
    relus = [build("relu", d_in=32, d_sae=256, l1_coef=c, seed=0) for c in (0.1, 0.2, 0.4)]
    panneal = build("p_anneal", d_in=32, d_sae=256, sparsity_coef=0.2, anneal_start=200, seed=0)
    saekit.train([*relus, panneal], data, steps=1000, batch_size=512, seed=0, progress=False)
    held_out = data.sample(8192, seed=1)
    curve = sorted((m["fvu"], m["l0"]) for m in (evaluate(s, held_out) for s in relus))
    ours = evaluate(panneal, held_out)
    print(curve, ours["fvu"], ours["l0"])
    assert curve[0][0] <= ours["fvu"] <= curve[-1][0]
    relu_l0 = float(np.interp(ours["fvu"], [c[0] for c in curve], [c[1] for c in curve]))
    assert ours["l0"] < 0.6 * relu_l0
