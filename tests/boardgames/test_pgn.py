"""Chess game strings: the reference format and vocabulary, seeded players, and the character ids."""

import sys

import numpy as np
import pytest

chess = pytest.importorskip("chess")

from saekit.boardgames import pgn  # noqa: E402
from saekit.boardgames.pgn import (  # noqa: E402
    VOCAB,
    chess_module,
    complete_moves,
    decode_pgn,
    encode_pgn,
    random_chess_games,
    write_game,
)
from saekit.errors import ConfigError, DataError  # noqa: E402


def test_the_vocabulary_is_the_reference_models_meta():
    # chess_llm_interpretability's meta.pkl: ' ' 0, '#' 1, '+' 2, '-' 3, '.' 4, '0'..'9' 5..14, ';' 15, '=' 16,
    # 'B' 17, 'K' 18, 'N' 19, 'O' 20, 'Q' 21, 'R' 22, 'a'..'h' 23..30, 'x' 31
    assert len(VOCAB) == 32 and list(VOCAB) == sorted(VOCAB)
    assert encode_pgn(" #.09;=BOax").tolist() == [0, 1, 4, 5, 14, 15, 16, 17, 20, 23, 31]


def test_the_game_format():
    assert write_game(["e4", "e5", "Nf3"]) == ";1.e4 e5 2.Nf3"
    assert complete_moves(";1.e4 e5 2.Nf3 Nc6 3.B") == ["e4", "e5", "Nf3", "Nc6"]
    assert complete_moves(";1.e4") == []
    with pytest.raises(DataError, match="starts with ';'"):
        complete_moves("1.e4 e5 ")


def test_random_games_are_seeded_per_game_legal_and_in_the_vocabulary():
    games = random_chess_games(4, seed=7, max_plies=60)
    assert random_chess_games(2, seed=7, max_plies=60) == games[:2]
    assert random_chess_games(2, seed=8, max_plies=60) != games[:2]
    for text in games:
        assert decode_pgn(encode_pgn(text)) == text
        board = chess.Board()
        for san in complete_moves(text + " "):
            board.push_san(san)
        assert len(board.move_stack) == 60 or board.is_game_over()
    greedy = random_chess_games(3, seed=7, player="greedy", max_plies=400)
    for text in greedy:
        board = chess.Board()
        for san in complete_moves(text + " "):
            board.push_san(san)
        assert len(board.move_stack) == 400 or board.is_game_over()


def test_the_greedy_player_mates_in_one_and_takes_the_biggest_piece():
    import random

    board = chess.Board()
    for san in ["f3", "e5", "g4"]:
        board.push_san(san)
    move = pgn._greedy(board, list(board.legal_moves), random.Random(0))
    assert board.san(move) == "Qh4#"
    board = chess.Board("4k3/8/8/3q1n2/4P3/8/8/4K3 w - - 0 1")  # e4 takes the queen (d5) or the knight (f5)
    move = pgn._greedy(board, list(board.legal_moves), random.Random(0))
    assert board.san(move) == "exd5"


def test_bad_characters_ids_and_settings_are_refused():
    with pytest.raises(DataError, match=r"character '\*' at 6"):
        encode_pgn(";1.e4 *")
    with pytest.raises(DataError, match="must be a string, got bytes"):
        encode_pgn(b";1.e4")
    with pytest.raises(DataError, match="0..31"):
        decode_pgn(np.array([32]))
    with pytest.raises(ConfigError, match="player must be one of random, greedy"):
        random_chess_games(1, 0, player="stockfish")
    with pytest.raises(ConfigError, match="max_plies"):
        random_chess_games(1, 0, max_plies=-1)


def test_without_the_chess_package_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "chess", None)
    with pytest.raises(ConfigError, match=r"pip install 'saekit\[boardgames\]'"):
        chess_module()
