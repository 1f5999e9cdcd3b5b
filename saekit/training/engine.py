"""The one training engine: any number of SAEs, on one or many sites, fed by one activation stream,
under any objective (:mod:`saekit.training.objective`).

A run's life cycle, each stage a small function over the run's state
(:class:`~saekit.training.run_state.Run`):

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
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from saekit import devices
from saekit._fast import training_fast_paths
from saekit.comm import LOCAL, Comm
from saekit.errors import ConfigError
from saekit.sae.base import SAE
from saekit.sources.cache import CacheSource
from saekit.sources.prefetch import Prefetcher
from saekit.strict import to_dict
from saekit.training import dead, fsdp, health
from saekit.training.checkpoint import Checkpoint, check_fit, restore, save_checkpoint
from saekit.training.collect import gather_weights_, gathered_checkpoint
from saekit.training.config import TrainConfig
from saekit.training.distributed import check_distributable, comm_for_run, mean_terms, unit_owners
from saekit.training.latent_shards import parameter_names, shard_of, slice_checkpoint
from saekit.training.logs import MetricsLog, postfix, step_records, warn_no_grad
from saekit.training.normalise import enter_normalised_units_, estimate_scales, leave_normalised_units_
from saekit.training.objective import LocalObjective, Objective
from saekit.training.optim import apply_update, make_optimizer
from saekit.training.outputs import checkpoint_to_resume, fingerprint, write_start_files
from saekit.training.run_state import Run
from saekit.training.schedules import lr_factor, sparsity_factor
from saekit.training.sites import assign_sites, assign_targets, label
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
    trained: tuple[int, ...] = ()
    """The SAEs of ``saes`` this process holds trained: all of them, but on the ranks other than 0 of a
    site-parallel run (only those they trained) and of a latent-sharded one (none: their slices were
    joined on rank 0). Rank 0 holds all."""

    @property
    def sae(self) -> SAE:
        """The trained SAE of a run of one SAE."""
        if len(self.saes) != 1:
            raise ValueError(f"this run trained {len(self.saes)} SAEs: read .saes")
        return self.saes[0]


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
    comm = comm_for_run(device, cfg.collective_timeout_s)
    units = objective.units(len(saes))
    owners = unit_owners(units, saes, comm.world_size) if comm.distributed and cfg.parallel == "sites" else [comm.rank] * len(units)
    sharded = comm.distributed and cfg.parallel in ("latents", "fsdp")
    for unit, owner in zip(units, owners):  # the device holds only the SAEs (or the shards) this rank trains
        for i in unit.members if owner == comm.rank and not sharded else ():
            saes[i].to(device)
    if comm.distributed:
        check_distributable(saes, objective, cfg, comm, len(units))
        _start_from_rank_0(saes, comm, device, cfg.parallel == "latents")
    trained = _shards(saes, cfg, comm, device) if sharded else saes
    return Run(
        saes=trained,
        given=saes,
        sites=sites,
        targets=targets,
        source=source,
        cfg=cfg,
        objective=objective,
        device=device,
        units=units,
        owners=owners,
        optimizers=[make_optimizer(sae) for sae in trained],
        counters=[dead.new_counter(sae.d_sae, device) for sae in trained],
        fingerprint=fingerprint(saes, sites, targets, cfg, source, objective),
        out_dir=out_dir,
        comm=comm,
        start_files=dict(start_files or {}),
        started=time.perf_counter(),
    )


def _shards(saes: Sequence[SAE], cfg: TrainConfig, comm: Comm, device: torch.device) -> list[SAE]:
    """What this rank trains of each SAE in a latent-sharded run (its slice of the latents) or a fully
    sharded one (a copy whose parameters FSDP splits over the ranks); the caller's stay as they are."""
    if cfg.parallel == "latents":
        return [shard_of(sae, comm.rank, comm.world_size).to(device) for sae in saes]
    mesh = fsdp.mesh_of(comm, device)
    return [fsdp.sharded_copy(sae, mesh) for sae in saes]


def _start_from_rank_0(saes: Sequence[SAE], comm: Comm, device: torch.device, sharded: bool) -> None:
    """Every rank's SAEs take rank 0's values, however each rank built its own. NCCL sends from the
    device only, so a tensor held elsewhere goes through it, a latent slice at a time when ``sharded``
    (a whole dictionary never needs to fit the device)."""
    for sae in saes:
        for name, tensor in sae.state_dict().items():
            axis = sae.latent_axes.get(name) if sharded else None
            for piece in tensor.chunk(comm.world_size, axis) if axis is not None else (tensor,):
                on_device = comm.broadcast_(piece.to(device))
                if on_device is not piece:
                    piece.copy_(on_device)


def restore_or_initialise(state: Run, resume: bool) -> None:
    """Resume from the checkpoint in the output folder, or estimate the normalisation and enter it;
    then open the outputs. Every check comes before the first write into the output folder
    (:mod:`saekit.training.outputs`)."""
    cfg = state.cfg
    resumed = checkpoint_to_resume(state.out_dir, resume, state.fingerprint, state.used_sites, cfg.total_steps)
    if resumed is not None:
        ckpt, own = resumed.checkpoint, state.owned
        if state.latent_sharded:  # this rank's slices of the whole run's tensors
            names = [parameter_names(sae, opt) for sae, opt in zip(state.saes, state.optimizers)]
            ckpt = slice_checkpoint(ckpt, state.given, names, state.comm.rank, state.comm.world_size)
        part = replace(ckpt, sae_states=[ckpt.sae_states[i] for i in own], optimizer_states=[ckpt.optimizer_states[i] for i in own],
                       dead_counters=[ckpt.dead_counters[i] for i in own])  # fmt: skip
        saes, opts, counters = [state.saes[i] for i in own], [state.optimizers[i] for i in own], [state.counters[i] for i in own]
        if state.fully_sharded:  # the whole tensors, once checked, cut into this rank's shares
            check_fit(part, resumed.path, saes, opts, counters)
            part = fsdp.shares_of(part, saes, opts)
        restore(part, resumed.path, saes, opts, counters)
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
        for i in state.owned:
            # A fully sharded SAE is set up whole, in the caller's copy, then shared out.
            sae = state.given[i] if state.fully_sharded else state.saes[i]
            enter_normalised_units_(sae, state.inputs(i, first), state.sites[i], state.reconstructed[i], state.scales)
            if state.fully_sharded:
                state.saes[i].load_state_dict(fsdp.shares_of_state(sae.state_dict(), state.saes[i]))
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
    """One optimiser step of every unit this rank trains on ``batch``, then the dead-latent counters,
    the health check and the log."""
    cfg, total, comm = state.cfg, state.cfg.total_steps, state.step_comm
    state.rows = batch[state.sites[0][0]].x.shape[0]
    if comm.distributed:
        batch = state.objective.shard(batch, comm)
    base = StepCtx(step=step, total_steps=total, sparsity_scale=sparsity_factor(step, cfg.resolved_sparsity_warmup), comm=comm,
                   latents=state.latent_comm)  # fmt: skip
    lr_mult = lr_factor(step, total, cfg.lr_warmup_steps, cfg.lr_decay_fraction)
    window = cfg.resolved_dead_tokens
    outs: dict[int, LossOut] = {}
    losses = []
    for unit, owner in zip(state.units, state.owners):
        if owner != state.comm.rank:
            continue
        ctxs = {i: replace(base, dead_mask=dead.dead_mask(state.counters[i], window)) for i in unit.members}
        for i in unit.members:
            if step == state.start and batch[state.sites[i][0]].grad is None and state.saes[i].uses_grad:
                warn_no_grad(i, state.saes[i])
        unit_loss = state.objective.unit_loss(state, unit, batch, ctxs)
        for i in unit.members:
            state.optimizers[i].zero_grad(set_to_none=True)
        unit_loss.loss.backward()
        losses.append(unit_loss.loss.detach())
        for i in unit.members:
            out = outs[i] = unit_loss.outs[i]
            state.grad_comm.average_grads_(state.saes[i].parameters())
            apply_update(state.saes[i], state.optimizers[i], lr_mult, cfg.grad_clip, state.latent_comm)
            # Nothing reads a gradient after its update: freed now, a run of many SAEs holds one SAE's
            # gradients at a time instead of every SAE's until its next step.
            state.optimizers[i].zero_grad(set_to_none=True)
            with torch.no_grad():
                state.saes[i].after_step(out, ctxs[i])
            dead.update_counter_(state.counters[i], out.codes, comm)
    if state.energy is None:
        state.energy = comm.sum_(health.energies(state.reconstructed, state.scales, batch)) / comm.world_size
    agree = state.comm if state.site_parallel else LOCAL  # each rank judged its own SAEs: all stop together
    health.check_step(state.saes, state.owned, state.used_sites, batch, losses, outs, step, state.energy, comm, agree)
    if (step + 1) % cfg.log_every == 0 or step + 1 == total:
        _log(state, outs, step)
    state.bar.update(1)


def _log(state: Run, outs: dict[int, LossOut], step: int) -> None:
    """The log's records of every SAE after ``step + 1`` steps, on every rank (one rank writes them)."""
    if state.step_comm.distributed:
        outs = {i: mean_terms(out, state.step_comm) for i, out in outs.items()}
    own = state.owned
    records = step_records([state.saes[i] for i in own], own, [label(state.sites[i]) for i in own], [outs[i] for i in own],
                           [state.counters[i] for i in own], state.cfg.resolved_dead_tokens, [state.optimizers[i] for i in own],
                           step + 1, state.rows)  # fmt: skip
    if state.site_parallel or state.latent_sharded:
        parts = [json.loads(p) for p in state.comm.gather_bytes(json.dumps(records).encode(), to_all=True) or []]
        if state.site_parallel:
            records = sorted((r for part in parts for r in part), key=lambda r: r["sae"])
        else:  # every rank logged every SAE, each from its slice of the latents: the dead fraction is their mean
            for i, record in enumerate(records):
                record["dead_fraction"] = sum(part[i]["dead_fraction"] for part in parts) / len(parts)
    state.records = records
    assert state.log is not None
    state.log.write(state.records)
    state.bar.set_postfix(postfix(state.records))


def checkpoint(state: Run, step: int) -> None:
    """Save everything needed to resume after ``step`` steps (with an output folder)."""
    path = state.checkpoint_path
    if path is None:
        return
    if state.gathers:  # rank 0 gathers every rank's part and writes the whole
        ckpt = gathered_checkpoint(state, step)
    elif state.comm.rank == 0:  # replicas are equal: one rank writes
        ckpt = Checkpoint(
            step=step,
            sae_states=[sae.state_dict() for sae in state.saes],
            optimizer_states=[opt.state_dict() for opt in state.optimizers],
            dead_counters=state.counters,
            rng_state=torch.get_rng_state(),
            scales=state.scales,
            fingerprint=state.fingerprint,
        )
    else:
        ckpt = None
    if ckpt is not None:
        assert state.log is not None
        state.log.sync()  # the log lines up to ``step`` are on disk before a checkpoint says the run got there
        save_checkpoint(path, ckpt)


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
    if state.gathers:
        gather_weights_(state)
    trained = list(range(len(state.saes))) if state.comm.rank == 0 else [] if state.latent_sharded else state.owned
    for i in trained:
        sae, read, out, metrics = state.given[i], state.sites[i], state.targets[i], final[i]
        leave_normalised_units_(sae, read, out, state.scales)
        sae.provenance.update({
            "data": state.source.describe(),
            "tokens": total * state.rows,
            "train_config": to_dict(state.cfg),
            "final_metrics": metrics,
            **state.objective.describe(),
            **({"distributed": {"mode": state.cfg.parallel, "world_size": state.comm.world_size}} if state.comm.distributed else {}),
        })  # fmt: skip
    return TrainResult(state.given, final, total, state.start, time.perf_counter() - state.started, state.comm.rank, tuple(trained))


@contextlib.contextmanager
def _session(state: Run) -> Iterator[None]:
    """What holds for the whole run: the training-only fast paths and the objective's own session; in a
    fully sharded run, FSDP's own collectives failing as the engine's do (a DistributedError)."""
    failures = state.comm.failures_within("an FSDP gather or reduction") if state.fully_sharded else contextlib.nullcontext()
    with training_fast_paths(state.device), state.objective.session(), failures:
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


def _say(state: Run, message: str) -> None:
    if state.cfg.progress and state.comm.rank == 0:
        tqdm.write(message)
