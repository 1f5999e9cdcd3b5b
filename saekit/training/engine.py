"""The one training engine: any number of SAEs, on one or many sites, fed by one activation stream,
under any objective (:mod:`saekit.training.objective`).

A run's life cycle, each stage a small function over the run's state (:class:`Run`):

    prepare  ->  restore_or_initialise  ->  train_step (× steps, checkpoint every N)  ->  finalise

* ``prepare`` checks the SAEs against the source, moves them to the device and builds their
  optimisers and dead-latent counters;
* ``restore_or_initialise`` resumes from the output folder's checkpoint, or estimates the
  normalisation factors and puts the SAEs into normalised units (``b_dec`` from the first batch);
* ``train_step`` draws nothing itself: it takes the step's batch, asks the objective for each unit's
  loss, back-propagates it, updates, runs the SAEs' ``after_step`` and the dead-latent counters, and
  logs;
* ``finalise`` folds the normalisation back into the weights and records site, factor and provenance.

Everything the run keeps between steps (weights, Adam moments, dead-latent counters, normalisation
factors, RNG) goes into the checkpoint, and the source replays from a batch index, so a resumed run
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saekit import devices
from saekit._fast import training_fast_paths
from saekit.comm import Comm
from saekit.errors import ConfigError
from saekit.sae.base import SAE
from saekit.sources.cache import CacheSource
from saekit.sources.prefetch import Prefetcher
from saekit.strict import to_dict
from saekit.training import dead, health
from saekit.training.checkpoint import CHECKPOINT_NAME, Checkpoint, restore, save_checkpoint
from saekit.training.config import TrainConfig
from saekit.training.distributed import check_distributable, comm_for_run, mean_terms
from saekit.training.logs import MetricsLog, step_records
from saekit.training.normalise import enter_normalised_units_, estimate_scales, leave_normalised_units_
from saekit.training.objective import LocalObjective, Objective, Unit
from saekit.training.optim import apply_update, make_optimizer
from saekit.training.outputs import checkpoint_to_resume, write_start_files
from saekit.training.schedules import lr_factor, sparsity_factor
from saekit.training.sites import assign_sites, assign_targets, described, label
from saekit.types import ActBatch, ActivationSource, LossOut, StepCtx


@dataclass(frozen=True)
class TrainResult:
    """What a run produced, whatever it was given. ``saes`` (in the order given) take raw activations
    (normalisation folded back); they are the objects passed in, trained in place."""

    saes: list[SAE]
    final_metrics: list[dict[str, float]]
    """Per SAE, the metrics of the last step logged by this call (empty for a run resumed at its end)."""
    steps: int
    """Steps the run ended at."""
    resumed_from: int
    """Step the run resumed from (0 for a fresh run)."""
    seconds: float
    rank: int = 0
    """This process's rank in a distributed run (0 in one process): rank 0 writes the run's files."""

    @property
    def sae(self) -> SAE:
        """The trained SAE of a run of one SAE."""
        if len(self.saes) != 1:
            raise ValueError(f"this run trained {len(self.saes)} SAEs: read .saes")
        return self.saes[0]


@dataclass
class Run:
    """The state of one run, shared by the stages."""

    saes: list[SAE]
    sites: list[tuple[str, ...]]
    """The sites each SAE reads: one, or a crosscoder's several (its input is their rows side by side)."""
    targets: list[tuple[str, ...] | None]
    """The sites each transcoder reconstructs (``site_out``, a CLT's ``sites_out``); None: an SAE's own."""
    source: ActivationSource
    cfg: TrainConfig
    objective: Objective
    device: torch.device
    units: list[Unit]
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


def run(
    saes: Sequence[SAE],
    source: ActivationSource,
    cfg: TrainConfig,
    *,
    objective: Objective | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    start_files: Mapping[str, str] | None = None,
) -> TrainResult:
    """Train ``saes`` side by side on ``source`` under ``objective`` (default: each SAE's own loss);
    see :func:`saekit.train`. ``start_files`` (name -> text) are written into ``out_dir`` once every
    check has passed, e.g. ``saekit train``'s ``config.json``, which a refused resume must not replace."""
    state = prepare(saes, source, cfg, objective or LocalObjective(), out_dir, resume, start_files=start_files)
    with _session(state):
        restore_or_initialise(state, resume)
        with _stream(state) as batches:
            for step in range(state.start, cfg.total_steps):
                train_step(state, step, next(batches))
                if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.total_steps:
                    checkpoint(state, step + 1)
        checkpoint(state, cfg.total_steps)
    return finalise(state)


def prepare(
    saes: Sequence[SAE],
    source: ActivationSource,
    cfg: TrainConfig,
    objective: Objective,
    out_dir: str | Path | None,
    resume: bool,
    *,
    start_files: Mapping[str, str] | None = None,
) -> Run:
    """Check the SAEs against the source and build their optimisers and counters."""
    out_dir = Path(out_dir) if out_dir is not None else None
    if resume and out_dir is None:
        raise ConfigError("resume needs the output folder of the interrupted run")
    if cfg.checkpoint_every and out_dir is None:
        raise ConfigError("checkpoint_every needs an output folder")
    saes = list(saes)
    if not saes:
        raise ConfigError("nothing to train: the list of SAEs is empty")
    sites = assign_sites(saes, source)
    targets = assign_targets(saes, source)
    device = devices.rank_device(devices.resolve_device(cfg.device))
    for sae in saes:
        sae.to(device)
    comm = comm_for_run(device, cfg.collective_timeout_s)
    if comm.distributed:
        check_distributable(saes, objective, cfg, comm)
        for sae in saes:  # replicas start equal, however each rank built its SAEs
            for tensor in sae.state_dict().values():
                comm.broadcast_(tensor)
    return Run(
        saes=saes,
        sites=sites,
        targets=targets,
        source=source,
        cfg=cfg,
        objective=objective,
        device=device,
        units=objective.units(len(saes)),
        optimizers=[make_optimizer(sae) for sae in saes],
        counters=[dead.new_counter(sae.d_sae, device) for sae in saes],
        fingerprint=_fingerprint(saes, sites, targets, cfg, source, objective),
        out_dir=out_dir,
        comm=comm,
        start_files=dict(start_files or {}),
        started=time.perf_counter(),
    )


def restore_or_initialise(state: Run, resume: bool) -> None:
    """Resume from the checkpoint in the output folder, or estimate the normalisation and enter it;
    then open the outputs. Every check comes before the first write into the output folder
    (:mod:`saekit.training.outputs`)."""
    cfg = state.cfg
    resumed = checkpoint_to_resume(state.out_dir, resume, state.fingerprint, state.used_sites, cfg.total_steps)
    if resumed is not None:
        ckpt = resumed.checkpoint
        restore(ckpt, resumed.path, state.saes, state.optimizers, state.counters)
        state.scales, state.start = ckpt.scales, ckpt.step
        _say(state, f"resuming from step {state.start} of {cfg.total_steps} ({resumed.path})")
    else:
        if resume:
            _say(state, f"no checkpoint in {state.out_dir}; starting from scratch")
        used = set(state.used_sites)
        state.scales = (
            estimate_scales(state.source, used, cfg.batch_size, cfg.seed, cfg.norm_estimation_tokens)
            if cfg.normalize_activations
            else dict.fromkeys(used, 1.0)
        )
        first = next(iter(state.source.batches(cfg.batch_size, seed=cfg.seed, start=0)))
        for i, sae in enumerate(state.saes):
            enter_normalised_units_(sae, state.inputs(i, first), state.sites[i], state.reconstructed[i], state.scales)
    writes = state.out_dir if state.comm.rank == 0 else None  # one rank writes the run's files
    state.log = MetricsLog(
        writes, resume_step=state.start, tensorboard=cfg.tensorboard and writes is not None,
        wandb_project=cfg.wandb_project if writes is not None else None, run_config=state.fingerprint,
    )  # fmt: skip
    if writes is not None:
        write_start_files(writes, state.start_files)
    state.bar = tqdm(
        total=cfg.total_steps, initial=state.start, disable=not cfg.progress or state.comm.rank != 0, unit="step",
        desc=f"training {len(state.saes)} SAE(s)" + (f" on {state.comm.world_size} ranks" if state.comm.distributed else ""),
    )


def train_step(state: Run, step: int, batch: Mapping[str, ActBatch]) -> None:
    """One optimiser step of every unit on ``batch``, then the dead-latent counters and the log."""
    cfg, total, comm = state.cfg, state.cfg.total_steps, state.comm
    state.rows = batch[state.sites[0][0]].x.shape[0]
    if comm.distributed:
        batch = state.objective.shard(batch, comm)
    base = StepCtx(step=step, total_steps=total, sparsity_scale=sparsity_factor(step, cfg.resolved_sparsity_warmup), comm=comm)
    lr_mult = lr_factor(step, total, cfg.lr_warmup_steps, cfg.lr_decay_fraction)
    window = cfg.resolved_dead_tokens
    outs: dict[int, LossOut] = {}
    losses = []
    for unit in state.units:
        ctxs = {i: replace(base, dead_mask=dead.dead_mask(state.counters[i], window)) for i in unit.members}
        for i in unit.members:
            if step == state.start and batch[state.sites[i][0]].grad is None and state.saes[i].uses_grad:
                _warn_no_grad(i, state.saes[i])
        unit_loss = state.objective.unit_loss(state, unit, batch, ctxs)
        for i in unit.members:
            state.optimizers[i].zero_grad(set_to_none=True)
        unit_loss.loss.backward()
        losses.append(unit_loss.loss.detach())
        for i in unit.members:
            out = outs[i] = unit_loss.outs[i]
            comm.average_grads_(state.saes[i].parameters())
            apply_update(state.saes[i], state.optimizers[i], lr_mult, cfg.grad_clip)
            with torch.no_grad():
                state.saes[i].after_step(out, ctxs[i])
            dead.update_counter_(state.counters[i], out.codes, comm)
    if state.energy is None:
        state.energy = comm.sum_(health.energies(state.reconstructed, state.scales, batch)) / comm.world_size
    health.check_step(state.saes, state.used_sites, batch, losses, outs, step, state.energy, comm)
    if (step + 1) % cfg.log_every == 0 or step + 1 == total:
        if comm.distributed:
            outs = {i: mean_terms(out, comm) for i, out in outs.items()}
        state.records = step_records(state.saes, [label(read) for read in state.sites], [outs[i] for i in range(len(state.saes))],
                                     state.counters, window, state.optimizers, step + 1, state.rows)  # fmt: skip
        assert state.log is not None
        state.log.write(state.records)
        state.bar.set_postfix(_postfix(state.records))
    state.bar.update(1)


def checkpoint(state: Run, step: int) -> None:
    """Save everything needed to resume after ``step`` steps (with an output folder)."""
    path = state.checkpoint_path
    if path is None or state.comm.rank != 0:  # replicas are equal: one rank writes
        return
    assert state.log is not None
    state.log.sync()  # the log lines up to ``step`` are on disk before a checkpoint says the run got there
    save_checkpoint(
        path,
        Checkpoint(
            step=step,
            sae_states=[sae.state_dict() for sae in state.saes],
            optimizer_states=[opt.state_dict() for opt in state.optimizers],
            dead_counters=state.counters,
            rng_state=torch.get_rng_state(),
            scales=state.scales,
            fingerprint=state.fingerprint,
        ),
    )


def finalise(state: Run) -> TrainResult:
    """Fold the normalisation back, record site, factor and provenance; the trained SAEs."""
    state.bar.close()
    assert state.log is not None
    state.log.close()
    total = state.cfg.total_steps
    final = [{k: v for k, v in r.items() if k not in ("step", "sae", "name")} for r in state.records]
    # A run resumed from its last checkpoint takes no step and logs nothing: its SAEs still leave
    # normalised units (zipping with the empty records once returned them unconverted).
    final = final or [{} for _ in state.saes]
    for sae, read, out, metrics in zip(state.saes, state.sites, state.targets, final):
        leave_normalised_units_(sae, read, out, state.scales)
        sae.provenance.update({
            "data": state.source.describe(),
            "tokens": total * state.rows,
            "train_config": to_dict(state.cfg),
            "final_metrics": metrics,
            **state.objective.describe(),
            **({"distributed": {"mode": "data", "world_size": state.comm.world_size}} if state.comm.distributed else {}),
        })  # fmt: skip
    return TrainResult(state.saes, final, total, state.start, time.perf_counter() - state.started, state.comm.rank)


@contextlib.contextmanager
def _session(state: Run) -> Iterator[None]:
    """What holds for the whole run: the training-only fast paths and the objective's own session."""
    with training_fast_paths(state.device), state.objective.session():
        yield


@contextlib.contextmanager
def _stream(state: Run) -> Iterator[Iterator[Mapping[str, ActBatch]]]:
    """The batches from the run's start, read ahead on another thread where that pays (CUDA, or a
    source on disk) and the objective allows it, but never in a distributed run (a model source's
    batches run collectives, which every rank must issue in the step's order); closed at the end."""
    batches: Iterator[Mapping[str, ActBatch]] = state.source.batches(state.cfg.batch_size, seed=state.cfg.seed, start=state.start)
    if state.objective.prefetch and not state.comm.distributed and (state.device.type == "cuda" or isinstance(state.source, CacheSource)):
        batches = Prefetcher(batches, pin_memory=state.device.type == "cuda")
    try:
        yield batches
    finally:
        if isinstance(batches, (Generator, Prefetcher)):  # a source may return any iterator; these hold resources
            batches.close()


def _fingerprint(
    saes: Sequence[SAE], sites: list[tuple[str, ...]], targets: list[tuple[str, ...] | None], cfg: TrainConfig, source: ActivationSource, objective: Objective
) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed by this run (as JSON gives it back). Settings
    that do not change the result (logging, progress, checkpoint cadence, device) may differ."""
    keep = replace(
        cfg, progress=True, log_every=1, checkpoint_every=None, wandb_project=None, tensorboard=False, device="auto",
        collective_timeout_s=TrainConfig.collective_timeout_s,
    )  # fmt: skip
    fingerprint = {"saes": described(saes, sites, targets), "train": to_dict(keep), "data": source.describe(), "objective": objective.describe()}
    return json.loads(json.dumps(fingerprint, default=str))


def _say(state: Run, message: str) -> None:
    if state.cfg.progress and state.comm.rank == 0:
        tqdm.write(message)


def _postfix(records: list[dict[str, Any]]) -> dict[str, str]:
    if len(records) <= 3:
        return {f"{r['name']}": f"mse={r['mse']:.3g} l0={r['l0']:.3g}" for r in records}
    return {
        "mean mse": f"{sum(r['mse'] for r in records) / len(records):.3g}",
        "mean l0": f"{sum(r['l0'] for r in records) / len(records):.3g}",
    }


def _warn_no_grad(i: int, sae: SAE) -> None:
    import warnings

    warnings.warn(
        f"SAE {i} ({sae.architecture}) selects latents with the downstream gradient, but the activation "
        "source gives none, so it trains with its no-gradient rule; use a source with gradients "
        "(ModelSource(..., with_grads=True), or with_grads = true in a run config's [data])",
        stacklevel=5,  # the caller of train(), past train(), run() and train_step()
    )
