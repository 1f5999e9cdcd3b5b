"""The optimiser: fused Adam where it can run, with the plain per-tensor Adam's results."""

from __future__ import annotations

import copy

import pytest
import torch

from saekit.sae import build, list_architectures
from saekit.training.optim import apply_update, fused_supported, make_optimizer
from saekit.types import ActBatch, StepCtx

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", list_architectures())
def test_fused_adam_steps_equal_plain_adam_steps(name):
    fused_sae = build(name, d_in=12, d_sae=40, seed=0, lr=3e-3)
    plain_sae = copy.deepcopy(fused_sae)
    fused = make_optimizer(fused_sae)
    assert fused.param_groups[0]["fused"] is True, "vacuous: the fused path was not taken"
    group = fused.param_groups[0]
    names = {id(p): n for n, p in fused_sae.named_parameters()}
    plain_params = dict(plain_sae.named_parameters())
    groups = [
        {"params": [plain_params[names[id(p)]] for p in g["params"]], "lr": g["lr"], "initial_lr": g["initial_lr"]}
        for g in fused.param_groups
    ]
    plain = torch.optim.Adam(groups, betas=group["betas"], eps=group["eps"])
    g = torch.Generator().manual_seed(0)
    start = {n: p.detach().clone() for n, p in fused_sae.named_parameters()}
    for step in range(5):
        x = torch.randn(64, 12, generator=g)
        for sae, opt in ((fused_sae, fused), (plain_sae, plain)):
            out = sae.loss(ActBatch(x), StepCtx(step=step, total_steps=5))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            apply_update(sae, opt, 1.0, 1.0)
    for (n, a), b in zip(fused_sae.named_parameters(), plain_sae.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    assert any(not torch.equal(start[n], p) for n, p in fused_sae.named_parameters()), "vacuous: nothing moved"


def test_fused_only_for_contiguous_floating_tensors_on_one_device():
    assert fused_supported([torch.zeros(3, 4), torch.zeros(4)])
    assert not fused_supported([torch.zeros(4, 3).t()])  # transposed: the fused kernel would misread it
    assert not fused_supported([torch.zeros(3, dtype=torch.int64)])


def test_parameters_with_a_learning_rate_multiplier_get_a_group_of_their_own():
    sae = build("jumprelu", d_in=12, d_sae=40, seed=0, lr=2e-3, threshold_lr_scale=0.25)
    opt = make_optimizer(sae)
    base, thresholds = opt.param_groups
    assert base["lr"] == 2e-3 and thresholds["lr"] == pytest.approx(5e-4)
    assert thresholds["params"] == [sae.threshold] and all(p is not sae.threshold for p in base["params"])
    out = sae.loss(ActBatch(torch.randn(64, 12, generator=torch.Generator().manual_seed(0))), StepCtx())
    out.loss.backward()
    apply_update(sae, opt, 0.5, None)  # the schedule scales every group from its own initial rate
    assert base["lr"] == 1e-3 and thresholds["lr"] == pytest.approx(2.5e-4)
