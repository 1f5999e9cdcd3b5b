"""The contexts of a board-game model: seeded random games (a run config's ``kind = "games"``, in
saekit.sources.spec).

The tokens are the first ``CONTEXT`` moves of games ``0 .. n_games - 1`` of the random-game stream of
``seed`` (:func:`saekit.boardgames.othello_games.random_games`), one context per game, so the same
settings give the same tokens to every model: what a series over a model's training checkpoints needs.
Games that end before ``CONTEXT`` moves (about 1 in 100) are left out, so that no row is padding. A
game has no BOS token: no position is skipped unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from saekit.errors import ConfigError, DataError


@dataclass(frozen=True)
class GamesConfig:
    """The games of a ``kind = "games"`` source; the model settings (model, sites, device, chunk_seqs,
    forward_batch, ...) sit beside these keys, as for ``kind = "model"``."""

    game: Literal["othello"] = "othello"
    """The game: "othello" (the Othello-GPT of ``saekit games othello-model``)."""
    n_games: int = 2000
    """Games drawn; the complete ones (about 99%) become contexts."""
    seed: int = 0
    """Seed of the random games (``saekit games othello-model`` trains on seed 0 and measures on seed 1)."""

    def __post_init__(self) -> None:
        if isinstance(self.n_games, bool) or not isinstance(self.n_games, int) or self.n_games < 1:
            raise ConfigError(f"n_games must be a positive integer, got {self.n_games!r}")


def game_tokens(cfg: GamesConfig) -> torch.Tensor:
    """int64 [complete games, CONTEXT]: the move tokens of the complete games of ``cfg``."""
    from saekit.boardgames.othello_games import random_games
    from saekit.boardgames.othello_tokens import CONTEXT, PAD, encode_moves

    tokens = encode_moves(random_games(cfg.n_games, cfg.seed).moves, context=CONTEXT)
    complete = tokens[(tokens != PAD).all(axis=1)]
    if not len(complete):
        raise DataError(f"none of the {cfg.n_games} games of seed {cfg.seed} is complete; draw more games")
    return torch.from_numpy(np.ascontiguousarray(complete))
