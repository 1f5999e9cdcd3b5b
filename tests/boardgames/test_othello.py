"""The scalar Othello rules against positions checked by hand."""

import numpy as np
import pytest

from saekit.boardgames.othello import BLACK, EMPTY, WHITE, OthelloBoard, play_game, square_index, square_name
from saekit.errors import DataError

# The shortest complete game (black wipes white out after nine moves), each move's turned discs
# worked out by hand on the standard start (white d4 e5, black e4 d5):
SHORTEST = [
    ("e6", ["e5"]),  # up: e5 white, e4 black
    ("f4", ["e4"]),  # left: e4 black, d4 white
    ("e3", ["e4"]),  # down: e4 white, e5 black
    ("f6", ["e5"]),  # up-left: e5 black, d4 white
    ("g5", ["f4"]),  # up-left: f4 white, e3 black
    ("d6", ["d5", "e6"]),  # up: d5 black, d4 white; right: e6 black, f6 white
    ("e7", ["e5", "e6", "f6"]),  # up: e6, e5 white, e4 black; up-right: f6 white, g5 black
    ("f5", ["e5"]),  # left: e5 black, d5 white
    ("c5", ["d4", "d5", "d6", "e5", "f5"]),  # right: d5 e5 f5 to g5; up-right: d4 to e3; down-right: d6 to e7
]


def names(squares):
    return sorted(square_name(s) for s in squares)


def test_square_names_are_standard_notation():
    assert [square_name(s) for s in (0, 7, 19, 63)] == ["a1", "h1", "d3", "h8"]
    assert all(square_index(square_name(s)) == s for s in range(64))
    with pytest.raises(DataError, match="not an Othello square name"):
        square_index("i9")
    with pytest.raises(DataError, match="not on the board"):
        square_name(64)


def test_the_opening_has_blacks_four_moves():
    board = OthelloBoard()
    assert board.to_move == BLACK and board.score() == (2, 2)
    assert names(board.legal_moves()) == ["c4", "d3", "e6", "f5"]
    assert board.legal_moves() == [19, 26, 37, 44]


def test_the_shortest_game_turns_the_hand_checked_discs_and_ends_thirteen_to_nil():
    board = OthelloBoard()
    for move, turned in SHORTEST:
        assert names(board.play(square_index(move))) == turned, move
    assert board.over and board.to_move == EMPTY
    assert board.score() == (13, 0)
    assert board.legal_moves(BLACK) == [] and board.legal_moves(WHITE) == []
    with pytest.raises(DataError, match="after the game is over"):
        board.play(0)


def test_after_the_first_move_white_has_its_three_replies():
    board = play_game([square_index("e6")])
    assert board.to_move == WHITE
    assert names(board.legal_moves()) == ["d6", "f4", "f6"]


def eight_way_position():
    """Black to play d4 (row 3, col 3): a white disc next to it in all eight directions, each closed by a
    black disc, two white discs to the right; a white run to the edge on row 7 as a distractor."""
    cells = np.zeros(64, dtype=np.int64)
    whites = [(2, 2), (2, 3), (2, 4), (3, 2), (3, 4), (3, 5), (4, 2), (4, 3), (4, 4)]
    blacks = [(1, 1), (1, 3), (1, 5), (3, 1), (3, 6), (5, 1), (5, 3), (5, 5)]
    for r, c in whites:
        cells[r * 8 + c] = WHITE
    for r, c in blacks:
        cells[r * 8 + c] = BLACK
    return cells, [r * 8 + c for r, c in whites]


def test_a_move_turns_discs_in_all_eight_directions():
    cells, whites = eight_way_position()
    board = OthelloBoard(cells, BLACK)
    assert board.flips(27) == sorted(whites)
    assert board.play(27) == sorted(whites)
    assert (board.cells[whites] == BLACK).all()


def test_a_run_that_reaches_the_edge_or_an_empty_square_is_not_turned():
    cells = np.zeros(64, dtype=np.int64)
    cells[[1, 2]] = WHITE  # from d1 to the left: c1 b1 white, then a1 empty
    cells[[9]] = BLACK
    board = OthelloBoard(cells, BLACK)
    assert board.flips(3) == []  # d1: the run c1 b1 ends at empty a1
    cells[0] = WHITE  # now the run c1 b1 a1 reaches the edge
    assert OthelloBoard(cells, BLACK).flips(3) == []


def test_a_player_without_a_move_passes_and_the_other_moves_again():
    # black a1 and h8, white b1 and g8, black to move. White can never bracket a black disc here.
    cells = np.zeros(64, dtype=np.int64)
    cells[[0, 63]] = BLACK
    cells[[1, 62]] = WHITE
    board = OthelloBoard(cells, BLACK)
    assert names(board.legal_moves()) == ["c1", "f8"]
    assert board.play(square_index("c1")) == [square_index("b1")]
    assert board.to_move == BLACK and board.passes == 1  # white had no move
    assert board.play(square_index("f8")) == [square_index("g8")]
    assert board.over and board.score() == (6, 0)  # four discs at the start, two placed, all black


def test_illegal_moves_and_bad_positions_are_refused_by_name():
    board = OthelloBoard()
    with pytest.raises(DataError, match=r"move 0 \(a1\) is not legal for black after 0 moves"):
        board.play(0)
    with pytest.raises(DataError, match="is not legal"):
        board.play(27)  # occupied
    with pytest.raises(DataError, match="64 cells"):
        OthelloBoard([0] * 63)
    with pytest.raises(DataError, match="64 cells"):
        OthelloBoard([2] * 64)
    with pytest.raises(DataError, match="player to move"):
        OthelloBoard(None, 0)
