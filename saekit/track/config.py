"""The ``[track]`` table of a run config and the checkpoints it names.

A track config is a run config (``[data]``, ``[train]``, ``[[sae]]``, ...) with a ``[track]`` table: the
``[data]`` table names no model (each checkpoint is the model in turn) and ``[train]`` is the budget of
the SAEs trained from scratch; ``[track]`` says which checkpoints, in which direction, and how long each
fine-tuning is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from saekit.cli.run_config import RunConfig, apply_overrides, parse_run_config, read_config_file
from saekit.errors import ConfigError
from saekit.strict import from_dict

CHECKPOINT_DATA_KINDS = ("model", "games")
_STEP = re.compile(r"(?:step)[-_]?(\d+)$")


@dataclass(frozen=True)
class TrackConfig:
    """How a series of SAEs follows a model through its training checkpoints."""

    checkpoints: tuple[str, ...] = ()
    """Model checkpoints in training order: local model folders or Hub references
    (``hf://EleutherAI/pythia-70m@step1000``, read from huggingface_hub's cache offline)."""
    checkpoint_folder: str | None = None
    """Instead of ``checkpoints``: a folder of ``step-<n>`` model folders (``saekit games othello-model``
    writes them in ``checkpoints/``), taken in step order."""
    start: Literal["first", "last"] = "first"
    """Where the SAEs are trained from scratch (with the [train] budget): at the first checkpoint, the
    series then going forward, or at the last, going backward."""
    steps: int = 200
    """Fine-tuning steps at every other checkpoint, starting from the neighbouring checkpoint's SAEs."""
    lr_factor: float = 0.1
    """Fine-tuning learning rate as a multiple of each SAE's own (the paper: 4e-5 after 4e-4)."""
    warmup_steps: int = 3
    """Learning-rate warm-up of each fine-tuning, in steps (the paper's 3)."""
    independent: bool = False
    """Also train each checkpoint's SAEs from scratch with the [train] budget: the baseline that needs
    matching to follow a latent, and the cost the series saves."""
    analysis_contexts: int = 64
    """Contexts (the data's first ones) on which the dynamics are measured, the same at every checkpoint."""
    top_k: int = 25
    """Top activating tokens per latent, at the final checkpoint, of the progress measure."""
    random_tokens: int = 100
    """Random tokens of the progress measure's baseline."""
    trajectories: int = 8
    """Latents whose decoder trajectories are plotted (the most often active at the final checkpoint)."""

    def __post_init__(self) -> None:
        if bool(self.checkpoints) == (self.checkpoint_folder is not None):
            raise ConfigError("track: give either 'checkpoints' (a list) or 'checkpoint_folder', not both or neither")
        for name in ("steps", "analysis_contexts", "top_k", "random_tokens", "trajectories"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"track.{name} must be a positive integer, got {value!r}")
        if self.top_k < 2 or self.random_tokens < 2:
            raise ConfigError("track.top_k and track.random_tokens must be at least 2 (the measure averages pairs)")
        if isinstance(self.warmup_steps, bool) or not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"track.warmup_steps must be in 0..steps ({self.steps}), got {self.warmup_steps!r}")
        if not (isinstance(self.lr_factor, (int, float)) and 0 < self.lr_factor < float("inf")):
            raise ConfigError(f"track.lr_factor must be a positive number, got {self.lr_factor!r}")


class Checkpoint(NamedTuple):
    """One model checkpoint of a series."""

    index: int
    """Position in training order."""
    label: str
    """Its name: the folder's name or the Hub revision."""
    model: str
    """What ``saekit.load_model`` loads."""
    step: int | None
    """Training step, read from a ``step-<n>`` / ``step<n>`` name; None when the name has none."""

    @property
    def folder_name(self) -> str:
        return f"{self.index:02d}-{re.sub(r'[^A-Za-z0-9._-]', '_', self.label)[:48]}"


class TrackRun(NamedTuple):
    run: RunConfig
    """The run config without its [track] table; [train] is the from-scratch budget."""
    track: TrackConfig
    checkpoints: list[Checkpoint]
    raw: dict[str, Any]
    """The settings as read, overrides applied (what ``track.json`` records)."""


def load_track_config(path: str | Path, overrides: list[str] | None = None) -> TrackRun:
    """Read and check a track config: every error names the file and the key, and every checkpoint is
    found (local folders) or well-formed (Hub references) before anything is trained."""
    raw = apply_overrides(read_config_file(path), overrides or [])
    try:
        return parse_track_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc


def parse_track_config(raw: dict[str, Any]) -> TrackRun:
    rest = dict(raw)
    table = rest.pop("track", None)
    if not isinstance(table, dict):
        raise ConfigError("a track config needs a [track] table (checkpoints = [...] or checkpoint_folder = ...)")
    track = from_dict(TrackConfig, table, where="track")
    run = parse_run_config(rest)
    kind = run.data.get("kind")
    if kind not in CHECKPOINT_DATA_KINDS:
        raise ConfigError(f"data: a series runs each checkpoint as the model, so 'kind' must be one of {', '.join(CHECKPOINT_DATA_KINDS)}, got {kind!r}")
    if "model" in run.data:
        raise ConfigError("data.model: the checkpoints of [track] are the models; remove 'model' from [data]")
    return TrackRun(run, track, resolve_checkpoints(track), raw)


def resolve_checkpoints(track: TrackConfig) -> list[Checkpoint]:
    """The checkpoints of ``track`` in training order (at least two)."""
    from saekit.io.hub import is_remote, parse_ref

    if track.checkpoint_folder is not None:
        refs = _step_folders(Path(track.checkpoint_folder))
    else:
        refs = list(track.checkpoints)
    out = []
    for i, ref in enumerate(refs):
        if is_remote(ref):
            hub = parse_ref(ref)
            label = hub.revision or hub.repo_id.split("/")[-1]
        else:
            folder = Path(ref).expanduser()
            if not (folder / "config.json").is_file():
                raise ConfigError(f"track.checkpoints[{i}]: {ref} is not a model folder (no config.json)")
            label = folder.name
        match = _STEP.search(label)
        out.append(Checkpoint(i, label, ref, int(match.group(1)) if match else None))
    if len(out) < 2:
        raise ConfigError(f"track: a series needs at least two checkpoints, got {len(out)}")
    return out


def _step_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise ConfigError(f"track.checkpoint_folder: {folder} is not a folder")
    found = []
    for child in folder.iterdir():
        match = re.fullmatch(r"step-(\d+)", child.name)
        if match and (child / "config.json").is_file():
            found.append((int(match.group(1)), str(child)))
    if not found:
        raise ConfigError(f"track.checkpoint_folder: {folder} holds no step-<n> model folders")
    return [path for _, path in sorted(found)]
