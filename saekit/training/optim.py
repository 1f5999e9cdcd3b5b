"""Optimiser construction and the per-step parameter update shared by every architecture."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from saekit.comm import LOCAL, Comm
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


def apply_update(sae: SAE, opt: torch.optim.Optimizer, lr_factor: float, grad_clip: float | None, latents: Comm = LOCAL) -> None:
    """Masked gradients, gradient projection, clipping, scheduled step and decoder renormalisation, in
    that order. The entries an architecture masks (``param_masks``) get no gradient, so Adam leaves them
    where they are: at zero. ``latents``: the ranks ``sae``'s latents are split over (a shard's), whose
    slices the clipping norm is taken over."""
    if masks := sae.param_masks():
        params = dict(sae.named_parameters())
        for name, mask in masks.items():
            grad = params[name].grad
            if grad is not None:
                grad.mul_(mask)
    if sae.unit_norm_decoder:
        F.remove_parallel_grad_(sae.W_dec)
    if grad_clip is not None and latents.distributed:
        clip_sharded_(sae, grad_clip, latents)
    elif grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), grad_clip)
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] * lr_factor
    opt.step()
    if sae.unit_norm_decoder:
        F.normalize_rows_(sae.W_dec)


def clip_sharded_(shard: SAE, max_norm: float, latents: Comm) -> None:
    """``clip_grad_norm_`` of the whole SAE from its shards: the squared norms of the sliced gradients
    summed over the ranks, those of the replicated ones (the same on every rank) counted once."""
    grads = {name: p.grad for name, p in shard.named_parameters() if p.grad is not None}
    if not grads:
        return
    sliced = [g.float().pow(2).sum() for n, g in grads.items() if n in shard.latent_axes]
    whole = [g.float().pow(2).sum() for n, g in grads.items() if n not in shard.latent_axes]
    zero = next(iter(grads.values())).new_zeros((), dtype=torch.float32)
    norm = (latents.sum_(torch.stack([zero, *sliced]).sum()) + torch.stack([zero, *whole]).sum()).sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # torch's rule
    for g in grads.values():
        g.mul_(coef.to(g.dtype))

