"""The GPT-2 shape the board-game models share, and the checks of their configs.

A game model is transformers' ``GPT2LMHeadModel`` (saekit's sites know the ``gpt2`` family) with the
game's vocabulary and context as learned positions, no dropout (so training is a function of the seed
alone) and untied embeddings. Each game's config (``OthelloModelConfig``, ``ChessModelConfig``) holds
the shape and the schedule fields checked here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

POSITIVE = ("layers", "d_model", "heads", "steps", "batch_games", "eval_games", "save_every")
"""The fields every game config has that must be positive integers."""


def check_game_config(config: Any, positive: tuple[str, ...] = POSITIVE) -> None:
    """ValueError naming the first bad field of a game config (``from_dict`` names the config too)."""
    for name in positive:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if config.d_model % config.heads:
        raise ValueError(f"heads ({config.heads}) must divide d_model ({config.d_model})")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"lr must be a positive number, got {config.lr!r}")
    if not 0 <= config.warmup_steps <= config.steps:
        raise ValueError(f"warmup_steps must be in 0..steps ({config.steps}), got {config.warmup_steps}")
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise ValueError(f"weight_decay must be 0 or more, got {config.weight_decay!r}")
    if min(config.seed, config.eval_seed) < 0 or config.seed == config.eval_seed:
        raise ValueError(f"seed and eval_seed must be different non-negative integers, got {config.seed} and {config.eval_seed}")


def build_gpt(config: Any, *, vocab_size: int, context: int, pad_token_id: int | None, seed: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 of ``config``'s shape (layers, d_model, heads), weights drawn from ``seed``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt = GPT2Config(
        vocab_size=vocab_size, n_positions=context, n_embd=config.d_model, n_layer=config.layers, n_head=config.heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(gpt)
