"""Fully sharded data parallel (``parallel = "fsdp"``): data parallel (:mod:`saekit.training.distributed`)
with every SAE's parameters, gradients and Adam moments split over the ranks by torch's FSDP2
(``fully_shard``), so that between steps a rank holds a 1/W share of each SAE, and one training unit
(an SAE, or the SAEs a group term links) whole only while it computes the unit's loss and backward pass.

The ranks see the batch as in data parallel (their own rows; what couples rows goes through the
step's ``Comm``), so the numbers are data parallel's, and one process's. FSDP gathers an SAE's
parameters when its :meth:`~saekit.sae.base.SAE.loss` starts and keeps them whole until the unit's
backward pass ends (so a group term computed after its members' losses, such as MFR's, reads whole
decoders), then reduce-scatters the averaged gradients into each rank's share; the update
(projection, clipping, Adam, renormalisation) runs on the shares. Each parameter is split along its first axis, so a decoder's rows (one per latent,
whose norms the update takes) stay whole on one rank.

The run trains sharded copies and leaves the caller's SAEs whole where they are: a checkpoint, and the
end of the run, gather every tensor whole (:func:`full_checkpoint`), one tensor at a time, and the
checkpoint is the one a single process writes. A resumed run takes its share of each whole tensor
(:func:`shares_of`). An objective reads an SAE's weights only from its ``loss`` on, as
:class:`~saekit.training.objective.LocalObjective` and the end-to-end objective do.

torch's FSDP and DTensor modules are imported where they are used: they are slow to import, and a
run that shards nothing (or ``import saekit``) should not wait for them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saekit.comm import Comm
from saekit.sae.base import SAE
from saekit.training.checkpoint import Checkpoint
from saekit.training.checkpoint_fit import saved_parameters

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


def mesh_of(comm: Comm, device: torch.device) -> DeviceMesh:
    """The run's ranks as FSDP's one-dimensional mesh on ``device``'s kind."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (comm.world_size,))


def sharded_copy(sae: SAE, mesh: DeviceMesh) -> SAE:
    """A copy of ``sae`` whose parameters are split over ``mesh`` (each along its first axis, on the
    mesh's device), gathered whole when its ``loss`` is called and split again after the backward pass
    (not after the loss: ``reshard_after_forward=False``); ``sae`` is left as it is."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    shard = copy.deepcopy(sae)
    fully_shard(shard, mesh=mesh, reshard_after_forward=False)
    register_fsdp_forward_method(shard, "loss")
    return shard


def whole(tensor: Tensor) -> Tensor:
    """``tensor`` whole on every rank: a share gathered (a collective every rank must call), a
    replicated tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_checkpoint(saes: Sequence[SAE], optimizers: Sequence[torch.optim.Optimizer], ckpt: Checkpoint, rank: int) -> Checkpoint | None:
    """On rank 0, ``ckpt`` (whose SAE and optimiser states are left empty) with every SAE's and
    optimiser's state whole, on the CPU; None on the other ranks. Each tensor is gathered and moved
    off the device in turn, so a rank never holds more than one whole tensor beyond its shares. Every
    rank must call it."""
    def kept(tensor: Tensor) -> Tensor:
        full = whole(tensor)
        return full.detach().cpu() if rank == 0 else full.new_empty(0)

    sae_states = [{name: kept(t) for name, t in sae.state_dict().items()} for sae in saes]
    optimizer_states = []
    for opt in optimizers:
        state = opt.state_dict()
        optimizer_states.append({
            # In the parameters' order: torch keeps the order its state was loaded in, which may differ between ranks.
            "state": {pid: {n: kept(v) if isinstance(v, Tensor) else v for n, v in sorted(s.items())} for pid, s in sorted(state["state"].items())},
            "param_groups": state["param_groups"],
        })  # fmt: skip
    return replace(ckpt, sae_states=sae_states, optimizer_states=optimizer_states) if rank == 0 else None


def _share(value: Tensor, like: Tensor) -> Tensor:
    """This rank's share of the whole ``value``, split as the parameter (or moment) ``like`` is; a
    replicated ``like`` takes it whole. Every rank holds ``value`` already, so nothing is sent."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return value
    return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def shares_of_state(state: Mapping[str, Tensor], sae: SAE) -> dict[str, Tensor]:
    """A whole SAE's ``state`` cut into this rank's shares of the sharded ``sae``'s parameters (its
    buffers are whole on every rank), ready for ``sae.load_state_dict``."""
    params = dict(sae.named_parameters())
    return {name: _share(v, params[name]) if name in params else v for name, v in state.items()}


def shares_of(ckpt: Checkpoint, saes: Sequence[SAE], optimizers: Sequence[torch.optim.Optimizer]) -> Checkpoint:
    """``ckpt`` (whole tensors, as one process saves them, already checked to fit the run) with its SAE
    and Adam tensors cut into this rank's shares of the sharded ``saes``, ready for :func:`restore`."""
    sae_states, optimizer_states = [], []
    for sae, opt, sae_state, opt_state in zip(saes, optimizers, ckpt.sae_states, ckpt.optimizer_states, strict=True):
        sae_states.append(shares_of_state(sae_state, sae))
        live = saved_parameters(opt, opt_state)
        state = {pid: {n: _share(v, live[pid]) if n != "step" else v for n, v in s.items()} for pid, s in opt_state["state"].items()}
        optimizer_states.append({"state": state, "param_groups": opt_state["param_groups"]})
    return replace(ckpt, sae_states=sae_states, optimizer_states=optimizer_states)


__all__ = ["full_checkpoint", "mesh_of", "shares_of", "shares_of_state", "sharded_copy", "whole"]
