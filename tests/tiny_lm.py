"""A tiny random Llama with a word-level tokenizer: the real transformers classes, built from a
config in milliseconds, for tests that need a model folder (no download, no mock)."""

from pathlib import Path

import tokenizers
import torch
import transformers

WORDS = "the cat sat on a mat and dog ran to see it".split()


def tiny_tokenizer() -> "transformers.PreTrainedTokenizerFast":
    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    inner = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=inner, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def tiny_llama() -> "transformers.LlamaForCausalLM":
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(WORDS) + 3, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def write_tiny_model(dest: Path) -> None:
    tiny_llama().save_pretrained(dest)
    tiny_tokenizer().save_pretrained(dest)


TINY_CORPUS = [
    "the cat sat on a mat and the dog ran to see it",
    "a dog sat on the mat and a cat ran to it",
    "see the cat and the dog sat on a mat",
    "the dog ran and the cat sat to see a mat",
]


def write_tiny_corpus(folder: Path, repeats: int = 6) -> Path:
    """A folder of .txt documents in the tiny vocabulary."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(repeats):
        for j, text in enumerate(TINY_CORPUS):
            (folder / f"doc{i:02d}-{j}.txt").write_text(" ".join([text] * (1 + (i + j) % 3)))
    return folder
