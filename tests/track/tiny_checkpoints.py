"""Training checkpoints of a tiny Othello-GPT, written as `saekit games othello-model` writes them: the
model at step ``s`` moves from one random initialisation towards another and its embeddings grow, so
that both the directions and the scale of its activations change along the series."""

from __future__ import annotations

from pathlib import Path

import torch

from saekit.atomic import create_folder
from saekit.boardgames.othello_model import OthelloModelConfig, build_model, write_model_folder

TINY = OthelloModelConfig(layers=1, d_model=16, heads=2)
SITE = "layers.0.resid_post"


def write_checkpoints(folder: Path, steps: tuple[int, ...] = (0, 1, 4)) -> Path:
    """``folder/step-<s>/`` for each of ``steps``; returns ``folder``."""
    start, end = build_model(TINY, seed=0), build_model(TINY, seed=1)
    last = max(steps)
    for step in steps:
        model = build_model(TINY, seed=0)
        t = step / last
        with torch.no_grad():
            for p, a, b in zip(model.parameters(), start.parameters(), end.parameters()):
                p.copy_((1 - t) * a + t * b)
            model.transformer.wte.weight.mul_(1 + 3 * t)
        create_folder(folder / f"step-{step}", lambda tmp, m=model: write_model_folder(m, tmp))
    return folder


def track_toml(checkpoints: Path, out: Path, *, extra: str = "", sae: str = 'architecture = "topk"\nd_sae = 32\nk = 4') -> str:
    return f"""
out = "{out}"
[track]
checkpoint_folder = "{checkpoints}"
steps = 6
analysis_contexts = 8
top_k = 5
random_tokens = 20
trajectories = 2
{extra}
[data]
kind = "games"
sites = ["{SITE}"]
n_games = 40
[train]
steps = 12
batch_size = 64
norm_estimation_tokens = 128
progress = false
log_every = 2
device = "cpu"
[[sae]]
{sae}
"""
