"""The study's positions and properties per game: chess at its dots, without the starting position's pieces."""

import numpy as np
import pytest
import torch

from saekit.boardgames.chess_properties import PIECE_BOARD, PIECE_BOARD_BLANK_MASKED, RULES, chess_properties
from saekit.boardgames.pgn import encode_pgn
from saekit.boardgames.study_boards import _chess, chess_board_columns

pytest.importorskip("chess")

GAMES = [";1.e4 e5 2.Nf3 Nc6 3.Bb5 a6 4.Ba4 Nf", ";1.d4 d5 2.c4 e6 3.Nc3 Nf6 4.Bg5 Be"]


def test_the_blank_masked_chess_columns_leave_out_empty_and_the_starting_pieces():
    columns = chess_board_columns()
    assert len(columns) == 768 - 32
    assert "e2_white_pawn" not in columns and "e8_black_king" not in columns and "e4_white_pawn" in columns
    assert set(columns) < set(PIECE_BOARD_BLANK_MASKED)


def test_chess_rows_are_the_dots_and_the_first_half_of_the_games_fits():
    tokens = torch.from_numpy(np.stack([encode_pgn(g[:34]) for g in GAMES]).astype(np.int64))
    acts = {"site": torch.arange(2 * 34, dtype=torch.float32)[:, None]}  # a position's row number
    board = _chess(tokens, acts)
    dots = [g * 34 + i for g, text in enumerate(GAMES) for i, c in enumerate(text[:34]) if c == "."]
    assert board.acts["site"][:, 0].tolist() == dots and board.split == 4  # four dots in the first game
    table = chess_properties([g[:34] for g in GAMES], at="dots")
    assert np.array_equal(board.state, table.select(PIECE_BOARD).values)
    assert np.array_equal(board.extra, table.select(RULES).values) and board.extra_name == "rules"
    assert board.blank_masked.shape == (8, 736) and board.classes == 13 and board.empty == 6
