"""Chess board-state properties: which position each character sees, and each property on known positions."""

import numpy as np
import pytest

pytest.importorskip("chess")

from saekit.boardgames.chess_properties import (  # noqa: E402
    ALL,
    PIECE_BOARD,
    PIECE_BOARD_BLANK_MASKED,
    PIECES,
    RULES,
    chess_properties,
)
from saekit.errors import ConfigError, DataError  # noqa: E402


def value(table, row, name):
    return bool(table.values[row, ALL.index(name)])


def test_the_name_lists():
    assert len(PIECES) == 13 and PIECES[6] == "empty" and PIECES[0] == "black_king" and PIECES[12] == "white_king"
    assert len(PIECE_BOARD) == 832 and len(PIECE_BOARD_BLANK_MASKED) == 768 and ALL == PIECE_BOARD + RULES
    assert PIECE_BOARD[:2] == ("a1_black_king", "a1_black_queen")


def test_each_character_sees_the_moves_finished_before_it():
    text = ";1.e4 e5 2.Nf3"
    table = chess_properties([text])
    assert table.index.tolist() == list(range(len(text)))
    e4 = [value(table, i, "e4_white_pawn") for i in range(len(text))]
    e5 = [value(table, i, "e5_black_pawn") for i in range(len(text))]
    assert e4 == [False] * 5 + [True] * 9  # from the space after "e4"
    assert e5 == [False] * 8 + [True] * 6  # from the space after "e5"
    assert not any(value(table, i, "f3_white_knight") for i in range(len(text)))  # Nf3 is not finished


def test_dots_select_the_positions_before_each_white_move():
    text = ";1.e4 e5 2.Nf3 Nc6 3."
    table = chess_properties([text, text[:9]], at="dots")
    assert table.index.tolist() == [2, 10, 20, 2] and table.game.tolist() == [0, 0, 0, 1]
    assert value(table, 0, "e2_white_pawn") and value(table, 1, "e4_white_pawn") and value(table, 2, "f3_white_knight")
    assert chess_properties([text], at="dots", max_chars=12).index.tolist() == [2, 10]


def test_the_start_position_has_one_class_per_square():
    table = chess_properties([";1."])
    board = table.values[0, : len(PIECE_BOARD)].reshape(64, 13)
    assert (board.sum(axis=1) == 1).all()
    assert value(table, 0, "e1_white_king") and value(table, 0, "d8_black_queen") and value(table, 0, "e4_empty")
    assert value(table, 0, "can_castle") and not value(table, 0, "in_check") and not value(table, 0, "any_pin")


def last(text, name):
    table = chess_properties([text])
    return value(table, len(text) - 1, name)


def test_check_pin_castling_and_en_passant_on_known_positions():
    assert last(";1.f3 e5 2.g4 Qh4# ", "in_check")
    assert not last(";1.d3 e6 2.Nc3 ", "any_pin")
    assert last(";1.d3 e6 2.Nc3 Bb4 ", "any_pin")  # the c3 knight shields the king on e1
    assert last(";1.e4 e5 2.Ke2 ", "can_castle")  # black to move keeps its rights
    assert not last(";1.e4 e5 2.Ke2 Nc6 ", "can_castle")  # white to move has lost them
    text = ";1.h4 a5 2.Rh3 a4 "  # white to move: kingside right gone, queenside kept
    assert not last(text, "can_castle_kingside") and last(text, "can_castle_queenside") and last(text, "can_castle")
    assert last(";1.e4 a6 2.e5 d5 ", "legal_en_passant") and not last(";1.e4 a6 2.e5 d6 ", "legal_en_passant")


def test_bad_games_and_settings_are_refused():
    with pytest.raises(DataError, match=r"chess game 1, move 2: 'e4' is not a legal move"):
        chess_properties([";1.e4 ", ";1.e4 e4 "])
    with pytest.raises(DataError, match=r"chess game 1: a chess game string starts with ';'"):
        chess_properties([";1.e4 ", "1.e4 "])
    with pytest.raises(DataError, match="chess game 0 must be a string"):
        chess_properties([b";1.e4 "])
    with pytest.raises(ConfigError, match="at must be one of all, dots"):
        chess_properties([";1.e4"], at="spaces")
    with pytest.raises(ConfigError, match="max_chars"):
        chess_properties([";1.e4"], max_chars=0)
    assert chess_properties([]).values.shape == (0, len(ALL))
    assert np.array_equal(chess_properties([";"]).index, [0])
