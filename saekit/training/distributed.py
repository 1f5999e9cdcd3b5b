"""Several processes training one run (``torch.distributed``): who this process is, what it trains,
and the few collective operations the engine and the architectures need.

Data parallel (``parallel = "data"``): every rank reads the same global batch from the source (sources
are seeded, so they agree), keeps its own equal slice of the rows, and trains a replica of every
SAE. Whatever couples the rows of a batch is made global through the :class:`Comm` in the step's
context, so that a run on W ranks computes the same numbers as one process on the whole batch:

* gradients are averaged over ranks (each rank's loss is a mean over its rows, or is written so that
  the mean over ranks is the one-process loss);
* BatchTopK's and Feature Choice's selections and inference thresholds, AuxK's variance and the
  dead-latent counters see the whole batch.

Site parallel (``parallel = "sites"``): the run's units (an SAE, or the SAEs a group objective links)
are shared out over the ranks (:func:`unit_owners`), and each rank trains its own on whole batches:
nothing couples the ranks during a step but the verdict of the health check and the log. Checkpoints
and the final weights are gathered on rank 0 (:mod:`saekit.training.collect`), so both are what one
process writes.

Latent sharded (``parallel = "latents"``, :mod:`saekit.training.latent_shards`) and fully sharded
(``parallel = "fsdp"``, :mod:`saekit.training.fsdp`: data parallel with FSDP2's shares of every SAE)
are checked here too.

One process is the same code with :data:`saekit.comm.LOCAL`, whose operations do nothing.

A run is distributed when ``torch.distributed`` is initialised, or when the ``WORLD_SIZE`` that
``torchrun`` sets is above 1 (then :func:`comm_for_run` initialises it: NCCL on CUDA, gloo on CPU).
A rank that dies makes the others fail at their next collective after ``timeout``, never hang.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

import torch

from saekit import devices
from saekit.comm import LOCAL, Comm
from saekit.errors import ConfigError
from saekit.sae.base import SAE
from saekit.training.config import TrainConfig
from saekit.training.latent_shards import check_shardable
from saekit.training.objective import Objective, Unit
from saekit.types import LossOut


def comm_for_run(device: torch.device, timeout_s: float) -> Comm:
    """The run's ranks: the initialised process group's, or one initialised from ``torchrun``'s
    environment (``WORLD_SIZE`` > 1; NCCL bound to ``device`` on CUDA, gloo elsewhere), or :data:`LOCAL`."""
    dist = torch.distributed
    if not dist.is_available():
        return LOCAL
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return LOCAL
        timeout = datetime.timedelta(seconds=timeout_s)
        if device.type == "cuda":
            dist.init_process_group("nccl", timeout=timeout, device_id=devices.rank_device(device))
        else:
            dist.init_process_group("gloo", timeout=timeout)
    return Comm(rank=dist.get_rank(), world_size=dist.get_world_size())


def mean_terms(out: LossOut, comm: Comm) -> LossOut:
    """``out`` with its logged terms averaged over ranks: each is a mean over the rank's rows (or is
    written so that its mean over ranks is the one-process value), so the log matches one process."""
    names = sorted(out.terms)
    if not names:
        return out
    flat = comm.sum_(torch.stack([out.terms[n].detach().float().reshape(()) for n in names])) / comm.world_size
    return out._replace(terms=dict(zip(names, flat.unbind(), strict=True)))


DISTRIBUTABLE = frozenset(
    ("relu", "topk", "batch_topk", "matryoshka_batch_topk", "feature_choice", "gradient_topk", "jumprelu", "gated", "p_anneal")
)
"""Architectures whose batch-coupled computations go through ``StepCtx.comm`` (checked exact by
tests/training/test_distributed.py); an architecture added later is refused in a distributed run
until its computations are."""


def unit_owners(units: Sequence[Unit], saes: Sequence[SAE], world_size: int) -> list[int]:
    """The rank that trains each unit in a site-parallel run: units by parameter count, largest first
    (the earlier on ties), each to the rank holding the fewest parameters so far (the lower on ties),
    so that the ranks' shares of memory are about equal. Every rank computes the same answer."""
    sizes = [sum(p.numel() for i in unit.members for p in saes[i].parameters()) for unit in units]
    held, owners = [0] * world_size, [0] * len(units)
    for u in sorted(range(len(units)), key=lambda u: (-sizes[u], u)):
        owners[u] = min(range(world_size), key=lambda r: (held[r], r))
        held[owners[u]] += sizes[u]
    return owners


def check_distributable(saes: Sequence[SAE], objective: Objective, cfg: TrainConfig, comm: Comm, n_units: int) -> None:
    """Refuse what a distributed run would not compute as one process does. A site-parallel run
    computes each unit as one process does, whatever it is; it only needs a unit for every rank."""
    if cfg.parallel == "latents":
        check_shardable(saes, objective, comm.world_size)
        return
    if cfg.parallel == "sites":
        if n_units < comm.world_size:
            raise ConfigError(
                f"a site-parallel run on {comm.world_size} ranks needs at least one SAE (or group of SAEs trained "
                f"together) per rank; this run has {n_units}: use fewer ranks, or parallel = \"data\""
            )
        return
    if cfg.batch_size % comm.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} does not split evenly over {comm.world_size} ranks; make it a multiple")
    for i, sae in enumerate(saes):
        if sae.architecture not in DISTRIBUTABLE:
            raise ConfigError(
                f"SAE {i} ({sae.architecture}) cannot train in a distributed run yet; distributed runs train "
                f"{', '.join(sorted(DISTRIBUTABLE))}"
            )
    if not objective.distributable:
        raise ConfigError(f"the objective {objective.describe()} cannot train in a distributed run yet")
