"""Legal-move accuracy: how often a model's most likely next token is a legal move.

At each position ``t`` of a game (the model has read moves ``0..t``) where the game goes on, the
prediction counts as legal when its top-1 token is a square the player to move may play (the engine's
legal moves after move ``t``, passes taken into account); padding predicted is never legal. Positions
after a game's end are not counted. The paper's Othello-GPT scores above 0.99; a random model about
the share of legal moves among the 61 tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from saekit.boardgames.othello_games import replay
from saekit.boardgames.othello_tokens import CONTEXT, PAD, PLAYABLE, VOCAB_SIZE, encode_moves
from saekit.errors import DataError

if TYPE_CHECKING:
    from torch import nn

    from saekit.models.load import LoadedModel


class LegalMoveAccuracy(NamedTuple):
    accuracy: float
    """legal / positions (NaN when no position counts)."""
    positions: int
    """Positions scored: every move of the games read but one a game ends with."""
    legal: int
    """Positions whose top-1 prediction is a legal move."""


def legal_move_accuracy_of(predicted: np.ndarray, moves: np.ndarray) -> LegalMoveAccuracy:
    """Score predicted tokens [games, positions] (position ``t``: the token predicted after move ``t``)
    against ``moves`` (squares [games, plies], ``NO_MOVE`` after a game's end; at least ``positions``
    plies). A token outside 0..60 or a shape that does not match is a DataError."""
    predicted = np.asarray(predicted)
    moves = np.asarray(moves)
    if predicted.ndim != 2 or not np.issubdtype(predicted.dtype, np.integer):
        raise DataError(f"predicted tokens must be an integer array [games, positions], got {predicted.dtype} {predicted.shape}")
    if moves.ndim != 2 or moves.shape[0] != predicted.shape[0] or moves.shape[1] < predicted.shape[1]:
        raise DataError(f"moves {moves.shape} must have the games of the predictions {predicted.shape} and at least as many plies")
    bad = np.argwhere((predicted < 0) | (predicted >= VOCAB_SIZE))
    if len(bad):
        game, pos = bad[0]
        raise DataError(f"predicted token of game {game}, position {pos}: {predicted[game, pos]} is not a token (0..60)")
    positions = replay(moves[:, : predicted.shape[1]])
    counted = positions.played & ~positions.over
    squares = PLAYABLE[np.maximum(predicted, 1) - 1].astype(np.uint64)
    hit = (positions.legal >> squares) & np.uint64(1)
    legal = counted & (predicted != PAD) & (hit == 1)
    n = int(counted.sum())
    return LegalMoveAccuracy(accuracy=float(legal.sum()) / n if n else float("nan"), positions=n, legal=int(legal.sum()))


def predicted_moves(model: nn.Module | LoadedModel, moves: np.ndarray, *, batch_games: int = 256) -> np.ndarray:
    """The model's top-1 next token [games, 59] after each of the first 59 moves of ``moves``."""
    import torch

    from saekit.models.load import as_module

    module = as_module(model)
    tokens = torch.from_numpy(encode_moves(moves, context=CONTEXT))
    out = []
    with torch.inference_mode():
        for start in range(0, len(tokens), batch_games):
            batch = tokens[start : start + batch_games]
            logits = module(input_ids=batch, attention_mask=torch.ones_like(batch)).logits
            out.append(logits.argmax(-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, CONTEXT), dtype=np.int64)


def legal_move_accuracy(model: nn.Module | LoadedModel, moves: np.ndarray, *, batch_games: int = 256) -> LegalMoveAccuracy:
    """Legal-move accuracy of ``model`` (an Othello-GPT, see othello_model) on the games ``moves``."""
    return legal_move_accuracy_of(predicted_moves(model, moves, batch_games=batch_games), moves)
