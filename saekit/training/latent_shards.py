"""Latent-sharded training (``parallel = "latents"``): each SAE's latents split over the ranks.

Rank r of W trains a *shard* of every SAE: an SAE of the same architecture with d_sae / W latents,
the r-th contiguous slice of each tensor its architecture declares in ``latent_axes`` and the whole
of the others (``b_dec``). Every rank reads every row; the loss sums the decoder's parts, the
gradient of ``b_dec`` through the encoder and L0 over the ranks, and makes TopK, BatchTopK and AuxK
select over all latents (:mod:`saekit.sae.shards`), so each shard's gradients are exactly its slice
of one process's, and the replicated tensors' are one process's on every rank. Gradient clipping
takes the norm over all the slices (:func:`saekit.training.optim.apply_update`).

Checkpoints and the result are one process's: rank 0 gathers the shards' states (weights, Adam
moments, dead-latent counters) and joins each tensor along its latent axis (:func:`join_checkpoint`);
a resumed run cuts the checkpoint into this rank's slices (:func:`slice_checkpoint`), on any number
of ranks that divides the widths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from saekit.errors import ConfigError
from saekit.sae.base import SAE
from saekit.sae.topk_family import TopKFamilyConfig
from saekit.training.checkpoint import Checkpoint
from saekit.training.objective import LocalObjective, Objective

Axes = Mapping[str, int]


def check_shardable(saes: Sequence[SAE], objective: Objective, world_size: int) -> None:
    """Refuse what latent sharding would not train as one process does, naming it."""
    if not isinstance(objective, LocalObjective) or objective.groups:
        raise ConfigError(f"latent-sharded training trains each SAE on its own loss; the objective {objective.describe()} needs whole SAEs")
    for i, sae in enumerate(saes):
        name = f"SAE {i} ({sae.architecture})"
        if not sae.latent_axes:
            raise ConfigError(f"{name} cannot be latent-sharded; parallel = \"latents\" trains topk, batch_topk and jumprelu SAEs")
        if sae.d_sae % world_size:
            raise ConfigError(f"{name}: d_sae {sae.d_sae} does not split evenly over {world_size} ranks")
        if isinstance(sae.cfg, TopKFamilyConfig) and sae.cfg.aux_zipf_coef > 0:
            raise ConfigError(f"{name}: aux_zipf_loss ranks every latent's density; it cannot be latent-sharded (set aux_zipf_coef = 0)")
        if isinstance(sae.cfg, TopKFamilyConfig) and sae.cfg.k > sae.d_sae // world_size:
            raise ConfigError(f"{name}: k {sae.cfg.k} exceeds the {sae.d_sae // world_size} latents of each of {world_size} ranks")


def shard_of(sae: SAE, rank: int, world_size: int) -> SAE:
    """Rank ``rank``'s shard of ``sae`` (its slice of the latents, on the CPU), with ``sae``'s learning
    rate, which a default would otherwise derive from the narrower width."""
    lr = sae.optim_defaults(sae.cfg).lr
    shard = type(sae)(replace(sae.cfg, d_sae=sae.d_sae // world_size, lr=lr))
    shard.load_state_dict(slice_state(sae.state_dict(), sae.latent_axes, rank, world_size))
    shard.metadata = dict(sae.metadata)
    return shard


def slice_state(state: Mapping[str, Tensor], axes: Axes, rank: int, world_size: int) -> dict[str, Tensor]:
    """Rank ``rank``'s part of a whole SAE's tensors: its slice along each latent axis, the rest whole."""
    return {name: _slice(t, axes.get(name), rank, world_size) for name, t in state.items()}


def join_states(parts: Sequence[Mapping[str, Tensor]], axes: Axes) -> dict[str, Tensor]:
    """The whole SAE's tensors from every rank's part, in rank order (the replicated ones from rank 0)."""
    return {name: torch.cat([p[name] for p in parts], axes[name]) if name in axes else t for name, t in parts[0].items()}


def slice_checkpoint(ckpt: Checkpoint, saes: Sequence[SAE], names: Sequence[list[str]], rank: int, world_size: int) -> Checkpoint:
    """This rank's part of a whole run's checkpoint: each SAE's tensors, Adam moments and dead-latent
    counter cut along its latent axes (``names[i]``: SAE i's parameter names in its optimiser's order)."""
    return replace(
        ckpt,
        sae_states=[slice_state(s, sae.latent_axes, rank, world_size) for s, sae in zip(ckpt.sae_states, saes)],
        optimizer_states=[
            _map_moments(o, n, sae.latent_axes, lambda t, axis: _slice(t, axis, rank, world_size))
            for o, n, sae in zip(ckpt.optimizer_states, names, saes)
        ],
        dead_counters=[_slice(c, 0, rank, world_size) for c in ckpt.dead_counters],
    )


def join_checkpoint(parts: Sequence[Checkpoint], saes: Sequence[SAE], names: Sequence[list[str]], fingerprint: dict[str, Any]) -> Checkpoint:
    """The whole run's checkpoint from every rank's (its shards' states, in rank order)."""
    sae_states, optimizer_states = [], []
    for i, sae in enumerate(saes):
        sae_states.append(join_states([p.sae_states[i] for p in parts], sae.latent_axes))
        moments = [p.optimizer_states[i] for p in parts]
        optimizer_states.append(_join_moments(moments, names[i], sae.latent_axes))
    counters = [torch.cat([p.dead_counters[i] for p in parts]) for i in range(len(saes))]
    first = parts[0]
    return Checkpoint(first.step, sae_states, optimizer_states, counters, first.rng_state, first.scales, fingerprint)


def parameter_names(sae: SAE, opt: torch.optim.Optimizer) -> list[str]:
    """``sae``'s parameter names in the order its optimiser numbers them in a state dict."""
    name_of = {id(p): n for n, p in sae.named_parameters()}
    return [name_of[id(p)] for group in opt.param_groups for p in group["params"]]


def _slice(t: Tensor, axis: int | None, rank: int, world_size: int) -> Tensor:
    return t if axis is None else t.chunk(world_size, axis)[rank].contiguous()


def _map_moments(opt_state: dict[str, Any], names: list[str], axes: Axes, fn) -> dict[str, Any]:
    """``opt_state`` with ``fn(tensor, axis)`` applied to each parameter-shaped moment of a parameter
    with a latent axis (Adam's ``step`` counts stay as they are)."""
    state = {}
    for pid, per_param in opt_state["state"].items():
        axis = axes.get(names[int(pid)])
        state[pid] = {k: fn(v, axis) if isinstance(v, Tensor) and v.dim() > 0 else v for k, v in per_param.items()}
    return {"state": state, "param_groups": opt_state["param_groups"]}


def _join_moments(parts: Sequence[dict[str, Any]], names: list[str], axes: Axes) -> dict[str, Any]:
    state = {}
    for pid, per_param in parts[0]["state"].items():
        axis = axes.get(names[int(pid)])
        state[pid] = {
            k: torch.cat([p["state"][pid][k] for p in parts], axis) if isinstance(v, Tensor) and v.dim() > 0 and axis is not None else v
            for k, v in per_param.items()
        }
    return {"state": state, "param_groups": parts[0]["param_groups"]}
