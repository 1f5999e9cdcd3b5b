"""Train an Othello-GPT on random games, seeded and resumable.

Step ``s`` reads games ``s · batch_games ..`` of ``random_games(seed)``: fresh games every step, never
repeated, a function of the seed alone. The loss is the next-move cross-entropy over the first 59
moves (a game's padding is not predicted). AdamW; the learning rate warms up linearly and then
follows a cosine down to a tenth of its peak, a pure function of the step. The model has no dropout,
so a run is a function of its config: a run killed and resumed ends bit-identical to one that was not.

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

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as tF

from saekit.atomic import replace_folder, write_safetensors, write_text
from saekit.boardgames.othello_games import CHUNK, random_games
from saekit.boardgames.othello_model import OthelloModelConfig, build_model, write_model_folder
from saekit.boardgames.othello_tokens import CONTEXT, PAD, VOCAB_SIZE, encode_moves
from saekit.errors import ArtifactError, ConfigError
from saekit.strict import to_dict

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

IGNORE = -100


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


def learning_rate(config: OthelloModelConfig, step: int) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up, then cosine from lr to lr / 10."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    progress = (step - config.warmup_steps) / span
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class GameStream:
    """Games ``start .. start + n - 1`` of ``random_games(seed)``, generating each block of ``CHUNK`` games
    once (a step reads a small slice of one block, the next step the next slice)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._block: tuple[int, np.ndarray] | None = None

    def moves(self, n: int, start: int) -> np.ndarray:
        parts, end = [], start + n
        while start < end:
            block = start // CHUNK
            if self._block is None or self._block[0] != block:
                self._block = (block, random_games(CHUNK, self.seed, start=block * CHUNK).moves)
            take = min(end, (block + 1) * CHUNK) - start
            parts.append(self._block[1][start - block * CHUNK :][:take])
            start += take
        return np.concatenate(parts)


def batch_loss(model: GPT2LMHeadModel, config: OthelloModelConfig, step: int, stream: GameStream) -> torch.Tensor:
    """Next-move cross-entropy of the games of step ``step`` (read from ``stream``, of ``config.seed``)."""
    moves = stream.moves(config.batch_games, step * config.batch_games)
    tokens = torch.from_numpy(encode_moves(moves, context=None))  # [games, 60]
    inputs, targets = tokens[:, :CONTEXT], tokens[:, 1 : CONTEXT + 1].clone()
    targets[targets == PAD] = IGNORE
    # Padding only ever follows a game's moves, so the causal mask alone keeps it out of every prediction.
    logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits
    return tF.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1), ignore_index=IGNORE)


def train_othello_model(
    config: OthelloModelConfig, out: str | Path, *, resume: bool = False, stop_at: int | None = None, progress: bool = True
) -> TrainedModel:
    """Train (or, with ``resume``, continue training) the model of ``config`` into ``out`` (see the module
    docstring). A folder that already holds a run is refused without ``resume``; ``resume`` needs the
    state of a run of the same config. ``stop_at``: stop after that step, its state saved (to train in
    sessions; the final ``model/`` is written only by the call that reaches ``config.steps``)."""
    if stop_at is not None and not 1 <= stop_at <= config.steps:
        raise ConfigError(f"stop_at must be in 1..steps ({config.steps}), got {stop_at}")
    from tqdm.auto import tqdm

    out = Path(out)
    started = time.perf_counter()
    model = build_model(config)
    optimizer = _optimizer(model, config)
    step, losses = _start(model, optimizer, config, out, resume)
    saves = set(checkpoint_steps(config.steps))
    stream = GameStream(config.seed)
    if step == 0:
        _checkpoint(model, out, 0)
    model.train()
    end = config.steps if stop_at is None else max(stop_at, step)
    bar = tqdm(range(step, end), initial=step, total=config.steps, disable=not progress, desc="othello-gpt")
    for s in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, s)
        loss = batch_loss(model, config, s, stream)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        done = s + 1
        if done in saves:
            _checkpoint(model, out, done)
        if done % config.save_every == 0 or done == end:
            _save_state(model, optimizer, config, out, done, losses)
    model.eval()
    if end == config.steps:
        replace_folder(out / "model", lambda tmp: write_model_folder(model, tmp))
    return TrainedModel(model=model, losses=losses, seconds=time.perf_counter() - started)


def _optimizer(model: GPT2LMHeadModel, config: OthelloModelConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings included), none on biases and norms."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


def _checkpoint(model: GPT2LMHeadModel, out: Path, step: int) -> None:
    replace_folder(out / "checkpoints" / f"step-{step}", lambda tmp: write_model_folder(model, tmp))


def _save_state(model: GPT2LMHeadModel, optimizer: torch.optim.AdamW, config: OthelloModelConfig, out: Path, step: int, losses: list[float]) -> None:
    moments = {f"{i}.{key}": value for i, state in optimizer.state_dict()["state"].items() for key, value in state.items()}
    record = {"step": step, "config": to_dict(config), "losses": losses}

    def fill(tmp: Path) -> None:
        write_safetensors(tmp / "model.safetensors", {k: v.detach().contiguous() for k, v in model.state_dict().items()})
        write_safetensors(tmp / "optimizer.safetensors", {k: v.contiguous() for k, v in moments.items()})
        write_text(tmp / "state.json", json.dumps(record) + "\n")

    replace_folder(out / "state", fill)


def _start(model: GPT2LMHeadModel, optimizer: torch.optim.AdamW, config: OthelloModelConfig, out: Path, resume: bool) -> tuple[int, list[float]]:
    """The step to start at and the losses so far: 0 and none for a new run, the saved ones on resume."""
    state = out / "state"
    if not resume:
        taken = [p for p in (state, out / "model", out / "checkpoints") if p.exists()]
        if taken:
            raise ConfigError(f"{out} already holds an Othello-GPT run ({taken[0].name}); pass --resume or choose another folder")
        return 0, []
    if not (state / "state.json").is_file():
        raise ConfigError(f"nothing to resume in {out}: it has no state/state.json")
    record = _read_state(state)
    saved = record["config"]
    differs = sorted(k for k, v in to_dict(config).items() if saved.get(k) != v)
    if differs:
        got = ", ".join(f"{k} = {saved.get(k)!r} there, {dataclasses.asdict(config)[k]!r} now" for k in differs)
        raise ConfigError(f"cannot resume {out} with another config: {got}")
    _load_tensors(model, optimizer, state)
    return int(record["step"]), [float(x) for x in record["losses"]]


def _read_state(state: Path) -> dict:
    path = state / "state.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(record, dict) or not {"step", "config", "losses"} <= set(record) or not isinstance(record["config"], dict):
        raise ArtifactError(f"{path} is not an Othello-GPT training state (it needs step, config and losses)")
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
