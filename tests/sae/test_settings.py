"""Every setting of every architecture does something: each config field, moved from its default,
changes the training trajectory or the inference codes. A field an architecture declares but ignores
fails here; a new field must be listed below with a change that shows its effect."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saekit.sae import build, get, list_architectures
from saekit.training.optim import apply_update, make_optimizer
from saekit.types import ActBatch, StepCtx

pytestmark = pytest.mark.usefixtures("one_thread")

D_IN, D_SAE, STEPS, TOTAL = 8, 128, 6, 8
ZIPF_ON = {"aux_zipf_coef": 0.5}
TOPK = {
    "k": ({}, {"k": 3}),
    "aux_k": ({}, {"aux_k": 2}),
    "aux_coef": ({}, {"aux_coef": 0.5}),
    "aux_zipf_coef": ({}, ZIPF_ON),
    "aux_zipf_exponent": (ZIPF_ON, {**ZIPF_ON, "aux_zipf_exponent": 2.0}),
    "aux_zipf_ema": (ZIPF_ON, {**ZIPF_ON, "aux_zipf_ema": 0.5}),
    "init_encoder_norm": ({}, {"init_encoder_norm": 1.0}),
}
P_ANNEAL = {"anneal_start": 2, "n_p_values": 3}
# (with TOTAL = 40 for these architectures: tracking starts at step 20 by default and the EMA weight
# is at least 10 / 40)
THRESHOLD = {
    "threshold_ema": ({"threshold_start_step": 0}, {"threshold_start_step": 0, "threshold_ema": 0.5}),
    "threshold_start_step": ({}, {"threshold_start_step": 0}),
}
TOTALS = {"batch_topk": 40, "feature_choice": 40, "matryoshka_batch_topk": 40, "batch_topk_transcoder": 40}
TRANSCODER = {"d_out": ({}, {"d_out": 6}), "skip": ({}, {"skip": True})}
JUMPRELU = {
    "l0_coef": ({}, {"l0_coef": 0.1}),
    "threshold_init": ({}, {"threshold_init": 0.05}),
    "bandwidth": ({}, {"bandwidth": 0.01}),
    "threshold_lr_scale": ({}, {"threshold_lr_scale": 1.0}),
    "init_decoder_norm": ({}, {"init_decoder_norm": 1.0}),
}
RELU = {"l1_coef": ({}, {"l1_coef": 1.0}), "init_decoder_norm": ({}, {"init_decoder_norm": 0.5})}
# field -> (base overrides, changed overrides); "lr" is common to all.
CHANGES: dict[str, dict[str, tuple[dict, dict]]] = {
    "topk": TOPK,
    "batch_topk": TOPK | THRESHOLD,
    "feature_choice": TOPK | THRESHOLD | {"capacity_zipf_exponent": ({}, {"capacity_zipf_exponent": 0.0})},
    "matryoshka_batch_topk": TOPK | THRESHOLD | {"widths": ({}, {"widths": (32, D_SAE)})},
    "gradient_topk": TOPK | {"beta": ({}, {"beta": 3.0}), "normalize_grad": ({}, {"normalize_grad": False})},
    "jumprelu": JUMPRELU,
    "gated": {"l1_coef": ({}, {"l1_coef": 1.0})},
    "relu": RELU,
    "crosscoder": RELU,
    "topk_transcoder": TOPK | TRANSCODER,
    "batch_topk_transcoder": TOPK | THRESHOLD | TRANSCODER,
    "relu_transcoder": RELU | TRANSCODER,
    "topk_clt": TOPK | TRANSCODER | {"k": ({}, {"k": 4}), "n_layers": ({}, {"n_layers": 4})},
    "jumprelu_transcoder": JUMPRELU | TRANSCODER,
    # p takes 3 values, changing at steps 2 and 5 of the 8, within the steps run
    "p_anneal": {
        "sparsity_coef": (P_ANNEAL, {**P_ANNEAL, "sparsity_coef": 0.5}),
        "p_start": (P_ANNEAL, {**P_ANNEAL, "p_start": 0.8}),
        "p_end": (P_ANNEAL, {**P_ANNEAL, "p_end": 0.5}),
        "n_p_values": (P_ANNEAL, {**P_ANNEAL, "n_p_values": 4}),
        "anneal_start": (P_ANNEAL, {**P_ANNEAL, "anneal_start": 1}),
        "rescale_batches": (P_ANNEAL, {**P_ANNEAL, "rescale_batches": 1}),
    },
}
CHANGES["gated_anneal"] = CHANGES["p_anneal"]  # the same schedule, on the gate path


def rows(seed: int, width: int = D_IN) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(48, width, generator=g) * torch.rand(48, 1, generator=g).add(0.5)


def trajectory(name: str, hparams: dict) -> torch.Tensor:
    """Losses of a few optimiser steps through the loop's update (with dead latents, so AuxK terms
    act, and a downstream gradient, so g-SAE's selection acts), then the codes of held-out rows and
    every tensor of the SAE's state (thresholds, schedules' state)."""
    sae = build(name, d_in=D_IN, d_sae=D_SAE, seed=0, **hparams)
    opt = make_optimizer(sae)
    trace = []
    for step in range(STEPS):
        ctx = StepCtx(step=step, total_steps=TOTALS.get(name, TOTAL), dead_mask=torch.arange(D_SAE) % 3 == 0)
        target = rows(200 + step, sae.d_out) if sae.transcoder else None  # a transcoder's output site
        out = sae.loss(ActBatch(rows(step), rows(100 + step), target), ctx)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        apply_update(sae, opt, 1.0, None)
        sae.after_step(out, ctx)
        trace.append(out.loss.detach().reshape(1))
    with torch.no_grad():
        trace.append(sae.encode(rows(999)).flatten())
    trace += [t.detach().flatten().float() for t in sae.state_dict().values()]
    return torch.cat(trace)


def test_every_architecture_is_listed():
    assert set(CHANGES) == set(list_architectures())


@pytest.mark.parametrize("name", list_architectures())
def test_the_list_names_every_field(name):
    fields = {f.name for f in dataclasses.fields(get(name).config_class)} - {"d_in", "d_sae", "lr"}
    assert fields == set(CHANGES[name]), "a new field must show its effect here"


@pytest.mark.parametrize(
    ("name", "field"), [(n, f) for n in list_architectures() for f in ["lr", *CHANGES[n]]]
)
def test_moving_a_field_changes_what_the_sae_does(name, field):
    base, changed = CHANGES[name].get(field, ({}, {"lr": 0.05}))
    a, b = trajectory(name, base), trajectory(name, changed)
    assert a.shape != b.shape or not torch.allclose(a, b, rtol=1e-5, atol=1e-8), f"{name}.{field} has no effect"
