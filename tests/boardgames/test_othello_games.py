"""Bulk random games and replay: seeded, legal, and move for move the scalar rules' games."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saekit.boardgames.othello import BLACK, CENTRE, EMPTY, WHITE, OthelloBoard, random_game, square_index
from saekit.boardgames.othello_batch import bits_to_bool
from saekit.boardgames.othello_games import CHUNK, NO_MOVE, random_games, replay
from saekit.errors import ConfigError, DataError
from tests.boardgames.test_othello import SHORTEST


def scalar_trace(moves):
    """Per move of a game: (cells, to_move, legal squares) by the scalar rules."""
    board, trace = OthelloBoard(), []
    for move in moves:
        if move == NO_MOVE:
            break
        board.play(int(move))
        trace.append((board.cells.copy(), board.to_move, board.legal_moves()))
    return trace, board


def assert_replay_matches_scalar(moves):
    state = replay(moves)
    black, white, legal = bits_to_bool(state.black), bits_to_bool(state.white), bits_to_bool(state.legal)
    for g in range(len(moves)):
        trace, _ = scalar_trace(moves[g])
        assert state.played[g].sum() == len(trace)
        for ply, (cells, to_move, moves_now) in enumerate(trace):
            assert np.array_equal(black[g, ply], cells == BLACK) and np.array_equal(white[g, ply], cells == WHITE)
            assert state.over[g, ply] == (to_move == EMPTY)
            if to_move != EMPTY:
                assert state.black_to_move[g, ply] == (to_move == BLACK)
            assert np.flatnonzero(legal[g, ply]).tolist() == moves_now


def test_generated_games_agree_move_by_move_with_the_scalar_rules():
    games = random_games(40, seed=5)
    assert_replay_matches_scalar(games.moves)
    ends = [scalar_trace(games.moves[g])[1] for g in range(len(games.moves))]
    assert all(board.over for board in ends)  # every generated game was played to its end
    assert sum(board.passes > 0 for board in ends) >= 5  # and passes were among what agreed


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_scalar_random_games_replay_identically_in_bulk(seed):
    history = random_game(np.random.default_rng(seed))
    moves = np.full((1, 60), NO_MOVE, dtype=np.int64)
    moves[0, : len(history)] = history
    assert_replay_matches_scalar(moves)
    assert replay(moves).over[0, len(history) - 1]


def test_a_million_random_moves_never_reach_an_illegal_state():
    games = random_games(16_800, seed=11)  # about a million moves
    assert games.lengths.sum() > 1_000_000
    state = replay(games.moves)
    black, white, played = state.black, state.white, state.played
    assert not (black & white).any()
    discs = np.bitwise_count(black | white).astype(np.int64)
    plies = np.arange(60)[None, :]
    assert np.array_equal(discs[played], np.broadcast_to(plies + 5, discs.shape)[played])  # one disc per move
    centre = np.uint64(sum(1 << s for s in CENTRE))
    assert ((black | white)[played] & centre == centre).all()
    start = np.zeros((len(black), 1), dtype=np.uint64)
    before_black = np.concatenate([start | np.uint64((1 << 28) | (1 << 35)), black[:, :-1]], axis=1)
    before_white = np.concatenate([start | np.uint64((1 << 27) | (1 << 36)), white[:, :-1]], axis=1)
    square = np.left_shift(np.uint64(1), np.maximum(games.moves, 0).astype(np.uint64))
    assert not ((before_black | before_white) & square)[played].any()  # each move on an empty square
    gain_black = np.bitwise_count(black).astype(np.int64) - np.bitwise_count(before_black)
    gain_white = np.bitwise_count(white).astype(np.int64) - np.bitwise_count(before_white)
    mover_gain = np.where((black & square) != 0, gain_black, gain_white)
    # the mover gains its new disc and at least one turned disc; the other loses exactly those turned
    assert (mover_gain[played] >= 2).all() and ((gain_black + gain_white)[played] == 1).all()
    # a game stops exactly when it is over, and the player to move always has a move until then
    last = games.lengths - 1
    assert state.over[np.arange(len(last)), last].all()
    assert ((state.legal != 0) | state.over)[played].all()
    assert (state.over[played] == (state.legal[played] == 0)).all()


@pytest.mark.slow
def test_a_thousand_generated_games_agree_with_the_scalar_rules():
    assert_replay_matches_scalar(random_games(1000, seed=6).moves)


def test_the_stream_is_seeded_and_resumable_across_blocks():
    whole = random_games(CHUNK + 3, seed=2)
    assert np.array_equal(random_games(7, seed=2).moves, whole.moves[:7])
    assert np.array_equal(random_games(6, seed=2, start=CHUNK - 3).moves, whole.moves[CHUNK - 3 :])
    assert not np.array_equal(random_games(7, seed=3).moves, whole.moves[:7])
    assert random_games(0, seed=2).moves.shape == (0, 60)
    assert whole.moves.dtype == np.int8 and np.array_equal(whole.lengths, (whole.moves >= 0).sum(axis=1))


@pytest.mark.parametrize("kwargs", [{"n": -1}, {"n": 2.5}, {"seed": -3}, {"start": True}])
def test_bad_generator_arguments_are_config_errors(kwargs):
    args = {"n": 1, "seed": 0} | kwargs
    with pytest.raises(ConfigError, match="non-negative integer"):
        random_games(args.pop("n"), args.pop("seed"), **args)


def shortest_moves():
    return [square_index(m) for m, _ in SHORTEST]


def test_replay_refuses_bad_games_naming_game_and_ply():
    good = np.array([shortest_moves() + [NO_MOVE] * 3])
    assert replay(good).over[0, 8] and not replay(good).played[0, 9]
    cases = [
        (np.array([[0]]), r"game 0, ply 0: a1 is not a legal move"),
        (np.array([[19, 19]]), r"game 0, ply 1: d3 is not a legal move"),
        (np.array([[19, NO_MOVE, 18]]), r"game 0, ply 2: a move after -1 \(no move\)"),
        (np.array([shortest_moves() + [0]]), r"ply 9: a move after the game is over"),
        (np.array([[19], [64]]), r"game 1, ply 0: 64 is not a square"),
        (np.array([[19.0]]), "integer array"),
        (np.zeros((1, 61), dtype=np.int64), "at most 60 moves"),
    ]
    for moves, message in cases:
        with pytest.raises(DataError, match=message):
            replay(moves)


def test_a_game_cut_short_keeps_its_legal_moves():
    state = replay(np.array([[19, NO_MOVE], [19, 18]]))
    assert not state.over[0, 1] and state.legal[0, 1] == state.legal[0, 0] != 0
