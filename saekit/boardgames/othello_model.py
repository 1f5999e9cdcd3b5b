"""An Othello-GPT: the shape of a small GPT-2 that reads Othello move tokens, and its folder.

The model is transformers' ``GPT2LMHeadModel`` (saekit's sites know the ``gpt2`` family), with the
61-token vocabulary of :mod:`~saekit.boardgames.othello_tokens`, ``CONTEXT`` = 59 learned positions and
no dropout (so training is a function of the seed alone). It reads a game's first 59 moves and is
trained to predict each next one. No BOS token: position 0 holds the first move.

A model folder is a plain Hugging Face folder (``config.json``, ``model.safetensors``) with a
word-level tokenizer whose words are the square names (``"<pad>"`` then ``"a1"``... in token order), so
``saekit.load_model(folder)`` and every path built on it (hooks, cache, SAE training, the browser)
work on it; the text of a game is its squares separated by spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from saekit.boardgames.game_model import build_gpt, check_game_config
from saekit.boardgames.othello import square_name
from saekit.boardgames.othello_tokens import CONTEXT, PAD, PLAYABLE, VOCAB_SIZE

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

PAD_WORD = "<pad>"


@dataclass(frozen=True)
class OthelloModelConfig:
    """What ``saekit games othello-model`` trains: the model's shape and the training schedule."""

    layers: int = 4
    """Transformer blocks."""
    d_model: int = 128
    """Width of the residual stream."""
    heads: int = 4
    """Attention heads per block; must divide d_model."""
    steps: int = 3800
    """Optimiser steps; each reads ``batch_games`` games never seen before."""
    batch_games: int = 64
    """Games per step (59 next-move predictions each, fewer for the 1% of games that end early)."""
    lr: float = 2e-3
    """Peak learning rate of AdamW, reached after ``warmup_steps`` and decayed by a cosine to ``lr / 10``."""
    warmup_steps: int = 200
    """Steps of linear warm-up from 0 to ``lr``."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay (on matrices only, not biases, norms or embeddings' positions)."""
    seed: int = 0
    """Seeds the initial weights and the stream of training games (games ``step · batch_games`` onwards)."""
    eval_seed: int = 1
    """Seed of the held-out games the legal-move accuracy is measured on; must differ from ``seed``."""
    eval_games: int = 2000
    """Held-out games for the legal-move accuracy."""
    save_every: int = 100
    """Steps between resume states (the log-spaced checkpoints are kept besides)."""

    def __post_init__(self) -> None:
        check_game_config(self)


def build_model(config: OthelloModelConfig, *, seed: int | None = None) -> GPT2LMHeadModel:
    """A freshly initialised model of ``config``'s shape; weights drawn from ``seed`` (default: config.seed)."""
    return build_gpt(config, vocab_size=VOCAB_SIZE, context=CONTEXT, pad_token_id=PAD, seed=config.seed if seed is None else seed)


def othello_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer of the 61 tokens: ``"<pad>"`` is 0, square names (``"a1"``...) are 1..60."""
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD_WORD: PAD} | {square_name(int(s)): i + 1 for i, s in enumerate(PLAYABLE)}
    inner = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=PAD_WORD))
    inner.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=inner, pad_token=PAD_WORD, unk_token=PAD_WORD, model_max_length=CONTEXT)


def write_model_folder(model: GPT2LMHeadModel, folder: Path) -> None:
    """Fill the empty ``folder`` with the model and its tokenizer (a ``fill`` for saekit.atomic)."""
    model.save_pretrained(folder)
    othello_tokenizer().save_pretrained(folder)
