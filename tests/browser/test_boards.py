"""The board panel's data: the boards at each position equal the engines' (the scalar Othello rules, the
chess package on the PGN prefix), and a latent's best property is the one it tracks."""

import re

import numpy as np
import pytest
import torch

from saekit.boardgames.chess_properties import PIECES
from saekit.boardgames.othello import BLACK, WHITE, play_game
from saekit.boardgames.othello_games import random_games
from saekit.boardgames.othello_tokens import decode_tokens, encode_moves
from saekit.boardgames.pgn import chess_module, decode_pgn, encode_pgn, random_chess_games
from saekit.browser.boards import POSITIONS, board_states, boards_of, panel_entry, square_of
from saekit.errors import ConfigError


def othello_tokens(n: int = 6) -> torch.Tensor:
    tokens = encode_moves(random_games(n, seed=3).moves)
    return torch.from_numpy(tokens[(tokens != 0).all(axis=1)].astype(np.int64))


def chess_tokens(n: int = 4, context: int = 40) -> torch.Tensor:
    games = [g for g in random_chess_games(n, seed=2, max_plies=20) if len(g) >= context]
    return torch.from_numpy(np.stack([encode_pgn(g[:context]) for g in games]).astype(np.int64))


def othello_board(moves: np.ndarray) -> np.ndarray:
    """The scalar engine's board after ``moves``, as the panel codes it (0 empty, 1 black, 2 white)."""
    cells = play_game(int(m) for m in moves).cells
    return np.where(cells == BLACK, 1, np.where(cells == WHITE, 2, 0))


def chess_board(prefix: str) -> tuple[np.ndarray, int, bool]:
    """The chess package's board after the moves a character sees (one per space in ``prefix``, the
    move numbers stripped from the SANs), the square the last one landed on, and whether white moves."""
    lib = chess_module()
    board, landed = lib.Board(), -1
    for san in [re.sub(r"^\d+\.", "", w) for w in prefix[1:].split(" ")][: prefix.count(" ")]:
        landed = board.push_san(san).to_square
    pieces = np.full(64, PIECES.index("empty"))
    for square, piece in board.piece_map().items():
        colour = "white" if piece.color else "black"
        pieces[square] = PIECES.index(f"{colour}_{lib.piece_name(piece.piece_type)}")
    return pieces, landed, board.turn == lib.WHITE


def test_othello_boards_are_the_engines_after_each_move():
    tokens = othello_tokens()
    states = board_states("othello", tokens)
    moves = decode_tokens(tokens.numpy())
    context = tokens.shape[1]
    for row in (0, 1, 17, context - 1, context + 30, tokens.numel() - 1):
        game, ply = divmod(row, context)
        assert states.squares[row].tolist() == othello_board(moves[game, : ply + 1]).tolist()
        assert states.played[row] == moves[game, ply]
        assert states.first_to_move[row] == (play_game(int(m) for m in moves[game, : ply + 1]).to_move == BLACK)
    assert len(states.names) == 192 and states.properties.shape == (tokens.numel(), 192)


def test_chess_boards_are_the_chess_packages_on_the_pgn_prefix():
    tokens = chess_tokens()
    states = board_states("chess", tokens)
    context = tokens.shape[1]
    for row in range(tokens.numel()):
        game, index = divmod(row, context)
        pieces, landed, white = chess_board(decode_pgn(tokens[game].numpy())[: index + 1])
        assert states.squares[row].tolist() == pieces.tolist(), row
        assert (int(states.played[row]), bool(states.first_to_move[row])) == (landed, white), row
    assert states.names[-6:] == ("in_check", "any_pin", "can_castle", "can_castle_kingside", "can_castle_queenside", "legal_en_passant")


def test_a_latent_firing_exactly_where_d3_is_mine_has_best_property_d3_mine():
    tokens = othello_tokens(40)
    states = board_states("othello", tokens)
    column = states.names.index("d3_mine")
    held = states.properties[:, column]
    rng = np.random.default_rng(0)
    codes = np.stack([held * (1 + rng.random(len(held))), np.zeros(len(held)), rng.random(len(held))], axis=1).astype(np.float32)
    top = torch.from_numpy(np.argsort(-codes, axis=0, kind="stable")[:8].T.copy())
    top[1] = -1  # latent 1 never fires: no top positions
    boards = boards_of("othello", states, codes, top)
    r = boards.records
    assert boards.names[r["best"][0]] == "d3_mine" and r["f1"][0] == pytest.approx(1.0)
    assert r["best"][1] == -1 and r["f1"][1] == 0 and (r["rows"][1] == -1).all() and (r["played"][1] == -1).all()
    assert r["f1"][2] < 0.9  # noise tracks nothing well
    assert r["rows"].shape == (3, POSITIONS) and r["rows"][0].tolist() == top[0, :POSITIONS].tolist()
    for k, row in enumerate(r["rows"][0]):  # each top position's board is the one at that row, and d3 is mine there
        assert r["squares"][0, k].tolist() == states.squares[row].tolist()
        mover = 1 if r["first_to_move"][0, k] else 2
        assert r["squares"][0, k, square_of("d3_mine")] == mover


def test_the_panel_entry_marks_each_propertys_square():
    assert [square_of(n) for n in ("a1_mine", "d3_theirs", "h8_white_king", "in_check")] == [0, 19, 63, -1]
    tokens = othello_tokens(2)
    states = board_states("othello", tokens)
    codes = np.ones((tokens.numel(), 1), np.float32)
    entry = panel_entry(boards_of("othello", states, codes, torch.zeros(1, 1, dtype=torch.int64)), "boards.bin")
    assert entry["kind"] == "board" and entry["game"] == "othello"
    assert entry["marks"][entry["properties"].index("d3_mine")] == 19
    assert ["played", "i1", entry["record_size"] - 2 * POSITIONS, POSITIONS] in entry["fields"]


def test_an_unknown_game_is_refused_by_name():
    with pytest.raises(ConfigError, match="unknown game 'go'.*othello, chess"):
        board_states("go", othello_tokens(1))
