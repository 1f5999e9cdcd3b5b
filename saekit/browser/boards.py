"""The board panel of an SAE trained on a board-game model: for each latent, the boards at its top
positions and the board-state property it tracks best.

An SAE's ``provenance.json`` says whether it was trained on a game model (``data.games``, written by a
``kind = "games"`` source: the game, and for chess the player). The browser then shows the latents on
held-out games of the same source (:func:`saekit.sources.games.game_tokens`), one position per token,
and this module adds, per latent:

* its **best property**: the one of highest F1 over the browser's positions, over every threshold
  (:func:`saekit.boardgames.board_metrics.latent_best`). Othello: the blank-masked board and the legal
  moves (:mod:`saekit.boardgames.othello_properties`); chess: the pieces per square without the
  empty class and the starting position's pieces (the study's set,
  :func:`saekit.boardgames.study_boards.chess_board_columns`) and the rules;
* the **boards** at its first :data:`POSITIONS` top positions: 64 bytes per board (Othello: 0 empty,
  1 black, 2 white; chess: the index of :data:`saekit.boardgames.chess_properties.PIECES`), the
  square of the move just played (-1: none yet) and whether the first player (black in Othello,
  white in chess) moves next.

The records are fixed-size (:func:`record_dtype`), so the page reads one latent's with a range request,
as the other panels do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor

from saekit.errors import ConfigError

POSITIONS = 6
"""Top positions whose boards a latent's page draws."""
GAMES = ("othello", "chess")


class States(NamedTuple):
    """One row per token of the games, in row-major order."""

    squares: np.ndarray
    """uint8 [rows, 64]: each square's content (see the module docstring)."""
    played: np.ndarray
    """int8 [rows]: the square of the move just played, -1 before the first."""
    first_to_move: np.ndarray
    """uint8 [rows]: 1 when black (Othello) or white (chess) moves next."""
    names: tuple[str, ...]
    properties: np.ndarray
    """bool [rows, len(names)]: the properties a latent's best one is chosen from."""


@dataclass(frozen=True)
class Boards:
    """The panel's data of every latent of one SAE (L latents, K = :data:`POSITIONS`)."""

    game: str
    names: tuple[str, ...]
    """The properties ``records["best"]`` indexes."""
    records: np.ndarray
    """[L] of :func:`record_dtype` (K): ``best`` (-1: never on), ``f1``, ``threshold``, ``rows``
    (-1: no position), ``squares`` [K, 64], ``played``, ``first_to_move``."""


def record_dtype(positions: int = POSITIONS) -> np.dtype:
    return np.dtype([
        ("best", "<i4"), ("f1", "<f4"), ("threshold", "<f4"), ("rows", "<i4", (positions,)),
        ("squares", "u1", (positions, 64)), ("played", "i1", (positions,)), ("first_to_move", "u1", (positions,)),
    ])  # fmt: skip


def board_states(game: str, tokens: Tensor) -> States:
    """The States of the games ``tokens`` (int [games, context], complete games, as
    :func:`saekit.sources.games.game_tokens` gives them)."""
    if game not in GAMES:
        raise ConfigError(f"unknown game {game!r}; the boards are those of {', '.join(GAMES)}")
    states = _chess(tokens.numpy()) if game == "chess" else _othello(tokens.numpy())
    if len(states.squares) != tokens.numel():
        raise ConfigError(f"the games give {len(states.squares)} positions for {tokens.numel()} tokens")
    return states


def _othello(tokens: np.ndarray) -> States:
    from saekit.boardgames.othello_batch import bits_to_bool
    from saekit.boardgames.othello_games import replay
    from saekit.boardgames.othello_properties import BOARD_BLANK_MASKED, LEGAL, othello_properties
    from saekit.boardgames.othello_tokens import decode_tokens

    moves = decode_tokens(tokens)
    state = replay(moves)
    squares = bits_to_bool(state.black).astype(np.uint8) + 2 * bits_to_bool(state.white).astype(np.uint8)
    names = BOARD_BLANK_MASKED + LEGAL
    table = othello_properties(moves, context=tokens.shape[1]).select(names)
    return States(
        squares.reshape(-1, 64), moves.reshape(-1).astype(np.int8), state.black_to_move.reshape(-1).astype(np.uint8),
        names, table.values,
    )  # fmt: skip


def _chess(tokens: np.ndarray) -> States:
    from saekit.boardgames.chess_properties import PIECE_BOARD, PIECES, RULES, chess_properties
    from saekit.boardgames.pgn import decode_pgn
    from saekit.boardgames.study_boards import chess_board_columns

    texts = [decode_pgn(row) for row in tokens]
    table = chess_properties(texts, at="all")
    pieces = table.select(PIECE_BOARD).values.reshape(-1, 64, len(PIECES)).argmax(axis=2).astype(np.uint8)
    played, white = [], []
    for text in texts:  # the position a character sees: after as many moves as spaces up to it
        finished = np.cumsum([c == " " for c in text], dtype=np.int64)
        landed = np.array([-1, *_landing_squares(text)], dtype=np.int8)
        played.append(landed[finished])
        white.append((finished % 2 == 0).astype(np.uint8))
    names = chess_board_columns() + RULES
    return States(pieces, np.concatenate(played), np.concatenate(white), names, table.select(names).values)


def _landing_squares(text: str) -> list[int]:
    """The square each complete move of ``text`` lands on (the king's, for castling), as the chess
    package plays them; chess_properties has checked the moves already."""
    from saekit.boardgames.pgn import chess_module, complete_moves

    board = chess_module().Board()
    return [board.push_san(san).to_square for san in complete_moves(text)]


def boards_of(game: str, states: States, codes: np.ndarray, top_rows: Tensor, positions: int = POSITIONS) -> Boards:
    """The Boards of an SAE whose ``codes`` ([rows, latents]) are those at the rows of ``states``, and
    whose top positions are ``top_rows`` ([latents, top_n], -1: none; the first ``positions`` drawn)."""
    from saekit.boardgames.board_metrics import latent_best

    best = latent_best(codes, states.properties)
    rows = np.full((codes.shape[1], positions), -1, dtype=np.int64)
    taken = top_rows[:, :positions].numpy()
    rows[:, : taken.shape[1]] = taken
    records = np.zeros(codes.shape[1], dtype=record_dtype(positions))
    records["best"], records["f1"], records["threshold"] = best.property, best.f1, best.threshold
    records["rows"] = rows
    present = rows >= 0
    at = np.where(present, rows, 0)
    records["squares"] = np.where(present[..., None], states.squares[at], 0)
    records["played"] = np.where(present, states.played[at], -1)
    records["first_to_move"] = np.where(present, states.first_to_move[at], 0)
    return Boards(game, states.names, records)


def square_of(name: str) -> int:
    """The square (0 = a1 .. 63 = h8, Othello's and the chess package's numbering alike) a property
    ``<square>_<class>`` is about; -1 for a property of no square (a chess rule)."""
    head, sep, _ = name.partition("_")
    if sep and len(head) == 2 and head[0] in "abcdefgh" and head[1] in "12345678":
        return (int(head[1]) - 1) * 8 + "abcdefgh".index(head[0])
    return -1


def panel_entry(boards: Boards, file: str) -> dict[str, Any]:
    """The panel's entry of ``page.json``'s ``extras`` (its records are ``boards.records``' bytes)."""
    from saekit.browser.record import field_table

    dtype = boards.records.dtype
    return {
        "kind": "board", "file": file, "record_size": dtype.itemsize, "fields": field_table(dtype), "game": boards.game,
        "properties": list(boards.names), "marks": [square_of(n) for n in boards.names],
    }  # fmt: skip
