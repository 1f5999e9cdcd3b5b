"""Train an Othello-GPT on random games: the Othello part of :mod:`saekit.boardgames.game_train`.

Step ``s`` reads games ``s · batch_games ..`` of ``random_games(seed)``: fresh games every step, never
repeated, a function of the seed alone. The loss is the next-move cross-entropy over the first 59
moves (a game's padding is not predicted). The loop, the schedule and the output folder are
game_train's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saekit.boardgames.game_train import IGNORE, GameTask, TrainedModel, checkpoint_steps, learning_rate, train_game_model
from saekit.boardgames.othello_games import CHUNK, random_games
from saekit.boardgames.othello_model import OthelloModelConfig, build_model, write_model_folder
from saekit.boardgames.othello_tokens import CONTEXT, PAD, encode_moves

__all__ = ["GameStream", "TrainedModel", "checkpoint_steps", "learning_rate", "othello_task", "train_othello_model"]


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


def othello_task(config: OthelloModelConfig) -> GameTask:
    """The Othello-GPT of ``config`` as a game_train task."""
    stream = GameStream(config.seed)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.from_numpy(encode_moves(stream.moves(config.batch_games, step * config.batch_games), context=None))
        inputs, targets = tokens[:, :CONTEXT], tokens[:, 1 : CONTEXT + 1].clone()
        targets[targets == PAD] = IGNORE
        return inputs, targets

    return GameTask("Othello-GPT", config, lambda: build_model(config), batch, write_model_folder)


def train_othello_model(
    config: OthelloModelConfig, out: str | Path, *, resume: bool = False, stop_at: int | None = None, progress: bool = True
) -> TrainedModel:
    """Train (or continue, with ``resume``) the Othello-GPT of ``config`` into ``out``
    (:func:`saekit.boardgames.game_train.train_game_model`)."""
    return train_game_model(othello_task(config), out, resume=resume, stop_at=stop_at, progress=progress)
