"""Where training metrics go: a JSONL file always (with an output folder), TensorBoard and
Weights & Biases when asked for and installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from saekit.atomic import write_text
from saekit.errors import ConfigError
from saekit.sae.base import SAE
from saekit.training import dead
from saekit.types import LossOut, as_float


class MetricsLog:
    """Appends one JSON object per (step, SAE) to ``metrics.jsonl`` and mirrors to optional sinks."""

    def __init__(self, out_dir: Path | None, *, resume_step: int = 0, tensorboard: bool = False, wandb_project: str | None = None, run_config: dict | None = None) -> None:
        self.path = out_dir / "metrics.jsonl" if out_dir is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._truncate_after(resume_step)
        self.tb = None
        self.wandb_run = None
        if tensorboard:
            if out_dir is None:
                raise ConfigError("tensorboard logging needs an output folder")
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError("tensorboard = true but the tensorboard package is not installed") from exc
            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        if wandb_project:
            try:
                import wandb  # pyright: ignore[reportMissingImports]  (an optional dependency)
            except ImportError as exc:
                raise ConfigError(f"wandb_project = {wandb_project!r} but wandb is not installed") from exc
            self.wandb_run = wandb.init(project=wandb_project, config=run_config or {})

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines a killed run logged after its last checkpoint, so none is doubled."""
        if self.path is None or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.path is not None:
            with open(self.path, "a") as handle:
                for record in records:
                    handle.write(json.dumps(record) + "\n")
        for record in records:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "sae")}
            if self.tb is not None:
                for key, value in scalars.items():
                    self.tb.add_scalar(f"{record['name']}/{key}", value, record["step"])
            if self.wandb_run is not None:
                self.wandb_run.log({f"{record['name']}/{k}": v for k, v in scalars.items()}, step=record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def step_records(
    saes: list[SAE], sites: list[str], outs: list[LossOut], counters: list[Tensor], dead_window: int, optimizers: list, step: int, rows: int
) -> list[dict[str, Any]]:
    """One log record per SAE after ``step`` steps of ``rows`` activation rows: its loss terms, dead
    fraction, base learning rate and tokens seen."""
    records = []
    for i, (sae, site, out, counter, opt) in enumerate(zip(saes, sites, outs, counters, optimizers)):
        record: dict[str, Any] = {"step": step, "sae": i, "name": f"{i:02d}-{sae.architecture}", "site": site}
        record.update({k: as_float(v) for k, v in out.terms.items()})
        record["dead_fraction"] = float(dead.dead_mask(counter, dead_window).float().mean())
        record["lr"] = opt.param_groups[0]["lr"]
        record["tokens"] = step * rows
        records.append(record)
    return records
