"""Othello board-state properties: hand-checked rows, the scalar rules' view, and alignment with tokens."""

import numpy as np
import pytest

from saekit.boardgames.othello import EMPTY, OthelloBoard, square_index
from saekit.boardgames.othello_games import NO_MOVE, random_games
from saekit.boardgames.othello_properties import ALL, BOARD, BOARD_BLANK_MASKED, LEGAL, othello_properties
from saekit.boardgames.othello_tokens import PAD, encode_moves
from saekit.errors import ConfigError, DataError
from tests.boardgames.test_othello import SHORTEST


def holding(table, row, suffix):
    return sorted(name[:2] for name, v in zip(table.names, table.values[row]) if v and name.endswith(suffix))


def test_the_name_lists():
    assert len(BOARD) == 192 and len(BOARD_BLANK_MASKED) == 128 and len(LEGAL) == 64 and ALL == BOARD + LEGAL
    assert BOARD[:3] == ("a1_mine", "a1_empty", "a1_theirs") and LEGAL[19] == "d3_legal"


def test_rows_after_the_first_and_the_last_move_of_the_shortest_game():
    moves = np.array([[square_index(m) for m, _ in SHORTEST] + [NO_MOVE] * 51])
    table = othello_properties(moves)
    assert len(table.values) == 9 and table.index.tolist() == list(range(9)) and (table.game == 0).all()
    # after 1.e6 (black e4 d5 e5 e6, white d4), white is to move: white's discs are "mine"
    assert holding(table, 0, "_mine") == ["d4"]
    assert holding(table, 0, "_theirs") == ["d5", "e4", "e5", "e6"]
    assert holding(table, 0, "_legal") == ["d6", "f4", "f6"]
    assert len(holding(table, 0, "_empty")) == 59
    # after the last move the game is over: white (the opponent of the last mover) owns nothing
    assert holding(table, 8, "_mine") == [] and len(holding(table, 8, "_theirs")) == 13
    assert holding(table, 8, "_legal") == []


def test_every_row_is_the_scalar_position_counting_passes():
    games = random_games(30, seed=4)
    table = othello_properties(games.moves)
    board_part = table.values[:, :192].reshape(-1, 64, 3)
    assert (board_part.sum(axis=2) == 1).all()  # exactly one class per square
    row, passes = 0, 0
    for g in range(30):
        board = OthelloBoard()
        for ply in range(min(59, int(games.lengths[g]))):
            board.play(int(games.moves[g, ply]))
            me = board.to_move if board.to_move != EMPTY else -board.cells[board.history[-1]]
            cells = board.cells * me
            assert np.array_equal(board_part[row], np.stack([cells == 1, cells == 0, cells == -1], axis=1))
            assert np.flatnonzero(table.values[row, 192:]).tolist() == board.legal_moves()
            assert (table.game[row], table.index[row]) == (g, ply)
            row += 1
        passes += board.passes
    assert row == len(table.values) and passes > 0


def test_rows_line_up_with_the_non_padding_tokens():
    moves = random_games(200, seed=9).moves
    tokens = encode_moves(moves)
    table = othello_properties(moves)
    game, index = np.nonzero(tokens != PAD)
    assert np.array_equal(table.game, game) and np.array_equal(table.index, index)
    short = othello_properties(moves, context=5)
    assert len(short.values) == 200 * 5 and np.array_equal(short.values, table.values[table.index < 5])


def test_no_games_give_an_empty_table():
    table = othello_properties(np.zeros((0, 60), dtype=np.int64))
    assert table.values.shape == (0, len(ALL)) and table.game.shape == (0,)


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="context"):
        othello_properties(np.array([[19]]), context=0)
    with pytest.raises(DataError, match="not a legal move"):
        othello_properties(np.array([[0]]))
