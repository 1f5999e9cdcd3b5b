"""Random Othello games in bulk, and the replay of any games into their positions.

``random_games(n, seed, start=)`` plays games of uniformly random legal moves (each legal move of the
player to move equally likely), vectorised over blocks of ``CHUNK`` games. Block ``b`` is drawn from a
generator seeded by ``(seed, b)`` and always plays all ``CHUNK`` games, so game ``i`` of a seed is the same
whatever ``n`` and ``start`` are: a large set can be generated in pieces and resumed.

``replay(moves)`` plays given games (checking every move) and returns the position after each move:
what board-state properties and legal-move accuracy are computed from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saekit.boardgames.othello import MAX_MOVES, N_SQUARES, square_name
from saekit.boardgames.othello_batch import Positions, legal_moves, play, random_squares
from saekit.errors import ConfigError, DataError

CHUNK = 4096
"""Games played side by side; part of what a seed means, so never change it."""
NO_MOVE = -1
"""A game's moves after its end."""


@dataclass(frozen=True)
class OthelloGames:
    """``moves``: int8 [games, 60], the squares played in order, ``NO_MOVE`` after a game's end;
    ``lengths``: int64 [games], the number of moves of each game."""

    moves: np.ndarray
    lengths: np.ndarray


@dataclass(frozen=True)
class Replay:
    """Each game after each of its moves, all arrays [games, plies]: ``black`` / ``white`` bitboards,
    ``black_to_move`` (after a game's last move: whether black is the opponent of the last mover),
    ``over``, ``legal`` (bitboard of the moves of the player to move; 0 once over), and ``played`` (False
    where the game had no move at that ply: nothing else is meaningful there)."""

    black: np.ndarray
    white: np.ndarray
    black_to_move: np.ndarray
    over: np.ndarray
    legal: np.ndarray
    played: np.ndarray


def random_games(n: int, seed: int, *, start: int = 0) -> OthelloGames:
    """Games ``start .. start + n - 1`` of the random-game stream of ``seed``."""
    for name, value in (("n", n), ("seed", seed), ("start", start)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"random_games: {name} must be a non-negative integer, got {value!r}")
    if n == 0:
        return OthelloGames(moves=np.zeros((0, MAX_MOVES), dtype=np.int8), lengths=np.zeros(0, dtype=np.int64))
    first, last = start // CHUNK, (start + n - 1) // CHUNK
    moves = np.concatenate([_play_block(seed, b) for b in range(first, last + 1)])
    moves = moves[start - first * CHUNK :][:n]
    return OthelloGames(moves=moves, lengths=(moves >= 0).sum(axis=1).astype(np.int64))


def _play_block(seed: int, block: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed), int(block)])
    pos = Positions.start(CHUNK)
    legal = legal_moves(pos.own, pos.opp)
    moves = np.full((CHUNK, MAX_MOVES), NO_MOVE, dtype=np.int8)
    for ply in range(MAX_MOVES):
        squares = random_squares(legal, rng.random(CHUNK))
        moves[:, ply] = squares
        legal = play(pos, squares).legal
        if pos.over.all():
            break
    return moves


def replay(moves: np.ndarray) -> Replay:
    """Play ``moves`` (int [games, plies] of squares, ``NO_MOVE`` after a game's end; a game may stop
    before it is over) from the start. An illegal move, or a move after ``NO_MOVE`` or after the end of
    the game, is a DataError naming the game and the ply."""
    moves = _checked_moves(moves)
    n, plies = moves.shape
    pos = Positions.start(n)
    legal = legal_moves(pos.own, pos.opp)
    out = {k: np.zeros((n, plies), dtype=np.uint64) for k in ("black", "white", "legal")}
    flags = {k: np.zeros((n, plies), dtype=bool) for k in ("black_to_move", "over", "played")}
    stopped = np.zeros(n, dtype=bool)
    for ply in range(plies):
        squares = moves[:, ply].astype(np.int64)
        given = squares >= 0
        _check_ply(squares, given, stopped, pos.over, legal, ply)
        stopped |= ~given
        legal = play(pos, squares).legal
        out["black"][:, ply], out["white"][:, ply], out["legal"][:, ply] = pos.black(), pos.white(), legal
        flags["black_to_move"][:, ply], flags["over"][:, ply], flags["played"][:, ply] = pos.black_to_move, pos.over, given
    return Replay(**out, **flags)


def _checked_moves(moves: np.ndarray) -> np.ndarray:
    array = np.asarray(moves)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"Othello moves must be an integer array [games, plies], got {array.dtype} {array.shape}")
    if array.shape[1] > MAX_MOVES:
        raise DataError(f"an Othello game has at most {MAX_MOVES} moves; the array has {array.shape[1]} per game")
    bad = np.argwhere((array < NO_MOVE) | (array >= N_SQUARES))
    if len(bad):
        game, ply = bad[0]
        raise DataError(f"Othello game {game}, ply {ply}: {array[game, ply]} is not a square (0..63) or {NO_MOVE}")
    return array


def _check_ply(
    squares: np.ndarray, given: np.ndarray, stopped: np.ndarray, over: np.ndarray, legal: np.ndarray, ply: int
) -> None:
    after_stop = given & (stopped | over)
    if after_stop.any():
        game = int(np.argmax(after_stop))
        why = "the game is over" if over[game] else f"{NO_MOVE} (no move)"
        raise DataError(f"Othello game {game}, ply {ply}: a move after {why}")
    bit = np.left_shift(np.uint64(1), np.clip(squares, 0, N_SQUARES - 1).astype(np.uint64))
    illegal = given & ((legal & bit) == 0)
    if illegal.any():
        game = int(np.argmax(illegal))
        raise DataError(f"Othello game {game}, ply {ply}: {square_name(int(squares[game]))} is not a legal move")
