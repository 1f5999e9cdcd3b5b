"""What the board-game study scores an SAE against, per game: the model's activations at the scored
positions of the held-out games and the board there.

* Othello: every move of the held-out games. The board is mine / empty / theirs per square (192
  properties, 128 blank-masked); the second coverage set is the 64 legal-move properties.
* Chess: the ``.`` characters of the held-out strings (white to move, where the paper evaluates chess).
  The board is the 13 piece classes per square (832 properties); the blank-masked set leaves out the
  empty class and the 32 (square, piece) properties of the starting position (736 left; a piece still
  on its first square says little about a model's board, and the paper masks the initial position too);
  the second coverage set is the rules (check, pin, castling rights, en passant).

The first half of the games fit (the positions before ``split``), the second half test.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from saekit.boardgames.chess_properties import PIECE_BOARD, PIECE_BOARD_BLANK_MASKED, PIECES, RULES, chess_properties
from saekit.boardgames.othello_properties import BOARD, BOARD_BLANK_MASKED, CLASSES, LEGAL, othello_properties
from saekit.boardgames.othello_tokens import decode_tokens
from saekit.boardgames.pgn import chess_module, decode_pgn
from saekit.boardgames.properties import square_groups
from saekit.errors import ConfigError
from saekit.sources.model import ModelSource


class Board(NamedTuple):
    acts: dict[str, torch.Tensor]
    """site -> [positions, d]: the model's activations at the scored positions of the held-out games."""
    state: np.ndarray
    """bool [positions, squares · classes]: every (square, class) property, for the probe."""
    blank_masked: np.ndarray
    """bool [positions, ...]: the board properties coverage and board reconstruction score."""
    groups: np.ndarray
    """The square of each blank-masked property (the per-square rule of reconstruction)."""
    state_groups: np.ndarray
    """The square of each property of ``state``."""
    extra: np.ndarray
    """bool [positions, ...]: the second coverage set (Othello: legal moves; chess: the rules)."""
    extra_name: str
    """"legal" or "rules": the row key is ``coverage_<extra_name>``."""
    split: int
    """Positions before ``split`` (the first half of the games) fit; the rest test."""
    classes: int
    """Classes per square of ``state`` (3 or 13) ..."""
    empty: int
    """... and the index of the empty one."""


def board_of(game: str, source: ModelSource) -> Board:
    """The Board of ``source``'s games (all of them held out) for ``game`` ("othello" or "chess")."""
    tokens = source.tokens
    acts = source.activations_of(torch.arange(tokens.shape[0]))
    return _chess(tokens, acts) if game == "chess" else _othello(tokens, acts)


def _othello(tokens: torch.Tensor, acts: dict[str, torch.Tensor]) -> Board:
    table = othello_properties(decode_tokens(tokens.numpy()), context=tokens.shape[1])
    if len(table.values) != tokens.numel():
        raise ConfigError(f"the held-out games give {len(table.values)} positions for {tokens.numel()} tokens")
    split = (tokens.shape[0] // 2) * tokens.shape[1]
    return Board(
        acts, table.select(BOARD).values, table.select(BOARD_BLANK_MASKED).values, square_groups(BOARD_BLANK_MASKED), square_groups(BOARD),
        table.select(LEGAL).values, "legal", split, len(CLASSES), CLASSES.index("empty"),
    )  # fmt: skip


def chess_board_columns() -> tuple[str, ...]:
    """The blank-masked chess properties the study scores: no empty class, no starting-position piece."""
    from saekit.boardgames.chess_properties import board_properties

    lib = chess_module()
    start = board_properties(lib, lib.Board())[: len(PIECE_BOARD)]
    initial = {name for name, held in zip(PIECE_BOARD, start) if held}
    return tuple(name for name in PIECE_BOARD_BLANK_MASKED if name not in initial)


def _chess(tokens: torch.Tensor, acts: dict[str, torch.Tensor]) -> Board:
    games, context = tokens.shape
    table = chess_properties([decode_pgn(row) for row in tokens.numpy()], at="dots")
    rows = torch.from_numpy(table.game * context + table.index)
    columns = chess_board_columns()
    split = int(np.searchsorted(table.game, games // 2))
    return Board(
        {site: a[rows] for site, a in acts.items()}, table.select(PIECE_BOARD).values, table.select(columns).values,
        square_groups(columns), square_groups(PIECE_BOARD), table.select(RULES).values, "rules", split, len(PIECES), PIECES.index("empty"),
    )  # fmt: skip
