"""Train a chess GPT on seeded games: the chess part of :mod:`saekit.boardgames.game_train`.

Step ``s`` reads games ``s · batch_games ..`` of ``random_chess_games(seed, player=)``, each played only
as far as the context needs (``ChessModelConfig.max_plies``): fresh games every step, a function of the
seed alone. Inputs are a game's first ``context`` characters, targets the next ones; a game that ends
before ``context + 1`` characters (checkmate or stalemate early) is padded with spaces whose targets are
not predicted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from saekit.boardgames.chess_model import ChessModelConfig, build_chess_model, write_chess_model_folder
from saekit.boardgames.game_train import IGNORE, GameTask, TrainedModel, train_game_model
from saekit.boardgames.pgn import encode_pgn, random_chess_games


def chess_batch(games: list[str], context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs int64 [games, context] and targets (the next characters, ``IGNORE`` past a game's end)."""
    ids = np.zeros((len(games), context + 1), dtype=np.int64)
    known = np.zeros((len(games), context + 1), dtype=bool)
    for row, text in enumerate(games):
        encoded = encode_pgn(text[: context + 1])
        ids[row, : len(encoded)] = encoded
        known[row, : len(encoded)] = True
    targets = np.where(known[:, 1:], ids[:, 1:], IGNORE)
    return torch.from_numpy(ids[:, :context]), torch.from_numpy(targets)


def chess_task(config: ChessModelConfig) -> GameTask:
    """The chess GPT of ``config`` as a game_train task."""

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        games = random_chess_games(config.batch_games, config.seed, player=config.player, max_plies=config.max_plies, start=step * config.batch_games)
        return chess_batch(games, config.context)

    return GameTask("chess GPT", config, lambda: build_chess_model(config), batch, write_chess_model_folder)


def train_chess_model(config: ChessModelConfig, out: str | Path, *, resume: bool = False, stop_at: int | None = None, progress: bool = True) -> TrainedModel:
    """Train (or continue, with ``resume``) the chess GPT of ``config`` into ``out``
    (:func:`saekit.boardgames.game_train.train_game_model`)."""
    return train_game_model(chess_task(config), out, resume=resume, stop_at=stop_at, progress=progress)
