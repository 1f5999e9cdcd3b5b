"""A chess GPT: a small GPT-2 that reads chess game strings character by character, and its folder.

The shape is :mod:`~saekit.boardgames.game_model`'s, with the 32 characters of
:mod:`~saekit.boardgames.pgn` as the vocabulary (as chess_llm_interpretability's models read games) and
``context`` learned positions. It reads the first ``context`` characters of a game string (``;`` first,
which stands where a BOS token would) and is trained to predict each next character.

A model folder is a plain Hugging Face folder with a character-level tokenizer (each character one
token, ids as :data:`~saekit.boardgames.pgn.VOCAB`), so ``saekit.load_model(folder)`` and every path
built on it (hooks, cache, SAE training) work on it. There is no padding token: a game shorter than the
context is never a row of the study's data, and in training its tail is not predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from saekit.boardgames.game_model import build_gpt, check_game_config
from saekit.boardgames.pgn import PLAYERS, VOCAB, plies_to_fill

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast


@dataclass(frozen=True)
class ChessModelConfig:
    """What ``saekit games chess-model`` trains: the model's shape, its games and the training schedule."""

    layers: int = 4
    """Transformer blocks."""
    d_model: int = 96
    """Width of the residual stream."""
    heads: int = 4
    """Attention heads per block; must divide d_model."""
    context: int = 192
    """Characters read: a game's first ``context`` characters, each next one predicted."""
    player: str = "random"
    """Who plays the training and held-out games: "random" (uniform legal moves) or "greedy" (mates in
    one, else takes the most valuable piece, else random); see pgn.random_chess_games."""
    steps: int = 2000
    """Optimiser steps; each reads ``batch_games`` games never seen before."""
    batch_games: int = 32
    """Games per step (``context`` next-character predictions each)."""
    lr: float = 2e-3
    """Peak learning rate of AdamW, reached after ``warmup_steps`` and decayed by a cosine to ``lr / 10``."""
    warmup_steps: int = 100
    """Steps of linear warm-up from 0 to ``lr``."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay (on matrices only, not biases or norms)."""
    seed: int = 0
    """Seeds the initial weights and the stream of training games (games ``step · batch_games`` onwards)."""
    eval_seed: int = 1
    """Seed of the held-out games the legal-move accuracy is measured on; must differ from ``seed``."""
    eval_games: int = 100
    """Held-out games for the legal-move accuracy (every move that starts in the context is scored)."""
    save_every: int = 100
    """Steps between resume states (the log-spaced checkpoints are kept besides)."""

    def __post_init__(self) -> None:
        check_game_config(self, ("context", "layers", "d_model", "heads", "steps", "batch_games", "eval_games", "save_every"))
        if self.context < 16:
            raise ValueError(f"context must be at least 16 characters, got {self.context}")
        if self.player not in PLAYERS:
            raise ValueError(f"player must be one of {', '.join(PLAYERS)}, got {self.player!r}")

    @property
    def max_plies(self) -> int:
        """Plies a game is played for: enough to fill ``context + 1`` characters, no more."""
        return plies_to_fill(self.context + 1)


def build_chess_model(config: ChessModelConfig, *, seed: int | None = None) -> GPT2LMHeadModel:
    """A freshly initialised model of ``config``'s shape; weights drawn from ``seed`` (default: config.seed)."""
    return build_gpt(config, vocab_size=len(VOCAB), context=config.context, pad_token_id=None, seed=config.seed if seed is None else seed)


def chess_tokenizer(context: int) -> PreTrainedTokenizerFast:
    """Character-level tokenizer over :data:`VOCAB` (id = index); decoding joins the characters. A
    character outside the vocabulary reads as ``;`` (encode_pgn refuses it instead)."""
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    inner = tokenizers.Tokenizer(tokenizers.models.WordLevel({char: i for i, char in enumerate(VOCAB)}, unk_token=";"))
    inner.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
    inner.decoder = tokenizers.decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=inner, model_max_length=context)


def write_chess_model_folder(model: GPT2LMHeadModel, folder: Path) -> None:
    """Fill the empty ``folder`` with the model and its tokenizer (a ``fill`` for saekit.atomic)."""
    model.save_pretrained(folder)
    chess_tokenizer(model.config.n_positions).save_pretrained(folder)
