"""Othello, one game at a time: the readable rules the vectorised engine (``othello_batch``) is tested against.

Squares are numbered ``row * 8 + col`` (0 = a1 ... 63 = h8), the numbering of othello_world and of the
board-game paper's token table. Names are standard Othello notation, column letter then row number
(square 19 is ``d3``); othello_world's own labels put the row letter first, but the indices are the same.
Black moves first from the standard start (white on d4 and e5, black on e4 and d5).

A pass is never a move: when the player to move has no legal move but the other player has, the turn
goes back to the other player at once (``play`` resolves it), so a game is a plain sequence of squares,
as in the paper's datasets. The game is over when neither player can move.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from saekit.errors import DataError

BLACK, WHITE, EMPTY = 1, -1, 0
N_SQUARES = 64
START_BLACK = (28, 35)
START_WHITE = (27, 36)
CENTRE = (27, 28, 35, 36)
"""The four squares occupied at the start: never a move."""
MAX_MOVES = 60
DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def square_name(square: int) -> str:
    """``19 -> 'd3'``: column letter, then row number."""
    if not 0 <= square < N_SQUARES:
        raise DataError(f"Othello square {square} is not on the board (0..63)")
    return "abcdefgh"[square % 8] + str(square // 8 + 1)


def square_index(name: str) -> int:
    """``'d3' -> 19``; the inverse of :func:`square_name`."""
    if len(name) != 2 or name[0] not in "abcdefgh" or name[1] not in "12345678":
        raise DataError(f"{name!r} is not an Othello square name (a1 .. h8)")
    return (int(name[1]) - 1) * 8 + "abcdefgh".index(name[0])


class OthelloBoard:
    """One game's position: ``cells`` (int8 [64]: BLACK, WHITE or EMPTY), ``to_move`` (BLACK, WHITE, or
    EMPTY once the game is over), ``history`` (the squares played) and ``passes`` (how many turns were
    passed)."""

    def __init__(self, cells: Iterable[int] | None = None, to_move: int = BLACK) -> None:
        if cells is None:
            board = np.zeros(N_SQUARES, dtype=np.int8)
            board[list(START_BLACK)] = BLACK
            board[list(START_WHITE)] = WHITE
        else:
            board = np.array(list(cells), dtype=np.int64)
            if board.shape != (N_SQUARES,) or not np.isin(board, (BLACK, WHITE, EMPTY)).all():
                raise DataError("an Othello position needs 64 cells, each 1 (black), -1 (white) or 0 (empty)")
            board = board.astype(np.int8)
        if to_move not in (BLACK, WHITE):
            raise DataError(f"the player to move must be 1 (black) or -1 (white), not {to_move}")
        self.cells = board
        self.to_move = to_move
        self.history: list[int] = []
        self.passes = 0
        self._resolve_turn(to_move)

    @property
    def over(self) -> bool:
        return self.to_move == EMPTY

    def flips(self, square: int, player: int | None = None) -> list[int]:
        """The discs that ``player`` (default: the player to move) would turn by playing ``square``,
        walking each of the eight directions; empty when the square is taken or turns nothing."""
        player = self.to_move if player is None else player
        if player == EMPTY or self.cells[square] != EMPTY:
            return []
        row, col = divmod(square, 8)
        turned: list[int] = []
        for d_row, d_col in DIRECTIONS:
            run: list[int] = []
            r, c = row + d_row, col + d_col
            while 0 <= r < 8 and 0 <= c < 8 and self.cells[r * 8 + c] == -player:
                run.append(r * 8 + c)
                r, c = r + d_row, c + d_col
            if run and 0 <= r < 8 and 0 <= c < 8 and self.cells[r * 8 + c] == player:
                turned.extend(run)
        return sorted(turned)

    def legal_moves(self, player: int | None = None) -> list[int]:
        """The squares ``player`` (default: the player to move) may play, ascending."""
        player = self.to_move if player is None else player
        if player == EMPTY:
            return []
        return [s for s in range(N_SQUARES) if self.flips(s, player)]

    def play(self, square: int) -> list[int]:
        """Play ``square`` for the player to move; returns the discs turned. The turn then passes to the
        opponent, or stays when the opponent cannot move, or ends the game when neither can."""
        if self.over:
            raise DataError(f"Othello: move {square} after the game is over (after {len(self.history)} moves)")
        turned = self.flips(square)
        if not turned:
            raise DataError(
                f"Othello: move {square} ({square_name(square) if 0 <= square < 64 else '?'}) is not legal for "
                f"{'black' if self.to_move == BLACK else 'white'} after {len(self.history)} moves"
            )
        mover = self.to_move
        self.cells[turned] = mover
        self.cells[square] = mover
        self.history.append(square)
        self._resolve_turn(-mover)
        return turned

    def score(self) -> tuple[int, int]:
        """(black discs, white discs)."""
        return int((self.cells == BLACK).sum()), int((self.cells == WHITE).sum())

    def _resolve_turn(self, player: int) -> None:
        if self.legal_moves(player):
            self.to_move = player
        elif self.legal_moves(-player):
            self.to_move = -player
            self.passes += 1
        else:
            self.to_move = EMPTY


def play_game(moves: Iterable[int]) -> OthelloBoard:
    """The position after ``moves`` (squares, from the start); an illegal move is a DataError."""
    board = OthelloBoard()
    for move in moves:
        board.play(int(move))
    return board


def random_game(rng: np.random.Generator) -> list[int]:
    """A game of uniformly random legal moves, played to the end by the scalar rules."""
    board = OthelloBoard()
    while not board.over:
        legal = board.legal_moves()
        board.play(legal[int(rng.integers(len(legal)))])
    return board.history
