"""Legal-move accuracy of a chess GPT: how often the move it writes greedily is legal.

A move starts at character ``i`` of a game string when ``text[i - 1]`` is the dot after a move number
(white to move) or the space after white's move (black to move). There the model reads ``text[:i]`` and
writes characters greedily (its top-1 each time) until a space, at most ``MAX_SAN`` + 1 characters.
The prediction counts as legal when the written string is exactly the SAN of a legal move in the
position reached (as the ``chess`` package writes it: ``Nf3``, ``exd5``, ``O-O``, ``e8=Q+``; a string
that does not name a move, a missing ``+`` or an extra one is illegal). Every move start whose greedy
continuation fits in the model's context is scored, except where the game is over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from saekit.boardgames.othello_eval import LegalMoveAccuracy
from saekit.boardgames.pgn import chess_module, complete_moves, decode_pgn, encode_pgn
from saekit.errors import DataError

if TYPE_CHECKING:
    from torch import nn

    from saekit.models.load import LoadedModel

MAX_SAN = 7
"""The longest SAN the chess package writes (``Qh4xe1+``, ``exd8=Q#``)."""
_SPACE = 0  # VOCAB[0]


class MoveStart(NamedTuple):
    game: int
    index: int
    """Characters read before the move."""
    legal: frozenset[str]
    """The SAN of every legal move there."""


def move_starts(games: Sequence[str], context: int) -> list[MoveStart]:
    """The scored move starts of ``games`` (see the module docstring): index + ``MAX_SAN`` + 1 within
    ``context``, the game not over. An illegal move in a game is a DataError naming it."""
    chess = chess_module()
    starts = []
    for g, text in enumerate(games):
        board = chess.Board()
        for i in range(1, min(len(text), context - MAX_SAN + 1)):
            before, now = text[i - 1], text[i]
            if not (before == "." or (before == " " and not now.isdigit())):
                continue
            moves = complete_moves(text[:i])
            while len(board.move_stack) < len(moves):
                san = moves[len(board.move_stack)]
                try:
                    board.push_san(san)
                except ValueError as exc:
                    raise DataError(f"chess game {g}, move {len(board.move_stack) + 1}: {san!r} is not a legal move here") from exc
            if not board.is_game_over():
                starts.append(MoveStart(g, i, frozenset(board.san(m) for m in board.legal_moves)))
    return starts


def greedy_moves(model: nn.Module | LoadedModel, games: Sequence[str], starts: list[MoveStart], *, batch: int = 64) -> list[str]:
    """The string the model writes greedily at each move start, up to a space (at most MAX_SAN + 1 characters)."""
    import torch

    from saekit.models.load import as_module

    module = as_module(model)
    order = sorted(range(len(starts)), key=lambda k: starts[k].index)
    written = [""] * len(starts)
    with torch.inference_mode():
        for first in range(0, len(order), batch):
            chunk = order[first : first + batch]
            prefixes = [encode_pgn(games[starts[k].game][: starts[k].index]) for k in chunk]
            for k, ids in zip(chunk, _decode(module, prefixes)):
                written[k] = decode_pgn(np.array(ids, dtype=np.int64))
    return written


def _decode(module: nn.Module, prefixes: list[np.ndarray]) -> list[list[int]]:
    """Greedy characters after each prefix, up to a space or MAX_SAN + 1 characters. The prefixes are
    right-padded into one batch, padding masked out of attention, and each written character is read
    once at its own position with the cached keys and values of what came before."""
    import torch

    lengths = torch.tensor([len(p) for p in prefixes])
    ids = torch.zeros((len(prefixes), int(lengths.max())), dtype=torch.long)
    for row, p in enumerate(prefixes):
        ids[row, : len(p)] = torch.from_numpy(p.astype(np.int64))
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).long()
    result = module(input_ids=ids, attention_mask=mask, use_cache=True)
    logits = result.logits[torch.arange(len(prefixes)), lengths - 1]
    out: list[list[int]] = [[] for _ in prefixes]
    open_ = torch.ones(len(prefixes), dtype=torch.bool)
    for step in range(MAX_SAN + 1):
        chars = logits.argmax(-1)
        for row in torch.nonzero(open_ & (chars != _SPACE)).flatten().tolist():
            out[row].append(int(chars[row]))
        open_ &= chars != _SPACE
        if not open_.any() or step == MAX_SAN:
            break
        mask = torch.cat([mask, torch.ones((len(prefixes), 1), dtype=torch.long)], dim=1)
        result = module(
            input_ids=chars[:, None], attention_mask=mask, position_ids=(lengths + step)[:, None],
            cache=result.cache, use_cache=True,
        )  # fmt: skip
        logits = result.logits[:, -1]
    return out


def chess_legal_move_accuracy(model: nn.Module | LoadedModel, games: Sequence[str], context: int) -> LegalMoveAccuracy:
    """Legal-move accuracy of a chess GPT of ``context`` characters on ``games`` (module docstring)."""
    starts = move_starts(games, context)
    written = greedy_moves(model, games, starts)
    legal = sum(text in s.legal for text, s in zip(written, starts))
    n = len(starts)
    return LegalMoveAccuracy(accuracy=legal / n if n else float("nan"), positions=n, legal=legal)
