"""A tiny suite for the browser tests: a random Llama whose vocabulary holds an HTML-injection token,
a corpus that uses it, and two random SAEs at two of its sites."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_lm import tiny_llama, tiny_tokenizer

import saekit
from saekit.browser import BrowserConfig

EVIL = "<script>alert(1)</script>"
"""A token whose text must show as text on every page."""


def write_model(dest: Path) -> Path:
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens([EVIL])
    model = tiny_llama()
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():  # a clear unembedding row, so a latent can promote the token above all others
        head = model.get_output_embeddings().weight
        head[-1] = torch.randn(head.shape[1], generator=torch.Generator().manual_seed(5)) * 0.1
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    texts = [
        f"the cat sat on a mat {EVIL} and the dog ran to see it",
        f"a dog sat on the mat and a cat ran to it {EVIL}",
        "see the cat and the dog sat on a mat",
        f"the dog ran and {EVIL} the cat sat to see a mat",
    ]
    for i in range(6):
        for j, text in enumerate(texts):
            (folder / f"doc{i}-{j}.txt").write_text(" ".join([text] * (1 + (i + j) % 3)))
    return folder


def write_suite(folder: Path, model_dir: Path) -> Path:
    """Two random SAEs; latent 0 of each writes the unembedding row of EVIL, so it promotes that token."""
    lm = saekit.load_model(model_dir)
    evil_row = lm.model.get_output_embeddings().weight[lm.tokenizer.convert_tokens_to_ids(EVIL)].detach()
    saes = {}
    for name, arch, site, extra in (
        ("L0-topk", "topk", "layers.0.resid_post", {"k": 4}),
        ("L1-relu", "relu", "layers.1.resid_post", {}),
    ):
        sae = saekit.build_sae(arch, d_in=16, d_sae=24, seed=3, **extra)
        with torch.no_grad():
            sae.b_enc.fill_(0.05)  # some latents fire often, some rarely
            sae.W_dec[0] = evil_row / evil_row.norm()
        sae.metadata.update(site=site, model=str(model_dir))
        saes[name] = sae
    return saekit.save_suite(saes, folder)


def tiny_config(model_dir: Path, corpus: Path, n_tokens: int = 512) -> BrowserConfig:
    return BrowserConfig(
        model=str(model_dir),
        corpus=str(corpus),
        n_tokens=n_tokens,
        context_size=16,
        skip_positions=1,
        batch_size=50,
        forward_batch=8,
    )


def tiny_setup(root: Path) -> tuple[Path, BrowserConfig]:
    """(suite folder, config) of a fresh tiny suite under ``root``."""
    model_dir = write_model(root / "model")
    corpus = write_corpus(root / "corpus")
    return write_suite(root / "suite", model_dir), tiny_config(model_dir, corpus)
