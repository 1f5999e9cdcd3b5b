"""Chess games as character strings, in the format of chess_llm_interpretability's models.

A game is written ``;1.e4 e5 2.Nf3 Nc6 3.Bb5`` : a ``;`` to start, each white move preceded by its
number and a dot (no space after the dot), moves in standard algebraic notation (SAN, as the ``chess``
package writes it: ``O-O``, ``exd5``, ``e8=Q+``, ``Qxf7#``), one space between moves, no result. The
vocabulary is those models' 32 characters (``VOCAB``, ids by sorted order, as their meta.pkl has them).

Games come from seeded players, since no game database is read here: ``random`` plays a uniformly
random legal move; ``greedy`` mates in one when it can, otherwise captures the most valuable piece it can
(ties broken at random), otherwise plays at random. Needs the ``chess`` package (``pip install
'saekit[boardgames]'``).
"""

from __future__ import annotations

import random
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from saekit.errors import ConfigError, DataError

if TYPE_CHECKING:
    import chess

VOCAB = " #+-.0123456789;=BKNOQRabcdefghx"
"""The 32 characters; a character's id is its index."""
_ID = {char: i for i, char in enumerate(VOCAB)}
PLAYERS = ("random", "greedy")
_VALUE = {1: 1, 2: 3, 3: 3, 4: 5, 5: 9, 6: 0}  # pawn .. king (chess.PAWN == 1); the king is never captured


def chess_module() -> ModuleType:
    """The ``chess`` package, or a ConfigError saying how to install it."""
    try:
        import chess
    except ImportError as exc:
        raise ConfigError("chess games need the chess package: pip install 'saekit[boardgames]' (or pip install chess)") from exc
    return chess


def encode_pgn(text: str) -> np.ndarray:
    """A game string -> uint8 ids; a character outside ``VOCAB`` is a DataError naming it and where it is."""
    if not isinstance(text, str):
        raise DataError(f"a chess game must be a string, got {type(text).__name__}")
    try:
        return np.array([_ID[char] for char in text], dtype=np.uint8)
    except KeyError as exc:
        at = next(i for i, char in enumerate(text) if char not in _ID)
        raise DataError(f"chess string: character {text[at]!r} at {at} is not in the vocabulary {VOCAB!r}") from exc


def decode_pgn(ids: np.ndarray) -> str:
    """uint8 ids -> the game string; an id outside 0..31 is a DataError."""
    array = np.asarray(ids)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer) or ((array < 0) | (array >= len(VOCAB))).any():
        raise DataError(f"chess ids must be a 1-D integer array of values 0..{len(VOCAB) - 1}")
    return "".join(VOCAB[i] for i in array)


def write_game(sans: list[str]) -> str:
    """SAN moves -> ``;1.e4 e5 2.Nf3``."""
    parts = [f"{i // 2 + 1}.{san}" if i % 2 == 0 else san for i, san in enumerate(sans)]
    return ";" + " ".join(parts)


def complete_moves(text: str) -> list[str]:
    """The SAN of every move of a game string that is followed by a space (the last one may be cut off
    mid-move and is left out), with the move numbers removed."""
    if not isinstance(text, str):
        raise DataError(f"a chess game must be a string, got {type(text).__name__}")
    if not text.startswith(";"):
        raise DataError(f"a chess game string starts with ';', got {text[:12]!r}")
    words = text[1:].split(" ")[:-1]
    return [word.rpartition(".")[2] for word in words]


def plies_to_fill(chars: int) -> int:
    """Plies a game needs at most to be ``chars`` characters long: every ply takes at least four (``1.e4 ``
    five, ``e5 `` three). Game ``i``'s first plies do not depend on ``max_plies``, so games cut there
    begin as the games played to the end do."""
    return chars // 4 + 2


def random_chess_games(n: int, seed: int, *, player: str = "random", max_plies: int = 400, start: int = 0) -> list[str]:
    """Games ``start .. start + n - 1`` of ``seed`` as game strings, each played from the start by
    ``player`` for both sides until the game is over
    (checkmate, stalemate, insufficient material, the 75-move or fivefold-repetition rule) or
    ``max_plies`` moves. Game ``i`` depends only on ``(seed, i)`` and the settings."""
    for name, value in (("n", n), ("seed", seed), ("max_plies", max_plies), ("start", start)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"random_chess_games: {name} must be a non-negative integer, got {value!r}")
    if player not in PLAYERS:
        raise ConfigError(f"random_chess_games: player must be one of {', '.join(PLAYERS)}, got {player!r}")
    chess = chess_module()
    return [_play(chess, random.Random(f"{seed}:{i}"), player, max_plies) for i in range(start, start + n)]


def _play(chess: ModuleType, rng: random.Random, player: str, max_plies: int) -> str:
    board = chess.Board()
    sans: list[str] = []
    while len(sans) < max_plies and not board.is_game_over():
        legal = list(board.legal_moves)
        move = _greedy(board, legal, rng) if player == "greedy" else rng.choice(legal)
        sans.append(board.san(move))
        board.push(move)
    return write_game(sans)


def _greedy(board: chess.Board, legal: list[chess.Move], rng: random.Random) -> chess.Move:
    for move in legal:
        board.push(move)
        mate = board.is_checkmate()
        board.pop()
        if mate:
            return move
    best, choices = 0, legal
    for move in legal:
        taken = board.piece_type_at(move.to_square) or (1 if board.is_en_passant(move) else 0)
        value = _VALUE.get(taken, 0)
        if value > best:
            best, choices = value, [move]
        elif value == best and best > 0:
            choices.append(move)
    return rng.choice(choices)
