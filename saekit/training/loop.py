"""The one training loop: any number of SAEs, on one or many sites, fed by one activation stream.

Each step draws one batch from the source and gives every SAE the activations of its site, so a
hyper-parameter sweep or a suite over every layer costs one pass over the data. Everything the loop
keeps between steps (weights, Adam moments, dead-latent counters, normalisation factors, RNG) goes
into the checkpoint, and the data source replays from a batch index, so a resumed run ends with the
same weights as an uninterrupted one.

Group objectives (:mod:`saekit.objectives`, e.g. mutual feature regularisation) add a term over
several SAEs. The SAEs they couple form one *unit*: their losses and the group terms are summed and
back-propagated together; every other SAE is a unit of its own, trained as if alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saekit.errors import ConfigError, DataError
from saekit.memory import scratch
from saekit.memory.heap import reuse_large_blocks
from saekit.objectives import GroupObjective
from saekit.sae import functional as F
from saekit.sae.base import SAE
from saekit.strict import to_dict
from saekit.sources.prefetch import Prefetcher
from saekit.training import dead
from saekit.training.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, restore, save_checkpoint
from saekit.training.config import TrainConfig
from saekit.training.logs import MetricsLog
from saekit.training.optim import apply_update, make_optimizer
from saekit.training.schedules import lr_factor, sparsity_factor
from saekit.types import ActBatch, ActivationSource, LossOut, StepCtx, as_float


@dataclass
class TrainResult:
    """What a run produced. ``saes`` take raw activations (normalisation folded back)."""

    saes: list[SAE]
    final_metrics: list[dict[str, float]]
    steps: int
    resumed_from: int
    seconds: float


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of a run: ``name``, or for "auto" bfloat16 on CUDA devices with bfloat16 support
    and float32 elsewhere."""
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def assign_sites(saes: Sequence[SAE], source: ActivationSource) -> list[str]:
    """The source site each SAE reads. A one-site source feeds every SAE; otherwise each SAE's
    ``site`` must name one of the source's sites."""
    sites = tuple(source.sites)
    assigned = []
    for i, sae in enumerate(saes):
        if len(sites) == 1:
            site = sites[0]
        elif sae.site in sites:
            site = sae.site
        else:
            raise ConfigError(
                f"SAE {i} ({sae.architecture}) has site {sae.site!r}, but the activation source provides {list(sites)}"
            )
        if source.d_in(site) != sae.d_in:
            raise DataError(
                f"SAE {i} ({sae.architecture}) has d_in={sae.d_in} but activations at site {site!r} "
                f"have width {source.d_in(site)}"
            )
        assigned.append(site)
    return assigned


@torch.no_grad()
def estimate_scales(source: ActivationSource, sites: set[str], cfg: TrainConfig) -> dict[str, float]:
    """Per site, the factor s with E||s·x||² = 1 over the first ``norm_estimation_tokens`` tokens."""
    sums = dict.fromkeys(sites, 0.0)
    count = 0
    for batch in source.batches(cfg.batch_size, seed=cfg.seed, start=0):
        for site in sites:
            x = batch[site].x.double()
            if not torch.isfinite(x).all():
                raise DataError(f"activations at site {site!r} contain NaN or inf")
            sums[site] += float(x.pow(2).sum())
        count += batch[next(iter(sites))].x.shape[0]
        if count >= cfg.norm_estimation_tokens:
            break
    scales = {}
    for site, total in sums.items():
        if total <= 0:
            raise DataError(f"activations at site {site!r} are all zero; cannot normalise them")
        scales[site] = math.sqrt(count / total)
    return scales


@torch.no_grad()
def rescale_(sae: SAE, factor: float) -> None:
    """Multiply the tensors in activation units by ``factor`` (factor = s enters normalised units,
    1/s returns to raw units); weights are unit-free and stay as they are."""
    tensors = dict(sae.named_parameters()) | dict(sae.named_buffers())
    for name in sae.scaled_params:
        tensors[name].mul_(factor)


def enter_normalised_units_(sae: SAE, x: torch.Tensor, scale: float) -> None:
    """Prepare ``sae`` for training on activations already multiplied by ``scale`` (``x`` is the first
    such batch). A trained SAE lives in raw units and is rescaled into normalised ones. A fresh SAE's
    hyper-parameters (threshold_init, bandwidth, coefficients) are defined in normalised units, so it
    is left as it is, whatever the raw scale of the data, and only its ``b_dec`` is initialised."""
    if was_trained(sae):
        rescale_(sae, scale)
    else:
        init_b_dec_(sae, x)


def was_trained(sae: SAE) -> bool:
    """Whether ``sae`` comes out of training (saekit's, or another library's through io.convert): its
    ``b_dec`` is then kept when training continues, instead of being re-initialised from the data."""
    return "normalization_factor" in sae.metadata or "converted_from" in sae.metadata


@torch.no_grad()
def init_b_dec_(sae: SAE, x: torch.Tensor) -> None:
    if sae.b_dec_init == "geometric_median":
        sae.b_dec.copy_(F.geometric_median(x))
    elif sae.b_dec_init == "mean":
        sae.b_dec.copy_(x.mean(0))


@dataclass(frozen=True)
class Unit:
    """SAEs trained with one backward pass: one SAE alone, or the members of linked group objectives."""

    members: tuple[int, ...]
    objectives: tuple[GroupObjective, ...] = ()


def training_units(n_saes: int, objectives: Sequence[GroupObjective]) -> list[Unit]:
    """Split SAEs ``0..n_saes-1`` into units: SAEs linked through any chain of shared group objectives
    train together; the rest alone. Units are ordered by their first member."""
    parent = list(range(n_saes))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for j, objective in enumerate(objectives):
        members = tuple(objective.members)
        if len(set(members)) < 2 or any(not 0 <= m < n_saes for m in members):
            raise ConfigError(
                f"group objective {j} ({type(objective).__name__}) must name at least two distinct SAEs "
                f"among 0..{n_saes - 1}, got {list(members)}"
            )
        for m in members[1:]:
            parent[root(m)] = root(members[0])
    groups: dict[int, list[int]] = {}
    for i in range(n_saes):
        groups.setdefault(root(i), []).append(i)
    return [
        Unit(tuple(members), tuple(o for o in objectives if root(o.members[0]) == root(members[0])))
        for members in sorted(groups.values())
    ]


def _fingerprint(saes: Sequence[SAE], sites: list[str], cfg: TrainConfig, source: ActivationSource) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed by this run (as JSON gives it back). Settings
    that do not change the result (logging, progress, checkpoint cadence, device) may differ."""
    keep = replace(cfg, progress=True, log_every=1, checkpoint_every=None, wandb_project=None, tensorboard=False, device="auto")
    fingerprint = {
        "saes": [{"architecture": s.architecture, "config": to_dict(s.cfg), "site": site} for s, site in zip(saes, sites)],
        "train": to_dict(keep),
        "data": source.describe(),
    }
    return json.loads(json.dumps(fingerprint, default=str))


def run(
    saes: Sequence[SAE],
    source: ActivationSource,
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    objectives: Sequence[GroupObjective] = (),
) -> TrainResult:
    """Train ``saes`` side by side on ``source``; see :func:`saekit.train`. ``objectives`` are group
    terms over several of the SAEs (indices into ``saes``), such as :class:`saekit.objectives.mfr.MFR`."""
    # CPU: one heap setting for the whole run (saekit.memory.heap), so that the blocks the model's
    # forward passes free are reused by the training steps, and each step's by the next, instead of
    # being handed back and faulted in again.
    device = resolve_device(cfg.device)
    with reuse_large_blocks(device):
        return _run(saes, source, cfg, device, out_dir=out_dir, resume=resume, objectives=objectives)


def _run(
    saes: Sequence[SAE],
    source: ActivationSource,
    cfg: TrainConfig,
    device: torch.device,
    *,
    out_dir: Path | str | None,
    resume: bool,
    objectives: Sequence[GroupObjective],
) -> TrainResult:
    started = time.perf_counter()
    out_dir = Path(out_dir) if out_dir is not None else None
    if resume and out_dir is None:
        raise ConfigError("resume needs the output folder of the interrupted run")
    if cfg.checkpoint_every and out_dir is None:
        raise ConfigError("checkpoint_every needs an output folder")
    saes = list(saes)
    if not saes:
        raise ConfigError("nothing to train: the list of SAEs is empty")
    sites = assign_sites(saes, source)
    total = cfg.total_steps
    units = training_units(len(saes), objectives)
    fingerprint = _fingerprint(saes, sites, cfg, source)
    if objectives:
        fingerprint["objectives"] = json.loads(json.dumps([o.describe() for o in objectives], default=str))
    for sae in saes:
        sae.to(device)
    optimizers = [make_optimizer(sae) for sae in saes]
    counters = [dead.new_counter(sae.d_sae, device) for sae in saes]
    ckpt_path = out_dir / CHECKPOINT_NAME if out_dir is not None else None

    start = 0
    if resume and ckpt_path is not None and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        if ckpt.info.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"{ckpt_path} was written by a run with different SAEs, sites, data or training settings; "
                "resume with the same configuration or start a new output folder"
            )
        restore(ckpt, saes, optimizers, counters)
        scales = ckpt.info["scales"]
        start = ckpt.step
        if cfg.progress:
            tqdm.write(f"resuming from step {start} of {total} ({ckpt_path})")
    else:
        if resume and cfg.progress:
            tqdm.write(f"no checkpoint in {out_dir}; starting from scratch")
        used_sites = set(sites)
        scales = estimate_scales(source, used_sites, cfg) if cfg.normalize_activations else dict.fromkeys(used_sites, 1.0)
        first = next(iter(source.batches(cfg.batch_size, seed=cfg.seed, start=0)))
        for sae, site in zip(saes, sites):
            enter_normalised_units_(sae, first[site].x.to(device).float() * scales[site], scales[site])

    log = MetricsLog(
        out_dir, resume_step=start, tensorboard=cfg.tensorboard, wandb_project=cfg.wandb_project, run_config=fingerprint
    )
    dtype = resolve_dtype(cfg.dtype, device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    dead_window = cfg.resolved_dead_tokens
    last_records: list[dict[str, Any]] = []

    def checkpoint(step: int) -> None:
        if ckpt_path is None:
            return
        save_checkpoint(
            ckpt_path,
            Checkpoint(
                step=step,
                sae_states=[sae.state_dict() for sae in saes],
                optimizer_states=[opt.state_dict() for opt in optimizers],
                dead_counters=counters,
                rng_state=torch.get_rng_state(),
                info={"scales": scales, "fingerprint": fingerprint},
            ),
        )

    bar = tqdm(total=total, initial=start, disable=not cfg.progress, unit="step", desc=f"training {len(saes)} SAE(s)")
    batches = source.batches(cfg.batch_size, seed=cfg.seed, start=start)
    if device.type == "cuda" or getattr(source, "reads_from_disk", False):
        batches = Prefetcher(batches, pin_memory=device.type == "cuda")
    # The sparse paths' pre-activations go into one reused buffer per shape (saekit.memory.scratch).
    with scratch.reusing(), _closing(batches):
        for step in range(start, total):
            batch = next(batches)
            ctx_base = StepCtx(step=step, total_steps=total, sparsity_scale=sparsity_factor(step, cfg.resolved_sparsity_warmup))
            lr_mult = lr_factor(step, total, cfg.lr_warmup_steps, cfg.lr_decay_fraction)
            outs: list[LossOut] = [None] * len(saes)  # type: ignore[list-item]
            unit_losses = []
            for unit in units:
                ctxs = {}
                for i in unit.members:
                    acts = batch[sites[i]]
                    if step == start and acts.grad is None and saes[i].uses_grad:
                        _warn_no_grad(i, saes[i])
                    x = acts.x.to(device, non_blocking=True).float() * scales[sites[i]]
                    # x is scaled by s, so d loss / d(s·x) = (d loss / d x) / s
                    grad = acts.grad.to(device).float() / scales[sites[i]] if acts.grad is not None else None
                    ctxs[i] = replace(ctx_base, dead_mask=dead.dead_mask(counters[i], dead_window))
                    with autocast:
                        outs[i] = saes[i].loss(ActBatch(x, grad), ctxs[i])
                unit_loss = sum(outs[i].loss.float() for i in unit.members)
                for objective in unit.objectives:
                    with autocast:
                        term = objective([saes[m] for m in objective.members], [outs[m] for m in objective.members], ctx_base)
                    unit_loss = unit_loss + term.loss.float()
                    for m in objective.members:
                        outs[m] = outs[m]._replace(terms={**outs[m].terms, **term.terms})
                for i in unit.members:
                    optimizers[i].zero_grad(set_to_none=True)
                unit_loss.backward()
                unit_losses.append(unit_loss.detach())
                for i in unit.members:
                    apply_update(saes[i], optimizers[i], lr_mult, cfg.grad_clip)
                    with torch.no_grad():
                        saes[i].after_step(outs[i], ctxs[i])
                    dead.update_counter_(counters[i], outs[i].codes, outs[i].fired)
            # One host sync per step, for all SAEs together.
            if not bool(torch.stack(unit_losses).isfinite().all()):
                _raise_non_finite(batch, saes, sites, outs, step)
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                last_records = _records(saes, sites, outs, counters, dead_window, optimizers, step + 1, cfg.batch_size)
                log.write(last_records)
                bar.set_postfix(_postfix(last_records))
            bar.update(1)
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
                checkpoint(step + 1)
    bar.close()
    checkpoint(total)
    log.close()

    for sae, site in zip(saes, sites):
        rescale_(sae, 1.0 / scales[site])
        sae.metadata.setdefault("site", site)
        sae.metadata["normalization_factor"] = scales[site]
    final = [{k: v for k, v in r.items() if k not in ("step", "sae", "name")} for r in last_records]
    for sae, metrics in zip(saes, final):
        sae.provenance.update(
            {"data": source.describe(), "tokens": total * cfg.batch_size, "train_config": to_dict(cfg), "final_metrics": metrics}
        )
    return TrainResult(saes, final, total, start, time.perf_counter() - started)


@contextlib.contextmanager
def _closing(batches: Any) -> Iterator[None]:
    """Close the batch iterator at the end (a generator's ``finally``, the prefetch thread), where it can
    be closed: a source may return any iterator."""
    try:
        yield
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _records(saes, sites, outs, counters, dead_window, optimizers, step, batch_size) -> list[dict[str, Any]]:
    records = []
    for i, (sae, site, out, counter, opt) in enumerate(zip(saes, sites, outs, counters, optimizers)):
        record: dict[str, Any] = {"step": step, "sae": i, "name": f"{i:02d}-{sae.architecture}", "site": site}
        record.update({k: as_float(v) for k, v in out.terms.items()})
        record["dead_fraction"] = float(dead.dead_mask(counter, dead_window).float().mean())
        record["lr"] = opt.param_groups[0]["lr"]
        record["tokens"] = step * batch_size
        records.append(record)
    return records


def _postfix(records: list[dict[str, Any]]) -> dict[str, str]:
    if len(records) <= 3:
        return {f"{r['name']}": f"mse={r['mse']:.3g} l0={r['l0']:.3g}" for r in records}
    return {
        "mean mse": f"{sum(r['mse'] for r in records) / len(records):.3g}",
        "mean l0": f"{sum(r['l0'] for r in records) / len(records):.3g}",
    }


def _warn_no_grad(i: int, sae: SAE) -> None:
    warnings.warn(
        f"SAE {i} ({sae.architecture}) selects latents with the downstream gradient, but the activation "
        "source gives none, so it trains with its no-gradient rule; use a source with gradients "
        "(ModelSource(..., with_grads=True), or with_grads = true in a run config's [data])",
        stacklevel=4,  # the caller of run(), past run() and _run()
    )


def _raise_non_finite(batch, saes, sites, outs, step) -> None:
    for site in sorted(set(sites)):
        x = batch[site].x
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            row = int(bad.any(-1).nonzero()[0])
            raise DataError(
                f"activations at site {site!r} contain {int(bad.sum())} NaN or inf values "
                f"(first in row {row} of the batch at step {step})"
            )
    for i, (sae, out) in enumerate(zip(saes, outs)):
        if not bool(torch.isfinite(out.loss.detach())):
            raise FloatingPointError(
                f"SAE {i} ({sae.architecture}) diverged at step {step}: loss is {float(out.loss)}; "
                "lower its learning rate (lr) or enable grad_clip"
            )
    raise FloatingPointError(f"a group objective's term is not finite at step {step}; lower its coefficient or the learning rates")
