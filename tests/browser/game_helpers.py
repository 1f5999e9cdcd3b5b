"""A tiny Othello-GPT and a tiny chess GPT (built from a config, as the board-game tests build them), each
with a random SAE whose provenance says it was trained on the model's games, as ``kind = "games"``
writes it."""

from __future__ import annotations

from pathlib import Path

import torch

import saekit
from saekit.atomic import create_folder
from saekit.boardgames.chess_model import ChessModelConfig, build_chess_model, write_chess_model_folder
from saekit.boardgames.othello_model import OthelloModelConfig, build_model, write_model_folder

SITE = "layers.0.resid_post"
CHESS_CONTEXT = 48


def write_game_sae(root: Path, game: str, name: str = "sae") -> Path:
    """``root/<game>-model`` (a tiny model of ``game``) and ``root/<name>``, an SAE of 16 latents at its
    first layer trained (so says its provenance) on the model's games; returns the SAE folder."""
    model_dir = root / f"{game}-model"
    if not model_dir.exists():
        if game == "othello":
            model = build_model(OthelloModelConfig(layers=1, d_model=16, heads=2), seed=0)
            create_folder(model_dir, lambda tmp: write_model_folder(model, tmp))
        else:
            model = build_chess_model(ChessModelConfig(layers=1, d_model=16, heads=2, context=CHESS_CONTEXT), seed=0)
            create_folder(model_dir, lambda tmp: write_chess_model_folder(model, tmp))
    sae = saekit.build_sae("topk", d_in=16, d_sae=16, k=3, seed=1)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    sae.metadata.update(site=SITE)
    games = {"game": game, "n_games": 50, "seed": 0, **({"player": "random"} if game == "chess" else {})}
    return saekit.save_sae(sae, root / name, provenance={"data": {"kind": "model", "model": str(model_dir), "games": games, "sites": [SITE]}})
