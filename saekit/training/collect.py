"""A site-parallel run's SAEs brought together on rank 0 (:mod:`saekit.training.distributed`).

Each rank trains its own units; for a checkpoint, and once more at the end, every rank packs its SAEs'
weights, Adam states and dead-latent counters as a checkpoint of its own SAEs
(:func:`~saekit.training.checkpoint.checkpoint_bytes`: safetensors, no pickle), rank 0 gathers the
parts and puts each SAE back at its place in the run. The checkpoint rank 0 writes is therefore the
one a single process writes, and resumes in either mode, on any number of ranks. Rank 0 holds every
SAE's state in host memory while it does so; the devices hold only their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from saekit.training.checkpoint import Checkpoint, checkpoint_bytes, checkpoint_of_bytes

if TYPE_CHECKING:
    from saekit.training.run_state import Run


def gathered_checkpoint(state: Run, step: int) -> Checkpoint | None:
    """On rank 0, the run's checkpoint after ``step`` steps, each SAE's part from the rank that trains
    it; None on the other ranks, which send theirs. Every rank must call it at the same step."""
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
    parts = state.comm.gather_bytes(checkpoint_bytes(part))
    if parts is None:
        return None
    n = len(state.saes)
    sae_states: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
    optimizer_states: list[dict] = [{} for _ in range(n)]
    counters: list[torch.Tensor] = [torch.empty(0)] * n
    for rank, data in enumerate(parts):
        got = checkpoint_of_bytes(data, f"the checkpoint part of rank {rank}")
        for k, i in enumerate(state.owned_by(rank)):
            sae_states[i], optimizer_states[i], counters[i] = got.sae_states[k], got.optimizer_states[k], got.dead_counters[k]
    return Checkpoint(step, sae_states, optimizer_states, counters, torch.get_rng_state(), state.scales, state.fingerprint)


def gather_weights_(state: Run) -> None:
    """Rank 0's copies of the SAEs trained on other ranks take their trained weights (in training
    units); the other ranks send theirs and keep their own. Every rank must call it."""
    ckpt = gathered_checkpoint(state, state.cfg.total_steps)
    if ckpt is None:
        return
    mine = set(state.owned)
    for i, sae in enumerate(state.saes):
        if i not in mine:
            sae.load_state_dict(ckpt.sae_states[i])
