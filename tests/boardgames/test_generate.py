"""`generate_games`: the seed's games in one file, written block by block, resumed where a run stopped,
never over an existing file, and only with the settings of the blocks already written."""

import dataclasses

import numpy as np
import pytest

from saekit.boardgames import generate
from saekit.boardgames.generate import GenerateConfig, generate_games, read_games
from saekit.boardgames.othello_games import random_games
from saekit.boardgames.pgn import random_chess_games
from saekit.errors import ConfigError, DataError
from saekit.strict import from_dict


def test_othello_games_are_the_seeds_games_as_squares(tmp_path):
    done = generate_games(GenerateConfig("othello", 5000, seed=3), tmp_path / "o.npy", progress=False)
    moves = read_games(tmp_path / "o.npy")
    assert isinstance(moves, np.ndarray) and moves.dtype == np.int8 and moves.shape == (5000, 60)
    assert np.array_equal(moves, random_games(5000, 3).moves)
    assert done.games == done.generated == 5000 and not (tmp_path / "o.npy.parts").exists()


def test_chess_games_are_the_seeds_games_one_a_line(tmp_path, monkeypatch):
    pytest.importorskip("chess")
    monkeypatch.setattr(generate, "CHESS_BLOCK", 3)
    config = GenerateConfig("chess", 7, seed=2, player="greedy", max_plies=30)
    generate_games(config, tmp_path / "c.txt", progress=False)
    assert read_games(tmp_path / "c.txt") == random_chess_games(7, 2, player="greedy", max_plies=30)


def test_a_stopped_run_resumes_with_the_blocks_it_wrote(tmp_path, monkeypatch):
    pytest.importorskip("chess")
    monkeypatch.setattr(generate, "CHESS_BLOCK", 2)
    config = GenerateConfig("chess", 5, seed=1, max_plies=20)
    calls = []
    real = generate._write_block

    def stops_after_two(config, path, start, count):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(start)
        real(config, path, start, count)

    monkeypatch.setattr(generate, "_write_block", stops_after_two)
    with pytest.raises(KeyboardInterrupt):
        generate_games(config, tmp_path / "c.txt", progress=False)
    assert not (tmp_path / "c.txt").exists() and calls == [0, 2]
    monkeypatch.setattr(generate, "_write_block", real)
    done = generate_games(config, tmp_path / "c.txt", progress=False)
    assert done.generated == 1 and read_games(tmp_path / "c.txt") == random_chess_games(5, 1, max_plies=20)


def test_other_settings_than_the_blocks_are_refused_by_name(tmp_path, monkeypatch):
    config = GenerateConfig("othello", 10)
    generate._claim(tmp_path / "o.npy.parts", config)
    with pytest.raises(ConfigError, match=r"holds the blocks of other settings \(n = 10 there, 20 now, seed = 0 there, 1 now\)"):
        generate_games(dataclasses.replace(config, n=20, seed=1), tmp_path / "o.npy", progress=False)


def test_an_existing_file_is_never_written_over(tmp_path):
    (tmp_path / "o.npy").write_bytes(b"keep")
    with pytest.raises(ConfigError, match="already exists; games are never written over"):
        generate_games(GenerateConfig("othello", 10), tmp_path / "o.npy", progress=False)
    assert (tmp_path / "o.npy").read_bytes() == b"keep"


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"game": "go", "n": 1}, "game must be one of othello, chess"),
        ({"game": "othello", "n": 0}, "n must be a positive integer"),
        ({"game": "othello", "n": 5, "player": "greedy"}, "player has no effect when the game is othello"),
        ({"game": "chess", "n": 5, "player": "engine"}, "player must be one of random, greedy"),
        ({"game": "chess", "n": 5, "max_plies": 0}, "max_plies must be a positive integer"),
    ],
)
def test_bad_settings_are_named(values, words):
    with pytest.raises(ConfigError, match=words):
        from_dict(GenerateConfig, values, where="generate")


def test_a_file_that_is_not_othello_games_is_named(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((3, 60), dtype=np.float32))
    with pytest.raises(DataError, match="not a file of Othello games"):
        read_games(tmp_path / "f.npy")
    (tmp_path / "t.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="t.npy"):
        read_games(tmp_path / "t.npy")
    with pytest.raises(DataError, match="cannot read the chess games"):
        read_games(tmp_path / "missing.txt")
