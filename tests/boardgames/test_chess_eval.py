"""Chess legal-move accuracy: the scored move starts, the greedy decoding (batched with a cache, equal to
one prefix at a time), and the score of a model that replays the game or writes nonsense."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from saekit.boardgames.chess_eval import MAX_SAN, chess_legal_move_accuracy, greedy_moves, move_starts
from saekit.boardgames.chess_model import ChessModelConfig, build_chess_model
from saekit.boardgames.pgn import VOCAB, decode_pgn, encode_pgn, random_chess_games
from saekit.errors import DataError

pytest.importorskip("chess")
pytestmark = pytest.mark.usefixtures("one_thread")

GAME = ";1.e4 e5 2.Qh5 Nc6 3.Bc4 Nf6 4.Qxf7# "


class Writes(torch.nn.Module):
    """A language model of the chess vocabulary that always writes the next character of ``text`` after
    a prefix of it (or ``fallback`` off it): a real module with the call signature the decoder uses."""

    def __init__(self, text: str | None, fallback: str = "e") -> None:
        super().__init__()
        self.text, self.fallback = text, VOCAB.index(fallback)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False):
        seen = input_ids if cache is None else torch.cat([cache, input_ids], dim=1)
        logits = torch.zeros(*input_ids.shape, len(VOCAB))
        for row in range(len(seen)):
            prefix = decode_pgn(seen[row][attention_mask[row].bool()].numpy())  # padding masked out
            nxt = self.text[len(prefix)] if self.text and self.text.startswith(prefix) and len(prefix) < len(self.text) else VOCAB[self.fallback]
            logits[row, :, VOCAB.index(nxt)] = 1.0  # the decoder reads the last real position
        return SimpleNamespace(logits=logits, cache=seen)


def test_moves_start_after_a_move_number_or_after_whites_move():
    starts = move_starts([GAME], context=64)
    assert [s.index for s in starts] == [3, 6, 11, 15, 21, 25, 31]  # e4 e5 Qh5 Nc6 Bc4 Nf6 Qxf7#; none after mate
    assert "e4" in starts[0].legal and len(starts[0].legal) == 20
    assert "Qxf7#" in starts[-1].legal and "Qxf7+" not in starts[-1].legal


def test_only_moves_whose_longest_continuation_fits_the_context_are_scored():
    assert [s.index for s in move_starts([GAME], context=21 + MAX_SAN)] == [3, 6, 11, 15, 21]


def test_a_model_replaying_the_game_is_always_legal_and_one_writing_nonsense_never():
    assert chess_legal_move_accuracy(Writes(GAME), [GAME], 64) == (1.0, 7, 7)
    assert chess_legal_move_accuracy(Writes(None), [GAME], 64) == (0.0, 7, 0)
    wrong_check = GAME.replace("Qxf7#", "Qxf7+")
    assert greedy_moves(Writes(wrong_check), [GAME], move_starts([GAME], 64))[-1] == "Qxf7+"
    assert chess_legal_move_accuracy(Writes(wrong_check), [GAME], 64).legal == 6  # a wrong suffix is illegal


def test_batched_decoding_equals_one_prefix_at_a_time():
    config = ChessModelConfig(layers=2, d_model=16, heads=2, context=64)
    model = build_chess_model(config, seed=3).eval()
    games = random_chess_games(3, 9, max_plies=config.max_plies)
    starts = move_starts(games, config.context)
    batched = greedy_moves(model, games, starts, batch=7)

    def one(prefix: str) -> str:
        ids = torch.from_numpy(encode_pgn(prefix).astype(np.int64))[None]
        out = ""
        with torch.no_grad():
            for _ in range(MAX_SAN + 1):
                char = int(model(input_ids=ids).logits[0, -1].argmax())
                if VOCAB[char] == " ":
                    break
                out += VOCAB[char]
                ids = torch.cat([ids, torch.tensor([[char]])], dim=1)
        return out

    assert batched == [one(games[s.game][: s.index]) for s in starts]


def test_an_illegal_move_in_a_game_is_named():
    with pytest.raises(DataError, match="chess game 0, move 2: 'Ke7' is not a legal move"):
        move_starts([";1.e4 Ke7 2.d4"], 64)
