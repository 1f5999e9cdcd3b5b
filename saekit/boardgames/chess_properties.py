"""Chess board-state properties, one row per character a model reads.

The character at index ``i`` of a game string (:mod:`saekit.boardgames.pgn`) sees the position after the
moves that the string has finished by then: as many moves as there are spaces in ``text[:i + 1]``, as in
the paper's code. So the characters of ``;1.e4`` see the starting position, those of `` e5`` the
position after 1.e4, and the dot of `` 2.`` the position with white to move after 1...e5. Rows are
``at="all"`` characters or only the ``at="dots"`` (the positions the paper evaluates chess at), game by
game, in order; ``index`` is the character's index in the (``max_chars``-truncated) string.

The properties:

* ``<sq>_<piece>``: the square holds that piece, one of :data:`PIECES` (colour and kind, or ``empty``);
  squares ``a1`` .. ``h8``. Exactly one class holds per square. ``PIECE_BOARD`` lists all 832,
  ``PIECE_BOARD_BLANK_MASKED`` the 768 without ``empty``.
* ``in_check``: the player to move is in check.
* ``any_pin``: some piece of either colour is pinned to its own king (the paper's pin property).
* ``can_castle`` / ``can_castle_kingside`` / ``can_castle_queenside``: the player to move still has the
  castling right (any side / that side); the right, not whether castling is legal now.
* ``legal_en_passant``: an en passant capture is legal now.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from saekit.boardgames.pgn import chess_module, complete_moves
from saekit.boardgames.properties import PropertyTable
from saekit.errors import ConfigError, DataError

if TYPE_CHECKING:
    import chess

PIECES = (
    "black_king", "black_queen", "black_rook", "black_bishop", "black_knight", "black_pawn",
    "empty",
    "white_pawn", "white_knight", "white_bishop", "white_rook", "white_queen", "white_king",
)  # fmt: skip
"""The 13 classes of a square, in the paper's order (its one-hot index is the piece value + 6)."""
_EMPTY = PIECES.index("empty")
_FILES, _RANKS = "abcdefgh", "12345678"
_SQUARES = tuple(f + r for r in _RANKS for f in _FILES)  # index = the chess package's square number
PIECE_BOARD = tuple(f"{sq}_{piece}" for sq in _SQUARES for piece in PIECES)
PIECE_BOARD_BLANK_MASKED = tuple(name for name in PIECE_BOARD if not name.endswith("_empty"))
RULES = ("in_check", "any_pin", "can_castle", "can_castle_kingside", "can_castle_queenside", "legal_en_passant")
ALL = PIECE_BOARD + RULES
POSITIONS = ("all", "dots")


def chess_properties(games: Sequence[str], *, at: str = "all", max_chars: int | None = None) -> PropertyTable:
    """Every property of :data:`ALL` at the characters ``at`` selects of each game string (cut to
    ``max_chars``). An illegal or unreadable move is a DataError naming the game and the move."""
    if at not in POSITIONS:
        raise ConfigError(f"chess_properties: at must be one of {', '.join(POSITIONS)}, got {at!r}")
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise ConfigError(f"chess_properties: max_chars must be a positive integer or None, got {max_chars!r}")
    lib = chess_module()
    values, game, index = [], [], []
    for g, full in enumerate(games):
        if not isinstance(full, str):
            raise DataError(f"chess game {g} must be a string, got {type(full).__name__}")
        text = full[:max_chars]
        boards = _positions(lib, text, g)
        chars = np.arange(len(text)) if at == "all" else np.array([i for i, c in enumerate(text) if c == "."], dtype=np.int64)
        finished = np.cumsum([c == " " for c in text], dtype=np.int64)  # moves finished at each character
        values.append(boards[finished[chars]] if len(chars) else np.zeros((0, len(ALL)), dtype=bool))
        game.append(np.full(len(chars), g, dtype=np.int64))
        index.append(chars.astype(np.int64))
    if not values:
        return PropertyTable(ALL, np.zeros((0, len(ALL)), bool), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return PropertyTable(ALL, np.concatenate(values), np.concatenate(game), np.concatenate(index))


def _positions(lib: ModuleType, text: str, game: int) -> np.ndarray:
    """bool [moves + 1, properties]: the properties of the start and of the position after each move."""
    board = lib.Board()
    rows = [board_properties(lib, board)]
    try:
        sans = complete_moves(text)
    except DataError as exc:
        raise DataError(f"chess game {game}: {exc}") from exc
    for number, san in enumerate(sans):
        try:
            board.push_san(san)
        except ValueError as exc:  # the chess package's move errors are ValueErrors
            raise DataError(f"chess game {game}, move {number + 1}: {san!r} is not a legal move here") from exc
        rows.append(board_properties(lib, board))
    return np.stack(rows)


def board_properties(lib: ModuleType, board: chess.Board) -> np.ndarray:
    """bool [len(ALL)] for one position (``lib``: the chess package)."""
    classes = np.full(64, _EMPTY, dtype=np.int64)
    for square, piece in board.piece_map().items():
        classes[square] = _EMPTY + (piece.piece_type if piece.color == lib.WHITE else -piece.piece_type)
    pieces = np.zeros((64, len(PIECES)), dtype=bool)
    pieces[np.arange(64), classes] = True
    turn = board.turn
    pinned = any(board.is_pinned(piece.color, square) for square, piece in board.piece_map().items())
    rules = [
        board.is_check(),
        pinned,
        board.has_castling_rights(turn),
        board.has_kingside_castling_rights(turn),
        board.has_queenside_castling_rights(turn),
        board.has_legal_en_passant(),
    ]
    return np.concatenate([pieces.reshape(-1), np.array(rules, dtype=bool)])
