"""Optimiser construction and the per-step parameter update shared by every architecture."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from saekit.sae import functional as F
from saekit.sae.base import SAE


def make_optimizer(sae: SAE) -> torch.optim.Adam:
    """Adam with the architecture's settings; ``cfg.lr`` overrides the learning rate. Parameters the
    architecture names in ``lr_multipliers()`` form groups of their own at that multiple of it (the
    first group is always the base rate, which the logs report)."""
    defaults = sae.optim_defaults(sae.cfg)
    lr = sae.cfg.lr if sae.cfg.lr is not None else defaults.lr
    multipliers = sae.lr_multipliers()
    named = dict(sae.named_parameters())
    groups = [{"params": [p for n, p in named.items() if n not in multipliers], "lr": lr}]
    groups += [{"params": [named[n]], "lr": lr * m} for n, m in multipliers.items()]
    params = list(named.values())
    opt = torch.optim.Adam(groups, lr=lr, betas=defaults.betas, eps=defaults.eps, fused=fused_supported(params))
    # "initial_lr" is the base of the schedule, kept in the optimiser state so resume restores it.
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
    return opt


def fused_supported(params: Sequence[torch.Tensor]) -> bool:
    """Whether torch's fused Adam (one kernel for every tensor's update) can run on ``params``: floating
    point tensors on one CPU or CUDA device, each contiguous. It replaces the per-tensor loop, which on
    the CPU is a large share of a sparse TopK step (measured in docs/benchmarks.md).

    Contiguous, because the fused kernel walks a parameter and its Adam moments as flat memory: a
    transposed parameter next to moments restored contiguous from a checkpoint got a wrong update.
    """
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in ("cpu", "cuda")
        and all(p.is_floating_point() and p.is_contiguous() for p in params)
    )


def apply_update(sae: SAE, opt: torch.optim.Optimizer, lr_factor: float, grad_clip: float | None) -> None:
    """Masked gradients, gradient projection, clipping, scheduled step and decoder renormalisation, in
    that order. The entries an architecture masks (``param_masks``) get no gradient, so Adam leaves them
    where they are: at zero."""
    if masks := sae.param_masks():
        params = dict(sae.named_parameters())
        for name, mask in masks.items():
            grad = params[name].grad
            if grad is not None:
                grad.mul_(mask)
    if sae.unit_norm_decoder:
        F.remove_parallel_grad_(sae.W_dec)
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), grad_clip)
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] * lr_factor
    opt.step()
    if sae.unit_norm_decoder:
        F.normalize_rows_(sae.W_dec)
