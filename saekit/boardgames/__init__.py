"""Board games (Othello, chess) and the board-game paper's supervised SAE metrics.

Othello: ``OthelloBoard`` the rules one game at a time; ``random_games`` games of uniformly random legal
moves, generated in bulk; ``replay`` the positions of given games; ``encode_moves`` / ``decode_tokens``
the 61-token vocabulary; ``othello_properties`` the board-state properties. Chess (needs the ``chess``
package): ``random_chess_games`` game strings from seeded players; ``encode_pgn`` / ``decode_pgn`` the
32-character vocabulary; ``chess_properties``. ``generate_games`` writes seeded games of either to a file
(``read_games`` reads it). Models, trained by one loop (game_train): ``train_othello_model`` trains an
Othello-GPT (``OthelloModelConfig``) into a Hugging Face folder, ``legal_move_accuracy`` scores it;
``train_chess_model`` a character-level chess GPT (``ChessModelConfig``), ``chess_legal_move_accuracy``
the legality of its greedy moves. Metrics:
``coverage``, ``latent_best`` (each latent's best property) and ``board_reconstruction`` on SAE codes and a ``PropertyTable``'s values. See
docs/boardgames.md.
"""

from saekit.boardgames.board_metrics import Coverage, LatentBest, Reconstruction, board_reconstruction, coverage, latent_best
from saekit.boardgames.chess_eval import chess_legal_move_accuracy
from saekit.boardgames.chess_model import ChessModelConfig
from saekit.boardgames.chess_properties import chess_properties
from saekit.boardgames.chess_train import train_chess_model
from saekit.boardgames.generate import GenerateConfig, generate_games, read_games
from saekit.boardgames.othello import OthelloBoard, play_game, square_index, square_name
from saekit.boardgames.othello_eval import LegalMoveAccuracy, legal_move_accuracy
from saekit.boardgames.othello_games import OthelloGames, Replay, random_games, replay
from saekit.boardgames.othello_model import OthelloModelConfig
from saekit.boardgames.othello_properties import othello_properties
from saekit.boardgames.othello_tokens import decode_tokens, encode_moves
from saekit.boardgames.othello_train import train_othello_model
from saekit.boardgames.pgn import decode_pgn, encode_pgn, random_chess_games
from saekit.boardgames.properties import PropertyTable, join, square_groups

__all__ = [
    "ChessModelConfig",
    "Coverage",
    "GenerateConfig",
    "LatentBest",
    "LegalMoveAccuracy",
    "OthelloBoard",
    "OthelloGames",
    "OthelloModelConfig",
    "PropertyTable",
    "Reconstruction",
    "Replay",
    "board_reconstruction",
    "chess_legal_move_accuracy",
    "chess_properties",
    "coverage",
    "decode_pgn",
    "decode_tokens",
    "encode_moves",
    "encode_pgn",
    "generate_games",
    "join",
    "latent_best",
    "legal_move_accuracy",
    "othello_properties",
    "play_game",
    "random_chess_games",
    "random_games",
    "read_games",
    "replay",
    "square_groups",
    "square_index",
    "square_name",
    "train_chess_model",
    "train_othello_model",
]
