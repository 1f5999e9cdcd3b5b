"""Othello over many games at once: each position is two 64-bit bitboards, and every rule is a few numpy
operations on arrays of them, so a step of 4,096 games costs about as much as a step of one in Python.

Bit ``s`` of a bitboard is square ``s`` (``row * 8 + col``, as in :mod:`saekit.boardgames.othello`).
A shift by one square in a direction is a shift of the integer by 1, 7, 8 or 9 bits, masked so that a
disc never wraps from one edge of the board to the other. The legal moves of a player are the empty
squares at the end of a run of opponent discs that starts next to one of the player's discs (a
run is at most six long, so six shifts find every run); the discs a move turns are, per direction, the
run of opponent discs next to it when the square after the run is the mover's.

Passes are resolved as in the scalar engine: after a move the opponent plays next if it can, else the
mover again if it can, else the game is over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saekit.boardgames.othello import N_SQUARES, START_BLACK, START_WHITE

_FULL = np.uint64(0xFFFFFFFFFFFFFFFF)
_NOT_COL_0 = np.uint64(0xFEFEFEFEFEFEFEFE)
_NOT_COL_7 = np.uint64(0x7F7F7F7F7F7F7F7F)
# (bits, left?, mask after the shift): left shifts move towards higher squares (down a row, right a column).
_SHIFTS = (
    (np.uint64(1), True, _NOT_COL_0),  # right
    (np.uint64(1), False, _NOT_COL_7),  # left
    (np.uint64(8), True, _FULL),  # down
    (np.uint64(8), False, _FULL),  # up
    (np.uint64(9), True, _NOT_COL_0),  # down-right
    (np.uint64(7), True, _NOT_COL_7),  # down-left
    (np.uint64(7), False, _NOT_COL_0),  # up-right
    (np.uint64(9), False, _NOT_COL_7),  # up-left
)
_BIT = np.left_shift(np.uint64(1), np.arange(N_SQUARES, dtype=np.uint64))


def _shift(board: np.ndarray, bits: np.uint64, left: bool, mask: np.uint64) -> np.ndarray:
    return ((board << bits) if left else (board >> bits)) & mask


def _run(start: np.ndarray, opp: np.ndarray, bits: np.uint64, left: bool, mask: np.uint64) -> np.ndarray:
    """The opponent discs in a contiguous line from the squares next to ``start``, in one direction."""
    run = _shift(start, bits, left, mask) & opp
    for _ in range(5):
        run |= _shift(run, bits, left, mask) & opp
    return run


def legal_moves(own: np.ndarray, opp: np.ndarray) -> np.ndarray:
    """Bitboards of the squares the owner of ``own`` may play."""
    empty = ~(own | opp)
    moves = np.zeros_like(own)
    for bits, left, mask in _SHIFTS:
        moves |= _shift(_run(own, opp, bits, left, mask), bits, left, mask) & empty
    return moves


def flips(move: np.ndarray, own: np.ndarray, opp: np.ndarray) -> np.ndarray:
    """Bitboards of the discs turned when the owner of ``own`` plays the one-bit boards ``move``."""
    turned = np.zeros_like(own)
    for bits, left, mask in _SHIFTS:
        run = _run(move, opp, bits, left, mask)
        closed = (_shift(run, bits, left, mask) & own) != 0
        turned |= np.where(closed, run, np.uint64(0))
    return turned


@dataclass
class Positions:
    """Positions of ``n`` games: ``own`` / ``opp`` are the discs of the player to move and of the other
    player, ``black_to_move`` says whose ``own`` is, ``over`` marks finished games. After a game ends,
    ``own`` stays with the opponent of the last mover."""

    own: np.ndarray
    opp: np.ndarray
    black_to_move: np.ndarray
    over: np.ndarray

    @classmethod
    def start(cls, n: int) -> Positions:
        black = np.uint64(sum(1 << s for s in START_BLACK))
        white = np.uint64(sum(1 << s for s in START_WHITE))
        return cls(
            own=np.full(n, black, dtype=np.uint64),
            opp=np.full(n, white, dtype=np.uint64),
            black_to_move=np.ones(n, dtype=bool),
            over=np.zeros(n, dtype=bool),
        )

    def black(self) -> np.ndarray:
        return np.where(self.black_to_move, self.own, self.opp)

    def white(self) -> np.ndarray:
        return np.where(self.black_to_move, self.opp, self.own)


@dataclass(frozen=True)
class Step:
    """What one move did in each game: the discs ``turned`` (0 where no move was played) and the legal
    moves of the player now to move (``legal``, 0 once a game is over)."""

    turned: np.ndarray
    legal: np.ndarray


def play(pos: Positions, squares: np.ndarray) -> Step:
    """Play ``squares`` (int, one per game; negative = no move) in the games where it is given and the game
    is not over, updating ``pos`` in place. The caller guarantees the squares are legal (``replay`` checks)."""
    active = (squares >= 0) & ~pos.over
    move = np.where(active, _BIT[np.clip(squares, 0, N_SQUARES - 1)], np.uint64(0))
    turned = flips(move, pos.own, pos.opp)
    mover = pos.own | turned | move
    other = pos.opp & ~turned
    other_moves = legal_moves(other, mover)
    mover_moves = np.zeros_like(other_moves)  # needed only where the opponent must pass
    stuck = np.flatnonzero(active & (other_moves == 0))
    if len(stuck):
        mover_moves[stuck] = legal_moves(mover[stuck], other[stuck])
    switch = active & ((other_moves != 0) | (mover_moves == 0))
    pos.own = np.where(active, np.where(switch, other, mover), pos.own)
    pos.opp = np.where(active, np.where(switch, mover, other), pos.opp)
    pos.black_to_move = pos.black_to_move ^ switch
    pos.over = pos.over | (active & (other_moves == 0) & (mover_moves == 0))
    legal = np.where(switch, other_moves, mover_moves)
    idle = ~active & ~pos.over
    if idle.any():
        legal = np.where(idle, legal_moves(pos.own, pos.opp), legal)
    return Step(turned=turned, legal=np.where(pos.over, np.uint64(0), legal))


def bits_to_bool(boards: np.ndarray) -> np.ndarray:
    """uint64 bitboards [...] -> bool [..., 64], square ``s`` at index ``s``."""
    little = np.ascontiguousarray(boards, dtype="<u8").reshape(-1)  # byte k holds squares 8k..8k+7
    unpacked = np.unpackbits(little.view(np.uint8), bitorder="little").reshape(-1, N_SQUARES)
    return unpacked.view(bool).reshape(*np.shape(boards), N_SQUARES)


def random_squares(moves: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """For each bitboard of legal moves, its set bit of rank ``floor(uniform * count)`` (ranks counted from
    the lowest square): a uniform pick when ``uniform`` is uniform on [0, 1). -1 where there is no legal move."""
    count = np.bitwise_count(moves).astype(np.int64)
    rank = np.minimum((uniform * count).astype(np.int64), np.maximum(count - 1, 0))
    left = moves.copy()
    for i in range(int(rank.max(initial=0))):  # clear the lowest set bit while the rank is not reached
        left = np.where(rank > i, left & (left - np.uint64(1)), left)
    lowest = left & (~left + np.uint64(1))
    return np.where(count > 0, np.bitwise_count(lowest - np.uint64(1)).astype(np.int64), -1)
