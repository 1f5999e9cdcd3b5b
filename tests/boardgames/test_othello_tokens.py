"""The Othello token table is the paper's: 0 pads, 1..60 are the playable squares in order."""

import numpy as np
import pytest

from saekit.boardgames.othello_games import NO_MOVE, random_games
from saekit.boardgames.othello_tokens import CONTEXT, PAD, PLAYABLE, VOCAB_SIZE, decode_tokens, encode_moves
from saekit.errors import DataError


def test_the_table_matches_the_reference_stoi():
    # othello_world / SAE_BoardGameEval stoi: square 0 -> 1, 26 -> 27, 29 -> 28, 34 -> 33, 37 -> 34, 63 -> 60
    squares = np.array([[0, 26, 29, 34, 37, 63]])
    assert encode_moves(squares).tolist() == [[1, 27, 28, 33, 34, 60]]
    assert VOCAB_SIZE == 61 and PAD == 0 and CONTEXT == 59
    assert len(PLAYABLE) == 60 and not set(PLAYABLE) & {27, 28, 35, 36}


def test_games_round_trip_and_are_cut_to_the_context():
    moves = random_games(50, seed=1).moves
    tokens = encode_moves(moves)
    assert tokens.shape == (50, 59) and tokens.min() >= 0 and tokens.max() <= 60
    assert np.array_equal(decode_tokens(tokens), moves[:, :59])
    assert encode_moves(moves, context=None).shape == (50, 60)
    assert encode_moves(np.array([[19, NO_MOVE]])).tolist() == [[20, PAD]]


def test_what_is_not_a_move_or_a_token_is_refused():
    with pytest.raises(DataError, match=r"game 0, ply 1: 27 is not a playable square"):
        encode_moves(np.array([[19, 27]]))
    with pytest.raises(DataError, match=r"game 1, ply 0: 64"):
        encode_moves(np.array([[19], [64]]))
    with pytest.raises(DataError, match="-2"):
        encode_moves(np.array([[-2]]))
    with pytest.raises(DataError, match=r"position 1: 61 is not a token"):
        decode_tokens(np.array([[1, 61]]))
    with pytest.raises(DataError, match="integer array"):
        encode_moves(np.array([19, 20]))
