"""One training loop for the board-game GPTs (the Othello-GPT, the chess GPT), seeded and resumable.

A :class:`GameTask` says what is game-specific: the config (its schedule fields below, saved with the
state and compared on resume), how to build the model, the batch of step ``s`` (a pure function of the
step, so the data never depends on where a run was stopped) and how to write a model folder. The loop is
the same for every game: next-token cross-entropy over the targets that are not ``IGNORE``; AdamW
(β 0.9/0.95, weight decay on matrices); the learning rate warms up linearly and then follows a cosine
down to a tenth of its peak, a pure function of the step; gradients clipped at norm 1. The models have
no dropout, so a run killed and resumed ends bit-identical to one that was not.

Output folder:

* ``checkpoints/step-<n>/``: the model after ``n`` steps, for ``n`` = 0, 1, 2, 4, 8, ... and the last
  step (log-spaced, as SAE-Track-style studies of training dynamics read them); Hugging Face folders.
* ``model/``: the final model, with its tokenizer (what ``saekit.load_model`` loads).
* ``state/``: what a resume needs (weights and AdamW moments as safetensors, the step, the config and
  the losses as JSON), written every ``save_every`` steps and at the end.

Every folder is written whole into a temporary sibling and swapped in (saekit.atomic), so a kill leaves
the previous version of each.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
import torch.nn.functional as tF

from saekit.atomic import replace_folder, write_safetensors, write_text
from saekit.errors import ArtifactError, ConfigError
from saekit.strict import to_dict

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

IGNORE = -100
"""A target that is not predicted (padding)."""


class Schedule(Protocol):
    """The fields of a game model's config that the loop reads (a frozen dataclass has them)."""

    @property
    def steps(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def save_every(self) -> int: ...


@dataclass(frozen=True)
class GameTask:
    """What one game's trainer supplies to :func:`train_game_model`."""

    name: str
    """The model's name in messages and the progress bar ("Othello-GPT")."""
    config: Schedule
    """A frozen dataclass: the schedule, and everything else that a resume must find unchanged."""
    build: Callable[[], GPT2LMHeadModel]
    """A freshly initialised model (seeded by the config)."""
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    """Step -> (input ids [batch, context], targets of the same shape, ``IGNORE`` where not predicted)."""
    write_folder: Callable[[GPT2LMHeadModel, Path], None]
    """Fill an empty folder with the model and its tokenizer."""


class TrainedModel(NamedTuple):
    model: GPT2LMHeadModel
    """The model after the last step, in eval mode."""
    losses: list[float]
    """Training loss of every step, resumed runs included."""
    seconds: float
    """Wall time of this call (a resumed run counts only its own part)."""


def checkpoint_steps(steps: int) -> list[int]:
    """0, 1, 2, 4, ... up to ``steps``, and ``steps`` itself."""
    out = [0] + [2**k for k in range(steps.bit_length()) if 2**k <= steps]
    return sorted({*out, steps})


def learning_rate(config: Schedule, step: int) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up, then cosine from lr to lr / 10."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    progress = (step - config.warmup_steps) / span
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_loss(model: GPT2LMHeadModel, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of ``inputs`` against ``targets`` (``IGNORE`` left out). A target only
    ever follows its inputs, so the causal mask alone keeps padding out of every counted prediction."""
    logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits
    return tF.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def train_game_model(task: GameTask, out: str | Path, *, resume: bool = False, stop_at: int | None = None, progress: bool = True) -> TrainedModel:
    """Train (or, with ``resume``, continue training) ``task``'s model into ``out`` (see the module
    docstring). A folder that already holds a run is refused without ``resume``; ``resume`` needs the
    state of a run of the same config. ``stop_at``: stop after that step, its state saved (to train in
    sessions; the final ``model/`` is written only by the call that reaches ``config.steps``)."""
    config = task.config
    if stop_at is not None and not 1 <= stop_at <= config.steps:
        raise ConfigError(f"stop_at must be in 1..steps ({config.steps}), got {stop_at}")
    from tqdm.auto import tqdm

    out = Path(out)
    started = time.perf_counter()
    model = task.build()
    optimizer = _optimizer(model, config)
    step, losses = _start(model, optimizer, task, out, resume)
    saves = set(checkpoint_steps(config.steps))
    if step == 0:
        _checkpoint(task, model, out, 0)
    model.train()
    end = config.steps if stop_at is None else max(stop_at, step)
    bar = tqdm(range(step, end), initial=step, total=config.steps, disable=not progress, desc=task.name)
    for s in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, s)
        loss = batch_loss(model, *task.batch(s))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        done = s + 1
        if done in saves:
            _checkpoint(task, model, out, done)
        if done % config.save_every == 0 or done == end:
            _save_state(model, optimizer, config, out, done, losses)
    model.eval()
    if end == config.steps:
        replace_folder(out / "model", lambda tmp: task.write_folder(model, tmp))
    return TrainedModel(model=model, losses=losses, seconds=time.perf_counter() - started)


def _optimizer(model: GPT2LMHeadModel, config: Schedule) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings included), none on biases and norms."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


def _checkpoint(task: GameTask, model: GPT2LMHeadModel, out: Path, step: int) -> None:
    replace_folder(out / "checkpoints" / f"step-{step}", lambda tmp: task.write_folder(model, tmp))


def _save_state(model: GPT2LMHeadModel, optimizer: torch.optim.AdamW, config: Schedule, out: Path, step: int, losses: list[float]) -> None:
    moments = {f"{i}.{key}": value for i, state in optimizer.state_dict()["state"].items() for key, value in state.items()}
    record = {"step": step, "config": to_dict(config), "losses": losses}

    def fill(tmp: Path) -> None:
        write_safetensors(tmp / "model.safetensors", {k: v.detach().contiguous() for k, v in model.state_dict().items()})
        write_safetensors(tmp / "optimizer.safetensors", {k: v.contiguous() for k, v in moments.items()})
        write_text(tmp / "state.json", json.dumps(record) + "\n")

    replace_folder(out / "state", fill)


def _start(model: GPT2LMHeadModel, optimizer: torch.optim.AdamW, task: GameTask, out: Path, resume: bool) -> tuple[int, list[float]]:
    """The step to start at and the losses so far: 0 and none for a new run, the saved ones on resume."""
    state = out / "state"
    if not resume:
        taken = [p for p in (state, out / "model", out / "checkpoints") if p.exists()]
        if taken:
            raise ConfigError(f"{out} already holds a training run of the {task.name} ({taken[0].name}); pass --resume or choose another folder")
        return 0, []
    if not (state / "state.json").is_file():
        raise ConfigError(f"nothing to resume in {out}: it has no state/state.json")
    record = _read_state(state, task.name)
    saved, now = record["config"], to_dict(task.config)
    differs = sorted(k for k in {*saved, *now} if saved.get(k) != now.get(k))
    if differs:
        got = ", ".join(f"{k} = {saved.get(k)!r} there, {now.get(k)!r} now" for k in differs)
        raise ConfigError(f"cannot resume {out} with another config: {got}")
    _load_tensors(model, optimizer, state)
    return int(record["step"]), [float(x) for x in record["losses"]]


def _read_state(state: Path, name: str) -> dict[str, Any]:
    path = state / "state.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(record, dict) or not {"step", "config", "losses"} <= set(record) or not isinstance(record["config"], dict):
        raise ArtifactError(f"{path} is not a training state of the {name} (it needs step, config and losses)")
    return record


def _load_tensors(model: GPT2LMHeadModel, optimizer: torch.optim.AdamW, state: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(state / "model.safetensors")
        moments = load_file(state / "optimizer.safetensors")
        model.load_state_dict(weights)
        template = optimizer.state_dict()
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in moments.items():
            index, name = key.split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": template["param_groups"]})
    except (OSError, SafetensorError, RuntimeError, ValueError, KeyError) as exc:
        raise ArtifactError(f"the training state in {state} is unreadable or does not fit the model: {exc}") from exc
