"""A run's output folder: which checkpoint a run resumes from, and what else it writes when it starts.

The order is the contract: every check (the folder holds no other run, the checkpoint is intact, fits
and has the run's fingerprint, the data) is done before the run writes anything into the folder, so a
refused run leaves the folder byte for byte as it found it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from saekit.atomic import remove_temporaries, write_text
from saekit.errors import ArtifactError, ConfigError
from saekit.sae.base import SAE
from saekit.strict import to_dict
from saekit.training.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint
from saekit.training.config import TrainConfig
from saekit.training.logs import METRICS_NAME
from saekit.training.objective import Objective
from saekit.training.sites import described
from saekit.types import ActivationSource


def write_start_files(out_dir: Path, files: Mapping[str, str]) -> None:
    """Once every check has passed: clear what killed writes of an earlier process left (temporaries of
    the checkpoint, the log and the start files), then write the start files (name -> text)."""
    remove_temporaries(out_dir, "|".join(re.escape(name) for name in (CHECKPOINT_NAME, METRICS_NAME, *files)))
    for name, text in files.items():
        write_text(out_dir / name, text)


def refuse_a_second_run(out_dir: Path) -> None:
    """A fresh run must not overwrite the checkpoint of another one (ConfigError), nor train to find
    a folder where its checkpoint goes (ArtifactError)."""
    if (out_dir / CHECKPOINT_NAME).is_dir():
        raise ArtifactError(f"{out_dir / CHECKPOINT_NAME} is a folder where the run's checkpoint file goes: move it away")
    if _present(out_dir / CHECKPOINT_NAME):
        raise ConfigError(
            f"{out_dir} already holds a run ({CHECKPOINT_NAME}); resume it (--resume, or resume=True) or "
            "choose another output folder"
        )


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()  # a dangling link is there too, and is reported on reading


class Resumed(NamedTuple):
    checkpoint: Checkpoint
    path: Path


def checkpoint_to_resume(
    out_dir: Path | None, resume: bool, fingerprint: Mapping[str, Any], sites: list[str], total_steps: int
) -> Resumed | None:
    """The checkpoint a run continues from: None for a fresh run, or a resume that finds none. A
    fresh run into a folder that holds a checkpoint, or a resume from a checkpoint of another run,
    is refused (ConfigError); a checkpoint that is damaged or does not fit raises ArtifactError."""
    if out_dir is None:
        return None
    path = out_dir / CHECKPOINT_NAME
    if not resume:
        refuse_a_second_run(out_dir)
        return None
    if not _present(path):
        return None
    ckpt = load_checkpoint(path)
    if ckpt.fingerprint != fingerprint:
        raise ConfigError(
            f"{path} was written by a run with different SAEs, sites, data or training settings; "
            "resume with the same configuration or start a new output folder"
        )
    if set(ckpt.scales) != set(sites) or not 0 <= ckpt.step <= total_steps:
        raise ArtifactError(
            f"checkpoint {path} does not fit this run: step {ckpt.step} of {total_steps}, normalisation "
            f"factors for sites {sorted(ckpt.scales)}, the run reads {sorted(set(sites))}"
        )
    return Resumed(ckpt, path)


def fingerprint(
    saes: Sequence[SAE], sites: list[tuple[str, ...]], targets: list[tuple[str, ...] | None], cfg: TrainConfig, source: ActivationSource, objective: Objective
) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed by this run (as JSON gives it back). Settings
    that do not change the result (logging, progress, checkpoint cadence, device) may differ."""
    keep = replace(
        cfg, progress=True, log_every=1, checkpoint_every=None, wandb_project=None, tensorboard=False, device="auto",
        collective_timeout_s=TrainConfig.collective_timeout_s, parallel="data",
    )  # fmt: skip
    fingerprint = {"saes": described(saes, sites, targets), "train": to_dict(keep), "data": source.describe(), "objective": objective.describe()}
    return json.loads(json.dumps(fingerprint, default=str))
