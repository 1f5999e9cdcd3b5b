"""A tiny random Llama with a word-level tokenizer (and one for the first-letter task): the real transformers classes, built from a
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


LETTERS = "abcdefghijklmnopqrstuvwxyz"


def letter_llama() -> tuple["transformers.LlamaForCausalLM", "transformers.PreTrainedTokenizerFast", torch.Tensor]:
    """For the first-letter task: a byte-level word tokenizer with 6 words per letter (a space, then
    letters: " aab", " zoz") and the words of "has the first letter:", and a one-layer LLaMA whose word
    embeddings are their first letter's direction (returned, [26, 32]) times 3 plus noise."""
    words = [f"{c}{s}" for c in LETTERS for s in ("ab", "ol", "um", "er", "ix", "oz")]
    scaffold = ["<bos>", "<eos>", "<unk>", "Ċ", "Ġhas", "Ġthe", "Ġfirst", "Ġletter", ":"] + [f"Ġ{c.upper()}" for c in LETTERS]
    vocab = {t: i for i, t in enumerate(scaffold + [f"Ġ{w}" for w in words])}
    inner = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    inner.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = tokenizers.decoders.ByteLevel()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=inner, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    letter_dirs = torch.randn(26, 32)
    with torch.no_grad():
        for w in words:
            model.model.embed_tokens.weight[vocab[f"Ġ{w}"]] = 3 * letter_dirs[LETTERS.index(w[0])] + 0.3 * torch.randn(32)
    return model, tok, letter_dirs
