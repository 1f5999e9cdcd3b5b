"""kind = "games": a board-game model's activations on seeded random games, the same tokens for every model."""

from __future__ import annotations

import pytest
import torch

from saekit.boardgames.othello_tokens import CONTEXT, PAD
from saekit.errors import ConfigError
from saekit.sources.games import GamesConfig, game_tokens
from saekit.sources.spec import source_from_spec
from tests.track.tiny_checkpoints import SITE, write_checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return write_checkpoints(tmp_path_factory.mktemp("ckpts"), steps=(0, 3))


def test_game_tokens_are_the_complete_games_of_the_seed():
    tokens = game_tokens(GamesConfig(n_games=300, seed=2))
    assert tokens.shape[1] == CONTEXT and 280 <= tokens.shape[0] <= 300 and not (tokens == PAD).any()
    assert torch.equal(tokens, game_tokens(GamesConfig(n_games=300, seed=2)))
    assert not torch.equal(tokens[:50], game_tokens(GamesConfig(n_games=300, seed=3))[:50])


def test_every_checkpoint_sees_the_same_rows(checkpoints):
    spec = {"kind": "games", "sites": SITE, "n_games": 60, "chunk_seqs": 8}
    a = source_from_spec({**spec, "model": str(checkpoints / "step-0")})
    b = source_from_spec({**spec, "model": str(checkpoints / "step-3")})
    assert torch.equal(a.tokens, b.tokens) and a.skip_positions == 0  # a game has no BOS
    assert a.describe()["games"] == {"game": "othello", "n_games": 60, "seed": 0}
    first_a, first_b = next(iter(a.batches(32, seed=5))), next(iter(b.batches(32, seed=5)))
    assert first_a[SITE].x.shape == (32, 16) and not torch.equal(first_a[SITE].x, first_b[SITE].x)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"corpus": "sotu"}, "unknown key 'corpus' for kind 'games'"),
        ({"game": "chess"}, "'chess' is not one of"),
        ({"n_games": 0}, "n_games must be a positive integer"),
    ],
)
def test_bad_games_settings_are_named(checkpoints, extra, words):
    with pytest.raises(ConfigError, match=words):
        source_from_spec({"kind": "games", "model": str(checkpoints / "step-0"), "sites": SITE, **extra})


def test_a_games_source_needs_its_model():
    with pytest.raises(ConfigError, match="needs a 'model'"):
        source_from_spec({"kind": "games", "sites": SITE})
