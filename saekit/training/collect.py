"""A site-parallel, latent-sharded or fully sharded run's SAEs brought together on rank 0
(:mod:`saekit.training.distributed`, :mod:`saekit.training.latent_shards`, :mod:`saekit.training.fsdp`).

Each rank trains its own units, or its slice of every SAE; for a checkpoint, and once more at the
end, every rank packs what it trains (weights, Adam states, dead-latent counters) as a checkpoint of
its own (:func:`~saekit.training.checkpoint.checkpoint_bytes`: safetensors, no pickle), and rank 0
gathers the parts and puts each SAE back at its place in the run, or joins its slices. The checkpoint rank 0 writes is therefore the
one a single process writes, and resumes in either mode, on any number of ranks. Rank 0 holds every
SAE's state in host memory while it does so; the devices hold only their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from saekit.training.checkpoint import Checkpoint, checkpoint_bytes, checkpoint_of_bytes
from saekit.training.fsdp import full_checkpoint, whole
from saekit.training.latent_shards import join_checkpoint, parameter_names

if TYPE_CHECKING:
    from saekit.training.run_state import Run


def gathered_checkpoint(state: Run, step: int) -> Checkpoint | None:
    """On rank 0, the run's checkpoint after ``step`` steps, each SAE's part from the rank that trains
    it; None on the other ranks, which send theirs. Every rank must call it at the same step."""
    if state.fully_sharded:  # every rank holds a share of every SAE: each tensor is gathered whole in turn
        base = Checkpoint(step, [], [], state.counters, torch.get_rng_state(), state.scales, state.fingerprint)
        return full_checkpoint(state.saes, state.optimizers, base, state.comm.rank)
    own = state.owned
    part = Checkpoint(
        step=step,
        sae_states=[state.saes[i].state_dict() for i in own],
        optimizer_states=[state.optimizers[i].state_dict() for i in own],
        dead_counters=[state.counters[i] for i in own],
        rng_state=torch.get_rng_state(),
        scales=state.scales,
        fingerprint={},
    )
    data = state.comm.gather_bytes(checkpoint_bytes(part))
    if data is None:
        return None
    # Rank 0's own part is at hand; only the others' are read back from their bytes.
    parts = [part if rank == state.comm.rank else checkpoint_of_bytes(d, f"the checkpoint part of rank {rank}") for rank, d in enumerate(data)]
    if state.latent_sharded:
        names = [parameter_names(sae, opt) for sae, opt in zip(state.saes, state.optimizers)]
        return join_checkpoint(parts, state.given, names, state.fingerprint)
    n = len(state.saes)
    sae_states: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    optimizer_states: list[dict] = [{} for _ in range(n)]
    counters: list[torch.Tensor] = [torch.empty(0)] * n
    for rank, got in enumerate(parts):
        for k, i in enumerate(state.owned_by(rank)):
            sae_states[i], optimizer_states[i], counters[i] = got.sae_states[k], got.optimizer_states[k], got.dead_counters[k]
    return Checkpoint(step, sae_states, optimizer_states, counters, torch.get_rng_state(), state.scales, state.fingerprint)


def gather_weights_(state: Run) -> None:
    """Rank 0's SAEs (the caller's) take the trained weights (in training units) of those trained on
    other ranks, or of every SAE's joined slices; the other ranks send theirs. Every rank must call it.
    In a fully sharded run every rank's SAEs take them, as data parallel's replicas all hold them."""
    if state.fully_sharded:
        with state.comm.failures_within("gathering the trained SAEs"):
            for sae, shard in zip(state.given, state.saes, strict=True):
                sae.load_state_dict({name: whole(t) for name, t in shard.state_dict().items()})
        return
    ckpt = gathered_checkpoint(state, state.cfg.total_steps)
    if ckpt is None:
        return
    mine = set() if state.latent_sharded else set(state.owned)
    for i, sae in enumerate(state.given):
        if i not in mine:
            sae.load_state_dict(ckpt.sae_states[i])
