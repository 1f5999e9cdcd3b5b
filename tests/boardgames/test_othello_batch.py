"""The bitboard rules against the scalar ones, on hand-built positions."""

import numpy as np

from saekit.boardgames.othello import BLACK, WHITE, OthelloBoard
from saekit.boardgames.othello_batch import Positions, bits_to_bool, flips, legal_moves, random_squares
from tests.boardgames.test_othello import eight_way_position


def bitboard(squares) -> np.uint64:
    return np.uint64(sum(1 << int(s) for s in squares))


def squares_of(board) -> list[int]:
    return [int(s) for s in np.flatnonzero(bits_to_bool(np.array([board]))[0])]


def test_the_start_and_its_legal_moves():
    pos = Positions.start(3)
    assert squares_of(pos.black()[0]) == [28, 35] and squares_of(pos.white()[0]) == [27, 36]
    assert squares_of(legal_moves(pos.own, pos.opp)[0]) == [19, 26, 37, 44]


def test_eight_direction_flips_match_the_scalar_rules():
    cells, whites = eight_way_position()
    own = np.array([bitboard(np.flatnonzero(cells == BLACK))])
    opp = np.array([bitboard(np.flatnonzero(cells == WHITE))])
    assert squares_of(flips(np.array([bitboard([27])]), own, opp)[0]) == sorted(whites)
    scalar = OthelloBoard(cells, BLACK)
    assert squares_of(legal_moves(own, opp)[0]) == scalar.legal_moves()
    assert squares_of(legal_moves(opp, own)[0]) == scalar.legal_moves(WHITE)


def test_no_disc_wraps_around_an_edge():
    # Squares 7 (h1) and 8 (a2) are neighbours as bits, not on the board: from black g1, the white run
    # h1 must stop at the edge, not go on through a2 to an empty b2.
    own = np.array([bitboard([6])])  # black g1
    opp = np.array([bitboard([7, 8])])  # white h1, a2
    assert squares_of(legal_moves(own, opp)[0]) == []  # a "run" h1 -> a2 -> b2 would wrap
    own = np.array([bitboard([15])])  # black h2; a3 (bit 16) is no neighbour of it
    opp = np.array([bitboard([16])])  # white a3
    assert squares_of(legal_moves(own, opp)[0]) == []


def test_random_squares_picks_by_rank_and_marks_no_move():
    moves = np.array([bitboard([3, 40, 63]), bitboard([3, 40, 63]), bitboard([3, 40, 63]), np.uint64(0)])
    picked = random_squares(moves, np.array([0.0, 0.5, 0.999999, 0.3]))
    assert picked.tolist() == [3, 40, 63, -1]


def test_random_squares_is_uniform_over_the_legal_moves():
    rng = np.random.default_rng(0)
    moves = np.full(30_000, bitboard([0, 9, 50]))
    counts = np.bincount(random_squares(moves, rng.random(30_000)), minlength=64)[[0, 9, 50]]
    assert np.abs(counts / 10_000 - 1).max() < 0.05


def test_bits_to_bool_reads_square_s_from_bit_s():
    boards = np.array([[bitboard([0, 63])], [bitboard([8, 9])]])
    unpacked = bits_to_bool(boards)
    assert unpacked.shape == (2, 1, 64)
    assert np.flatnonzero(unpacked[0, 0]).tolist() == [0, 63] and np.flatnonzero(unpacked[1, 0]).tolist() == [8, 9]
