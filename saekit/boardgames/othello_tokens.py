"""Othello moves as model tokens, as in othello_world and the board-game paper.

The vocabulary has 61 ids: 0 is padding (after a game's end; othello_world maps its pass marker to the
same id, but a pass is never written in a game: the same player simply moves again), and ids 1..60 are
the 60 playable squares in increasing order (the four centre squares, taken from the start, have no
id). A model reads the first ``CONTEXT`` = 59 moves of a game and predicts each next one.
"""

from __future__ import annotations

import numpy as np

from saekit.boardgames.othello import CENTRE, MAX_MOVES, N_SQUARES
from saekit.boardgames.othello_games import NO_MOVE
from saekit.errors import DataError

PAD = 0
VOCAB_SIZE = 61
CONTEXT = MAX_MOVES - 1
PLAYABLE = np.array([s for s in range(N_SQUARES) if s not in CENTRE], dtype=np.int64)
"""PLAYABLE[token - 1] is the square of a move token."""
_TOKEN_OF_SQUARE = np.full(N_SQUARES + 1, -1, dtype=np.int64)  # index 64 stands for NO_MOVE
_TOKEN_OF_SQUARE[PLAYABLE] = np.arange(1, VOCAB_SIZE)
_TOKEN_OF_SQUARE[N_SQUARES] = PAD


def encode_moves(moves: np.ndarray, *, context: int | None = CONTEXT) -> np.ndarray:
    """Squares [games, plies] (``NO_MOVE`` after a game's end) -> int64 tokens [games, context] (the first
    ``context`` moves; None keeps every ply). A centre square or a value off the board is a DataError."""
    array = np.asarray(moves)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"Othello moves must be an integer array [games, plies], got {array.dtype} {array.shape}")
    array = array[:, :context] if context is not None else array
    on_board = (array >= 0) & (array < N_SQUARES)
    index = np.where(on_board, array, N_SQUARES).astype(np.int64)  # NO_MOVE (and anything else) -> the pad slot
    bad = ~on_board & (array != NO_MOVE)
    bad |= _TOKEN_OF_SQUARE[index] < 0
    if bad.any():
        game, ply = np.argwhere(bad)[0]
        raise DataError(f"Othello game {game}, ply {ply}: {array[game, ply]} is not a playable square or {NO_MOVE}")
    return _TOKEN_OF_SQUARE[index]


def decode_tokens(tokens: np.ndarray) -> np.ndarray:
    """Tokens [games, length] -> squares (``NO_MOVE`` for padding); an id outside 0..60 is a DataError."""
    array = np.asarray(tokens)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"Othello tokens must be an integer array [games, length], got {array.dtype} {array.shape}")
    bad = np.argwhere((array < 0) | (array >= VOCAB_SIZE))
    if len(bad):
        game, pos = bad[0]
        raise DataError(f"Othello tokens, game {game}, position {pos}: {array[game, pos]} is not a token (0..60)")
    return np.where(array == PAD, NO_MOVE, PLAYABLE[np.maximum(array, 1) - 1])
