"""Where training metrics go: a JSONL file always (with an output folder), TensorBoard and
Weights & Biases when asked for and installed.

``metrics.jsonl`` is appended to line by line (:func:`saekit.atomic.append_text`). A fresh run
replaces it without reading it; a resumed run keeps the lines up to its checkpoint's step. Its last
line may be unfinished, cut off when the process died mid-write: that line is dropped with a warning
(it is always of a step after the checkpoint, whose lines were written before it). A line that is not
a record anywhere else was damaged after it was written, not by a crash, so it is refused by line
number rather than dropped: the resume rewrites the file, and would lose it for good.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor

from saekit.atomic import append_text, sync_file, write_text
from saekit.bounded import decode_utf8, parse_json
from saekit.errors import ArtifactError, ConfigError
from saekit.sae.base import SAE
from saekit.training import dead
from saekit.types import LossOut, as_float

METRICS_NAME = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per (step, SAE) to ``metrics.jsonl`` and mirrors to optional sinks.

    Opening it checks the optional sinks and reads the previous log before writing anything."""

    def __init__(self, out_dir: Path | None, *, resume_step: int = 0, tensorboard: bool = False, wandb_project: str | None = None, run_config: dict | None = None) -> None:
        if tensorboard and out_dir is None:
            raise ConfigError("tensorboard logging needs an output folder")
        summary_writer = _tensorboard_writer() if tensorboard else None
        wandb = _wandb_module(wandb_project) if wandb_project else None
        self.path = out_dir / METRICS_NAME if out_dir is not None else None
        if self.path is not None:
            write_text(self.path, lines_up_to(self.path, resume_step) if resume_step > 0 else "")
        self.tb = summary_writer(str(out_dir / "tensorboard")) if summary_writer is not None and out_dir is not None else None
        self.wandb_run = wandb.init(project=wandb_project, config=run_config or {}) if wandb is not None else None

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.path is not None:
            append_text(self.path, "".join(json.dumps(record) + "\n" for record in records))
        for record in records:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "sae")}
            if self.tb is not None:
                for key, value in scalars.items():
                    self.tb.add_scalar(f"{record['name']}/{key}", value, record["step"])
            if self.wandb_run is not None:
                self.wandb_run.log({f"{record['name']}/{k}": v for k, v in scalars.items()}, step=record["step"])

    def sync(self) -> None:
        """Put the lines written so far on disk (before a checkpoint says the run got past them)."""
        if self.path is not None:
            sync_file(self.path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def lines_up_to(path: Path, step: int) -> str:
    """The lines of the log at ``path`` (none if it is missing) whose step is at most ``step``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ArtifactError(f"cannot read the metrics log {path}: {exc.strerror or exc}") from exc
    lines = data.split(b"\n")
    unfinished = lines.pop()  # empty when the file ends with a newline, as every complete write does
    if unfinished:
        warnings.warn(
            f"{path}: dropped its unfinished last line ({len(unfinished)} bytes), cut off when the run stopped mid-write",
            stacklevel=2,
        )
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        line_step = _step_of(line)
        if line_step is None:
            raise ArtifactError(
                f"{path}, line {number}: not a metrics record ({line[:60]!r}); the log was damaged after it was "
                "written: repair or delete that line (or move the file away) and resume again"
            )
        if line_step <= step:
            kept.append(line.decode() + "\n")
    return "".join(kept)


def _step_of(line: bytes) -> int | None:
    try:
        record = parse_json(decode_utf8(line, "line", ArtifactError), "line", ArtifactError)
    except ArtifactError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _tensorboard_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError("tensorboard = true but the tensorboard package is not installed") from exc
    return SummaryWriter


def _wandb_module(project: str) -> Any:
    try:
        import wandb  # pyright: ignore[reportMissingImports]  (an optional dependency)
    except ImportError as exc:
        raise ConfigError(f"wandb_project = {project!r} but wandb is not installed") from exc
    return wandb


def step_records(
    saes: list[SAE], indices: list[int], sites: list[str], outs: list[LossOut], counters: list[Tensor], dead_window: int, optimizers: list,
    step: int, rows: int,
) -> list[dict[str, Any]]:
    """One log record per SAE (``indices``: their places in the run) after ``step`` steps of ``rows``
    activation rows: its loss terms, dead fraction, base learning rate and tokens seen."""
    records = []
    for i, sae, site, out, counter, opt in zip(indices, saes, sites, outs, counters, optimizers, strict=True):
        record: dict[str, Any] = {"step": step, "sae": i, "name": f"{i:02d}-{sae.architecture}", "site": site}
        record.update({k: as_float(v) for k, v in out.terms.items()})
        record["dead_fraction"] = float(dead.dead_mask(counter, dead_window).float().mean())
        record["lr"] = opt.param_groups[0]["lr"]
        record["tokens"] = step * rows
        records.append(record)
    return records


def postfix(records: list[dict[str, Any]]) -> dict[str, str]:
    if len(records) <= 3:
        return {f"{r['name']}": f"mse={r['mse']:.3g} l0={r['l0']:.3g}" for r in records}
    return {
        "mean mse": f"{sum(r['mse'] for r in records) / len(records):.3g}",
        "mean l0": f"{sum(r['l0'] for r in records) / len(records):.3g}",
    }


def warn_no_grad(i: int, sae: SAE) -> None:
    warnings.warn(
        f"SAE {i} ({sae.architecture}) selects latents with the downstream gradient, but the activation "
        "source gives none, so it trains with its no-gradient rule; use a source with gradients "
        "(ModelSource(..., with_grads=True), or with_grads = true in a run config's [data])",
        stacklevel=5,  # the caller of train(), past train(), run() and train_step()
    )
