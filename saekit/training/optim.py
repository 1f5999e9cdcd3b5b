"""Optimiser construction and the per-step parameter update shared by every architecture."""

from __future__ import annotations

import torch

from saekit.sae import functional as F
from saekit.sae.base import SAE


def make_optimizer(sae: SAE) -> torch.optim.Adam:
    """Adam with the architecture's published settings; ``cfg.lr`` overrides the learning rate."""
    defaults = sae.optim_defaults(sae.cfg)
    lr = sae.cfg.lr if sae.cfg.lr is not None else defaults.lr
    # "initial_lr" is the base of the schedule, kept in the optimiser state so resume restores it.
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=defaults.betas, eps=defaults.eps)
    for group in opt.param_groups:
        group["initial_lr"] = lr
    return opt


def apply_update(sae: SAE, opt: torch.optim.Optimizer, lr_factor: float, grad_clip: float | None) -> None:
    """Gradient projection, clipping, scheduled step and decoder renormalisation, in that order."""
    if sae.unit_norm_decoder:
        F.remove_parallel_grad_(sae.W_dec)
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), grad_clip)
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] * lr_factor
    opt.step()
    if sae.unit_norm_decoder:
        F.normalize_rows_(sae.W_dec)
