"""The state of one training run, shared by the engine's stages (:mod:`saekit.training.engine`): what
it trains and on which rank, where each SAE's rows come from, and what it keeps between steps."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saekit import devices
from saekit.comm import LOCAL, Comm
from saekit.sae.base import SAE
from saekit.training.checkpoint import CHECKPOINT_NAME
from saekit.training.config import TrainConfig
from saekit.training.logs import MetricsLog
from saekit.training.objective import Objective, Unit
from saekit.types import ActBatch, ActivationSource


@dataclass
class Run:
    """The state of one run, shared by the stages."""

    saes: list[SAE]
    """The SAEs this process trains: the caller's, but the shards of a latent-sharded or fully sharded run."""
    given: list[SAE]
    """The caller's SAEs, which the run's result holds (trained in place, or given the trained weights)."""
    sites: list[tuple[str, ...]]
    """The sites each SAE reads: one, or a crosscoder's several (its input is their rows side by side)."""
    targets: list[tuple[str, ...] | None]
    """The sites each transcoder reconstructs (``site_out``, a CLT's ``sites_out``); None: an SAE's own."""
    source: ActivationSource
    cfg: TrainConfig
    objective: Objective
    device: torch.device
    units: list[Unit]
    """Every unit of the run, whichever rank trains it."""
    owners: list[int]
    """The rank that trains each unit: this one, but in a site-parallel run (:func:`unit_owners`)."""
    optimizers: list[torch.optim.Adam]
    counters: list[torch.Tensor]
    fingerprint: dict[str, Any]
    out_dir: Path | None
    comm: Comm
    """The ranks of a distributed run (:mod:`saekit.training.distributed`); LOCAL in one process."""
    start_files: dict[str, str]
    """Files (name -> text) written into ``out_dir`` once every check has passed."""
    started: float
    scales: dict[str, float] = field(default_factory=dict)
    start: int = 0
    rows: int = 0
    """Activation rows per step, as the stream delivers them (e2e rounds up to whole contexts)."""
    records: list[dict[str, Any]] = field(default_factory=list)
    energy: torch.Tensor | None = None
    """[n_saes] energy of each SAE's input rows in the run's first step: the yardstick of divergence."""
    log: MetricsLog | None = None
    bar: Any = None

    def inputs(self, i: int, batch: Mapping[str, ActBatch]) -> ActBatch:
        """SAE ``i``'s rows of ``batch`` on the device, normalised (a transcoder's target rows by theirs)."""
        read, out = self.sites[i], self.targets[i]
        acts, scale = batch[read[0]], self.scales[read[0]]  # x is scaled by s: d loss/d(s·x) = (d loss/d x) / s
        grad = acts.grad.to(self.device).float() / scale if acts.grad is not None else None
        return ActBatch(self._side_by_side(batch, read), grad, self._side_by_side(batch, out) if out else None)

    def _side_by_side(self, batch: Mapping[str, ActBatch], sites: tuple[str, ...]) -> torch.Tensor:
        """The normalised rows of ``sites`` on the device, side by side (one site's alone, uncopied)."""
        xs = [batch[site].x.to(self.device, non_blocking=True).float() * self.scales[site] for site in sites]
        return torch.cat(xs, -1) if len(xs) > 1 else xs[0]

    @property
    def site_parallel(self) -> bool:
        return self.comm.distributed and self.cfg.parallel == "sites"

    @property
    def latent_sharded(self) -> bool:
        return self.comm.distributed and self.cfg.parallel == "latents"

    @property
    def fully_sharded(self) -> bool:
        return self.comm.distributed and self.cfg.parallel == "fsdp"

    @property
    def gathers(self) -> bool:
        """Whether no rank holds the run's whole state, so that rank 0 gathers it for a checkpoint and
        at the end (:mod:`saekit.training.collect`)."""
        return self.site_parallel or self.latent_sharded or self.fully_sharded

    @property
    def step_comm(self) -> Comm:
        """What couples the rows of a batch goes through this: the ranks of a data-parallel run (fully
        sharded or not); none in a site-parallel or latent-sharded one, whose ranks each see whole batches."""
        return self.comm if self.comm.distributed and self.cfg.parallel in ("data", "fsdp") else LOCAL

    @property
    def grad_comm(self) -> Comm:
        """The ranks whose gradients the engine averages: data parallel's (a fully sharded run's are
        averaged by FSDP as it splits them)."""
        return LOCAL if self.fully_sharded else self.step_comm

    @property
    def latent_comm(self) -> Comm:
        """The ranks each SAE's latents are split over: those of a latent-sharded run, else none."""
        return self.comm if self.latent_sharded else LOCAL

    def owned_by(self, rank: int) -> list[int]:
        """The SAEs ``rank`` trains, in order."""
        return sorted(i for unit, owner in zip(self.units, self.owners) if owner == rank for i in unit.members)

    @property
    def owned(self) -> list[int]:
        """The SAEs this process trains: all of them, but in a site-parallel run."""
        return self.owned_by(self.comm.rank)

    @property
    def used_sites(self) -> list[str]:
        """Every site the run reads: the SAEs' input sites and the transcoders' output sites, sorted."""
        return sorted({site for read in self.sites for site in read} | {site for out in self.targets for site in out or ()})

    @property
    def reconstructed(self) -> list[tuple[str, ...]]:
        """The sites each SAE reconstructs: a transcoder's output site, an SAE's own (a crosscoder's all)."""
        return [out or read for read, out in zip(self.sites, self.targets)]

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return devices.autocast(self.cfg.dtype, [self.device])

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None
