"""Legal-move accuracy against predictions whose legality is known by construction."""

from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from saekit.boardgames import encode_moves, random_games
from saekit.boardgames.othello_eval import legal_move_accuracy, legal_move_accuracy_of
from saekit.boardgames.othello_tokens import CONTEXT, PAD, VOCAB_SIZE
from saekit.errors import DataError


@pytest.fixture(scope="module")
def moves():
    games = random_games(300, seed=4).moves
    assert (games[:, -1] < 0).any()  # some games end early: their padding must not be counted
    return games


def test_the_actual_next_moves_are_all_legal(moves):
    tokens = encode_moves(moves, context=None)
    result = legal_move_accuracy_of(tokens[:, 1:], moves)
    lengths = (moves >= 0).sum(axis=1)
    assert result.positions == int((lengths - 1).sum())
    assert result.accuracy == 1.0 and result.legal == result.positions


def test_the_square_just_played_and_padding_are_never_legal(moves):
    tokens = encode_moves(moves, context=CONTEXT)
    assert legal_move_accuracy_of(tokens, moves).accuracy == 0.0
    assert legal_move_accuracy_of(np.full_like(tokens, PAD), moves).accuracy == 0.0


def test_one_legal_prediction_in_two_scores_a_half(moves):
    actual, played = encode_moves(moves, context=None)[:, 1:], encode_moves(moves, context=CONTEXT)
    mixed = np.where(np.arange(CONTEXT) % 2 == 0, actual, played)
    result = legal_move_accuracy_of(mixed, moves)
    counted = (moves[:, 1:] >= 0)
    assert result.legal == int(counted[:, ::2].sum())


class Output(NamedTuple):
    logits: torch.Tensor


class Constant(nn.Module):
    """A causal LM stand-in whose top token is always ``token``."""

    def __init__(self, token: int) -> None:
        super().__init__()
        self.token = token

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, VOCAB_SIZE)
        logits[..., self.token] = 1.0
        return Output(logits)


def test_a_model_that_always_predicts_padding_scores_zero(moves):
    result = legal_move_accuracy(Constant(PAD), moves, batch_games=64)
    assert result.accuracy == 0.0 and result.positions > 0


def test_a_corner_is_legal_exactly_when_the_engine_says_so(moves):
    from saekit.boardgames import replay

    a1 = 1  # token 1 is square 0, a1
    positions = replay(moves[:, :CONTEXT])
    expected = (positions.played & ~positions.over & ((positions.legal & np.uint64(1)) == 1)).sum()
    assert legal_move_accuracy(Constant(a1), moves).legal == int(expected)


def test_bad_predictions_are_refused_by_name(moves):
    tokens = encode_moves(moves, context=CONTEXT)
    bad = tokens.copy()
    bad[2, 5] = VOCAB_SIZE
    with pytest.raises(DataError, match="game 2, position 5: 61 is not a token"):
        legal_move_accuracy_of(bad, moves)
    with pytest.raises(DataError, match="must have the games"):
        legal_move_accuracy_of(tokens[:5], moves)
    with pytest.raises(DataError, match="integer array"):
        legal_move_accuracy_of(tokens.astype(float), moves)
