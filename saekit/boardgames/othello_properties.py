"""Othello board-state properties, one row per move a model reads.

Row ``(game, ply)`` describes the position after move ``ply`` of that game: it lines up with the model's
activation at token ``ply`` (which has read moves 0..ply). Rows exist for every move of the first
``context`` of each game, in row-major order, so they are the non-padding tokens of
``encode_moves(moves, context=context)`` in the order ``tokens[tokens != PAD]`` gives.

The properties (names ``<square>_<class>``, squares in standard notation, ``a1`` .. ``h8``):

* ``<sq>_mine`` / ``<sq>_theirs`` / ``<sq>_empty``: the square holds a disc of the player to move next /
  of the other player / nothing. Exactly one of the three holds. "To move next" counts passes: after a
  move that leaves the opponent without a move, the mover moves again, and "mine" is the mover's. (The
  paper's code alternates by the ply's parity instead, which differs only after a pass.) After the last
  move of a game, "mine" is the opponent of the last mover.
* ``<sq>_legal``: the player to move next may play the square (never true once the game is over).

``BOARD`` lists the 192 board properties, ``BOARD_BLANK_MASKED`` the 128 without ``empty`` (the paper's
"blank-masked" set), ``LEGAL`` the 64 legal-move properties.
"""

from __future__ import annotations

import numpy as np

from saekit.boardgames.othello import N_SQUARES, square_name
from saekit.boardgames.othello_batch import bits_to_bool
from saekit.boardgames.othello_games import replay
from saekit.boardgames.othello_tokens import CONTEXT
from saekit.boardgames.properties import PropertyTable
from saekit.errors import ConfigError

CLASSES = ("mine", "empty", "theirs")
BOARD = tuple(f"{square_name(s)}_{c}" for s in range(N_SQUARES) for c in CLASSES)
BOARD_BLANK_MASKED = tuple(name for name in BOARD if not name.endswith("_empty"))
LEGAL = tuple(f"{square_name(s)}_legal" for s in range(N_SQUARES))
ALL = BOARD + LEGAL


def othello_properties(moves: np.ndarray, *, context: int = CONTEXT) -> PropertyTable:
    """Every property of :data:`ALL` for each move of the first ``context`` of each game of ``moves``
    (squares [games, plies], ``NO_MOVE`` after a game's end). Illegal games are a DataError."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ConfigError(f"othello_properties: context must be a positive integer, got {context!r}")
    state = replay(np.asarray(moves)[:, :context])
    keep = state.played
    game, index = np.nonzero(keep)
    mine = np.where(state.black_to_move, state.black, state.white)[keep]
    theirs = np.where(state.black_to_move, state.white, state.black)[keep]
    board = np.stack([bits_to_bool(mine), bits_to_bool(~(mine | theirs)), bits_to_bool(theirs)], axis=2)
    values = np.concatenate([board.reshape(len(game), len(BOARD)), bits_to_bool(state.legal[keep])], axis=1)
    return PropertyTable(ALL, values, game.astype(np.int64), index.astype(np.int64))
