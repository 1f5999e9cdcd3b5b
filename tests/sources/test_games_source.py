"""kind = "games": a board-game model's activations on seeded random games, the same tokens for every model."""

from __future__ import annotations

import pytest
import torch

from saekit.boardgames.chess_model import chess_tokenizer
from saekit.boardgames.othello_model import othello_tokenizer
from saekit.boardgames.othello_tokens import CONTEXT, PAD
from saekit.boardgames.pgn import decode_pgn, random_chess_games
from saekit.errors import ConfigError
from saekit.sources.games import GamesConfig, game_tokens
from saekit.sources.spec import source_from_spec
from tests.track.tiny_checkpoints import SITE, write_checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return write_checkpoints(tmp_path_factory.mktemp("ckpts"), steps=(0, 3))


def test_game_tokens_are_the_complete_games_of_the_seed():
    tokenizer = othello_tokenizer()
    tokens = game_tokens(GamesConfig(n_games=300, seed=2), tokenizer)
    assert tokens.shape[1] == CONTEXT and 280 <= tokens.shape[0] <= 300 and not (tokens == PAD).any()
    assert torch.equal(tokens, game_tokens(GamesConfig(n_games=300, seed=2), tokenizer))
    assert not torch.equal(tokens[:50], game_tokens(GamesConfig(n_games=300, seed=3), tokenizer)[:50])


def test_chess_tokens_are_the_first_context_characters_of_the_seeds_games():
    pytest.importorskip("chess")
    tokens = game_tokens(GamesConfig(game="chess", n_games=6, seed=2), chess_tokenizer(40))
    games = random_chess_games(6, 2)
    assert tokens.shape == (6, 40) and tokens.dtype == torch.int64
    assert [decode_pgn(row.numpy()) for row in tokens] == [g[:40] for g in games]
    greedy = game_tokens(GamesConfig(game="chess", n_games=6, seed=2, player="greedy"), chess_tokenizer(40))
    assert [decode_pgn(row.numpy()) for row in greedy] == [g[:40] for g in random_chess_games(6, 2, player="greedy")]


def test_a_model_of_another_game_is_refused():
    with pytest.raises(ConfigError, match="game = 'chess'.*32.*not a model of chess"):
        game_tokens(GamesConfig(game="chess", n_games=2), othello_tokenizer())
    with pytest.raises(ConfigError, match="game = 'othello'.*not a model of othello"):
        game_tokens(GamesConfig(n_games=2), chess_tokenizer(40))


def test_every_checkpoint_sees_the_same_rows(checkpoints):
    spec = {"kind": "games", "sites": SITE, "n_games": 60, "chunk_seqs": 8}
    a = source_from_spec({**spec, "model": str(checkpoints / "step-0")})
    b = source_from_spec({**spec, "model": str(checkpoints / "step-3")})
    assert torch.equal(a.tokens, b.tokens) and a.skip_positions == 0  # a game has no BOS
    assert a.describe()["games"] == {"game": "othello", "n_games": 60, "seed": 0, "player": "random"}
    first_a, first_b = next(iter(a.batches(32, seed=5))), next(iter(b.batches(32, seed=5)))
    assert first_a[SITE].x.shape == (32, 16) and not torch.equal(first_a[SITE].x, first_b[SITE].x)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"corpus": "sotu"}, "unknown key 'corpus' for kind 'games'"),
        ({"game": "go"}, "'go' is not one of"),
        ({"game": "chess"}, "not a model of chess"),
        ({"player": "greedy"}, "player has no effect when the game is othello"),
        ({"n_games": 0}, "n_games must be a positive integer"),
    ],
)
def test_bad_games_settings_are_named(checkpoints, extra, words):
    with pytest.raises(ConfigError, match=words):
        source_from_spec({"kind": "games", "model": str(checkpoints / "step-0"), "sites": SITE, **extra})


def test_a_games_source_needs_its_model():
    with pytest.raises(ConfigError, match="needs a 'model'"):
        source_from_spec({"kind": "games", "sites": SITE})
