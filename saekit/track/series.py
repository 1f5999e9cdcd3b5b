"""The series: one engine run per checkpoint, each warm-started from its neighbour's SAEs.

Training order is the checkpoints' order (``start = "first"``) or its reverse (``"last"``). The first
checkpoint of that order trains the run config's SAEs from scratch with its [train] settings; every next
one loads the SAEs just saved and fine-tunes them for ``track.steps`` steps at ``lr_factor`` times their
learning rate, with ``warmup_steps`` of learning-rate warm-up and no sparsity warm-up (the SAEs are
already sparse). Latent ``i`` therefore stays latent ``i`` along the series.

An SAE is carried in normalised units: its weights enter the next checkpoint's normalised units as they
left the previous one's, so a model whose activations grow tenfold between two checkpoints hands over
an SAE that still fits the shape of its data (raw units would hand over biases and thresholds a tenth
of their size).

Layout of the output folder:

    track.json                      the settings as read and the checkpoints
    series/<NN>-<label>/            one `saekit train` folder per checkpoint (config.json, metrics.jsonl,
                                    checkpoint, stage.json - its steps and seconds, saes/ - the suite of
                                    that checkpoint's SAEs)
    independent/<NN>-<label>/       with track.independent: the same SAEs trained from scratch there,
                                    each from an initialisation of its own

A stage is done when its ``saes/`` suite exists; ``resume`` skips done stages and resumes the next from
its engine checkpoint (``[train].checkpoint_every`` sets how much a kill loses).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

from saekit.atomic import write_text
from saekit.bounded import read_json
from saekit.cli.run_config import build_saes, train_from_config
from saekit.errors import ArtifactError, ConfigError
from saekit.io.artifact import INDEX_FILE, load_suite, save_suite
from saekit.sae.base import SAE
from saekit.sources.spec import source_from_spec
from saekit.track.config import Checkpoint, TrackRun
from saekit.training.config import TrainConfig
from saekit.training.normalise import estimate_scales, rescale_, rescale_sites_, site_factors
from saekit.types import ActivationSource

SERIES, INDEPENDENT, TRACK_FILE, STAGE_FILE = "series", "independent", "track.json", "stage.json"
INDEPENDENT_SEED = 1_000_003


class Stage(NamedTuple):
    """What one checkpoint's run took."""

    checkpoint: Checkpoint
    folder: Path
    """The run's folder; its SAEs are in ``folder / "saes"``."""
    warm: bool
    """Fine-tuned from the neighbouring checkpoint's SAEs (False: trained from scratch)."""
    steps: int
    seconds: float
    """Wall time of the call that finished the stage (an earlier call's, read from ``stage.json``, for a
    stage done before a resume)."""


class SeriesResult(NamedTuple):
    series: list[Stage]
    """In checkpoint order (not training order)."""
    independent: list[Stage]
    """The from-scratch baseline at every checkpoint but the series' own from-scratch one; [] without it."""
    names: list[str]
    """The SAEs' names in every suite."""


def training_order(tr: TrackRun) -> list[Checkpoint]:
    return list(tr.checkpoints) if tr.track.start == "first" else list(reversed(tr.checkpoints))


def finetune_config(tr: TrackRun) -> TrainConfig:
    """The [train] settings of a fine-tuning: track.steps steps, its warm-up, no sparsity warm-up."""
    return dataclasses.replace(
        tr.run.train, steps=tr.track.steps, tokens=None, lr_warmup_steps=tr.track.warmup_steps, sparsity_warmup_steps=0
    )


def run_series(tr: TrackRun, out: Path, *, resume: bool = False) -> SeriesResult:
    """Train the series (and the independent baseline when asked) into ``out``; see the module docstring."""
    record = _check_record(tr, out, resume)
    stages, names, previous, lrs = [], [], None, {}
    for n, ckpt in enumerate(training_order(tr)):
        stage, names = _stage(tr, ckpt, out / SERIES / ckpt.folder_name, previous, resume, lrs)
        stages.append(stage)
        previous = stage.folder / "saes"
        if n == 0:  # fine-tunings run at lr_factor times the learning rates of the from-scratch SAEs
            write_text(out / TRACK_FILE, record)  # once the first stage's checks have passed and it ran
            lrs = {name: tr.track.lr_factor * learning_rate(sae) for name, sae in load_suite(previous, device="meta").items()}
        print(f"[track] {n + 1}/{len(tr.checkpoints)} {ckpt.label}: {'fine-tuned' if stage.warm else 'from scratch'}, {stage.steps} steps, {stage.seconds:.0f} s")
    independent = []
    if tr.track.independent:
        for ckpt in training_order(tr)[1:]:
            stage, _ = _stage(tr, ckpt, out / INDEPENDENT / ckpt.folder_name, None, resume, {}, independent=True)
            independent.append(stage)
            print(f"[track] independent {ckpt.label}: from scratch, {stage.steps} steps, {stage.seconds:.0f} s")
    by_index = sorted(stages, key=lambda s: s.checkpoint.index)
    return SeriesResult(by_index, sorted(independent, key=lambda s: s.checkpoint.index), names)


def _check_record(tr: TrackRun, out: Path, resume: bool) -> str:
    """The record of the settings (``track.json``); a second series in ``out``, or a resume with other
    settings, is refused. It is written once the first stage has run, so a config refused on its way
    in leaves ``out`` as it was (the first stage's own checkpoint guards a resume until then)."""
    record = json.dumps({"config": tr.raw, "checkpoints": [c._asdict() for c in tr.checkpoints]}, indent=2, default=str) + "\n"
    path = out / TRACK_FILE
    if path.exists():
        if not resume:
            raise ConfigError(f"{out} already holds a series ({TRACK_FILE}); resume it (--resume) or choose another folder")
        if path.read_text(encoding="utf-8") != record:
            raise ConfigError(f"{path} records other settings or checkpoints than this config's: a resume must use the same")
    return record


def _stage(
    tr: TrackRun, ckpt: Checkpoint, folder: Path, previous: Path | None, resume: bool, lrs: dict[str, float],
    independent: bool = False,
) -> tuple[Stage, list[str]]:
    warm = previous is not None
    cfg = finetune_config(tr) if warm else tr.run.train
    if resume and (folder / "saes" / INDEX_FILE).is_file():
        seconds = float(read_json(folder / STAGE_FILE, 1 << 16, ArtifactError)["seconds"])
        return Stage(ckpt, folder, warm, cfg.total_steps, seconds), list(load_suite(folder / "saes", device="meta"))
    source = checkpoint_source(tr, ckpt)
    if previous is None:
        built = build_saes([_reseeded(i, t, ckpt) if independent else t for i, t in enumerate(tr.run.saes)], source)
        saes, names = built.saes, built.names
    else:
        suite = load_suite(previous)
        names, saes = list(suite), list(suite.values())
        for name, sae in suite.items():
            warm_start_(sae, source, cfg, lrs[name])
    record = {"config.json": json.dumps({"track_stage": ckpt._asdict(), "warm_start": str(previous) if warm else None}, indent=2) + "\n"}
    result = train_from_config(dataclasses.replace(tr.run, train=cfg), saes, source, out_dir=folder, resume=resume, start_files=record)
    # The stage's time, for the cost report of a later resume; written before the suite that marks it done.
    write_text(folder / STAGE_FILE, json.dumps({"steps": result.steps, "seconds": result.seconds}) + "\n")
    save_suite(result.saes, folder / "saes", names=names)
    return Stage(ckpt, folder, warm, result.steps, result.seconds), names


def _reseeded(i: int, table: dict, ckpt: Checkpoint) -> dict:
    """An [[sae]] table whose seed is its own plus one per checkpoint: the baseline's SAEs share no
    initialisation (a shared one would keep latent identity by itself)."""
    return {**table, "seed": table.get("seed", i) + INDEPENDENT_SEED * (ckpt.index + 1)}


def checkpoint_source(tr: TrackRun, ckpt: Checkpoint) -> ActivationSource:
    """The [data] of the track config with the checkpoint as its model."""
    return source_from_spec({**tr.run.data, "model": ckpt.model})


def learning_rate(sae: SAE) -> float:
    """The learning rate ``sae`` trains at (its own, else its architecture's default)."""
    return sae.cfg.lr if sae.cfg.lr is not None else sae.optim_defaults(sae.cfg).lr


def warm_start_(sae: SAE, source: ActivationSource, cfg: TrainConfig, lr: float) -> None:
    """Prepare a saved SAE to be fine-tuned on ``source`` at learning rate ``lr``: its activation-unit
    tensors are rescaled so that it enters the new data's normalised units as it left the old data's
    (the module docstring)."""
    sae.cfg = dataclasses.replace(sae.cfg, lr=lr)
    if not cfg.normalize_activations:
        return
    read, written = sae.sites, sae.sites_out
    new = estimate_scales(source, {*read, *written}, cfg.batch_size, cfg.seed, cfg.norm_estimation_tokens)
    if len(read) == 1 and len(written) == 1:  # a transcoder has two sites, two factors
        old_in = float(sae.metadata["normalization_factor"])
        old_out = float(sae.metadata["normalization_factor_out"]) if sae.transcoder else old_in
        rescale_(sae, old_out / new[written[0]], old_in / new[read[0]])
        return
    # An SAE over several sites has a factor per site (sae/crosscoder.py): each block by its own ratio.
    old_in = dict(zip(read, sae.metadata["normalization_factors"]))
    old_out = dict(zip(written, sae.metadata["normalization_factors_out"])) if sae.transcoder else old_in
    ratio_in = site_factors(read, {site: old_in[site] / new[site] for site in read}, sae.d_in // len(read))
    ratio_out = site_factors(written, {site: old_out[site] / new[site] for site in written}, sae.d_out // len(written))
    rescale_sites_(sae, ratio_in, ratio_out)
