"""The contexts of a board-game model: seeded random games (a run config's ``kind = "games"``, in
saekit.sources.spec).

Othello: the first ``CONTEXT`` moves of games ``0 .. n_games - 1`` of the random-game stream of ``seed``
(:func:`saekit.boardgames.othello_games.random_games`), one context per game. Chess: the first
``context`` characters (the model's, its tokenizer's ``model_max_length``) of games ``0 .. n_games - 1``
of ``random_chess_games(seed, player=)`` (:mod:`saekit.boardgames.pgn`), played only as far as the
context needs. The same settings give the same tokens to every model: what a series over a model's
training checkpoints needs. Games that end before filling the context (about 1 in 100 Othello games,
fewer chess games) are left out, so that no row is padding. A game has no BOS token (a chess string's
``;`` is its first character): no position is skipped unless asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from saekit.errors import ConfigError, DataError
from saekit.strict import refuse_unused

VOCAB_SIZES = {"othello": 61, "chess": 32}
"""The size of the vocabulary of each game's models (a model of another game is refused)."""


@dataclass(frozen=True)
class GamesConfig:
    """The games of a ``kind = "games"`` source; the model settings (model, sites, device, chunk_seqs,
    forward_batch, ...) sit beside these keys, as for ``kind = "model"``."""

    game: Literal["othello", "chess"] = "othello"
    """The game: "othello" (the Othello-GPT of ``saekit games othello-model``) or "chess" (the chess GPT
    of ``saekit games chess-model``)."""
    n_games: int = 2000
    """Games drawn; the complete ones become contexts."""
    seed: int = 0
    """Seed of the random games (the game models train on seed 0 and measure on seed 1)."""
    player: Literal["random", "greedy"] = "random"
    """Chess only: who plays the games (as the chess model's ``--player``)."""

    def __post_init__(self) -> None:
        if isinstance(self.n_games, bool) or not isinstance(self.n_games, int) or self.n_games < 1:
            raise ConfigError(f"n_games must be a positive integer, got {self.n_games!r}")
        if self.game == "othello":
            refuse_unused(self, ("player",), "the game is othello")


def game_tokens(cfg: GamesConfig, tokenizer: Any) -> torch.Tensor:
    """int64 [complete games, context]: the tokens of the complete games of ``cfg`` for the model whose
    tokenizer is ``tokenizer`` (a model of another game is a ConfigError)."""
    size = len(tokenizer)
    if size != VOCAB_SIZES[cfg.game]:
        raise ConfigError(f"data: game = {cfg.game!r}, but the model's tokenizer has {size} tokens, not {VOCAB_SIZES[cfg.game]}: it is not a model of {cfg.game}")
    tokens = _chess_tokens(cfg, int(tokenizer.model_max_length)) if cfg.game == "chess" else _othello_tokens(cfg)
    if not len(tokens):
        raise DataError(f"none of the {cfg.n_games} games of seed {cfg.seed} fills the context; draw more games")
    return torch.from_numpy(np.ascontiguousarray(tokens))


def _othello_tokens(cfg: GamesConfig) -> np.ndarray:
    from saekit.boardgames.othello_games import random_games
    from saekit.boardgames.othello_tokens import CONTEXT, PAD, encode_moves

    tokens = encode_moves(random_games(cfg.n_games, cfg.seed).moves, context=CONTEXT)
    return tokens[(tokens != PAD).all(axis=1)]


def _chess_tokens(cfg: GamesConfig, context: int) -> np.ndarray:
    from saekit.boardgames.pgn import encode_pgn, plies_to_fill, random_chess_games

    games = random_chess_games(cfg.n_games, cfg.seed, player=cfg.player, max_plies=plies_to_fill(context))
    rows = [encode_pgn(text[:context]) for text in games if len(text) >= context]
    return np.stack(rows).astype(np.int64) if rows else np.zeros((0, context), dtype=np.int64)
