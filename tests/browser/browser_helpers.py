"""A tiny suite for the browser tests: a random Llama whose vocabulary holds an HTML-injection token,
a corpus that uses it, and two random SAEs at two of its sites; and, without any model, the browser
data of a small random SAE (:func:`tiny_data`) for the tests of pages, cache, export and server; and
the dynamics of a series as ``saekit track`` saves them (:func:`tiny_dynamics`), made directly."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_lm import tiny_llama, tiny_tokenizer

import saekit
from saekit.browser import Browser, BrowserConfig, SaeData
from saekit.browser.effects import logit_effects, nearest_latents
from saekit.browser.meta import SaeInfo, Sample
from saekit.browser.stats import Layout, StatsSettings, compute_latent_stats
from saekit.track.measure import SAEDynamics

EVIL = "<script>alert(1)</script>"
"""A token whose text must show as text on every page."""

HOSTILE = '<meta http-equiv="refresh" content="0;url=http://evil"></script><script>alert(1)</script><!--'
"""A string that, put into a page raw, redirects it, closes a script element and opens a new one, and
opens a comment."""
RAW_MARKUP = ('<meta http-equiv="refresh"', "<script>alert", "</script><script>", "<!--")
"""What a page must never contain once HOSTILE went through it."""


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


def tiny_data(name: str = "tiny", d_sae: int = 6, vocab_size: int = 12) -> SaeData:
    """The browser data of a random ReLU-like SAE over random activations: 4 contexts of 8 tokens, the
    first position skipped; token 0 reads EVIL."""
    g = torch.Generator().manual_seed(0)
    layout = Layout(context=8, skip=1)
    tokens = torch.randint(0, vocab_size, (4, layout.context), generator=g)
    acts = torch.randn(4 * layout.per_context, 5, generator=g)
    W_enc, W_dec = torch.randn(5, d_sae, generator=g), torch.randn(d_sae, 5, generator=g)
    settings = StatsSettings(top_n=3, quantile_bands=2, per_band=2, reservoir=4, window_before=2, window_after=1, histogram_bins=5)
    stats = compute_latent_stats(lambda x: torch.relu(x @ W_enc), acts, d_sae, layout, settings, batch_size=16)
    sample = Sample("corpus", "train", stats.n_rows, 4, layout.context, layout.skip, 1.5, 0.0)
    info = SaeInfo("relu", "layers.0.resid_post", 5, d_sae, sample, {"l1_coef": 0.1, "betas": [0.9, 0.999]},
                   "direct path", "tiny-model", {"train mse": 0.5, "train tokens": 1000})  # fmt: skip
    vocab = {i: EVIL if i == 0 else f"t{i}" for i in range(vocab_size)}
    effects = logit_effects(W_dec, torch.randn(vocab_size, 5, generator=g), None, 3)
    return SaeData(name, info, stats, effects, nearest_latents(W_dec, 2), tokens, layout, vocab, settings.window_before)


def tiny_browser(root: Path, title: str = "suite") -> Browser:
    return Browser(root, title, {"tiny": tiny_data()})


CHECKPOINTS = ["step-0", "step-200", "step-1000"]


def tiny_dynamics(name: str = "L0-topk", site: str = "layers.0.resid_post", d_sae: int = 24) -> SAEDynamics:
    """Dynamics over CHECKPOINTS: latent i formed at checkpoint i % 4 - 1 (-1: never), has token purity
    (i % 4) / 4 and drift i / d_sae at the first checkpoint; latent 5 is dead (NaN curves and purity)."""
    n = len(CHECKPOINTS)
    latents = torch.arange(d_sae, dtype=torch.float32)
    drift = torch.stack([latents / d_sae, (latents / d_sae + 1) / 2, torch.ones(d_sae)])
    progress = torch.stack([torch.zeros(d_sae), latents / (2 * d_sae), latents / d_sae])
    progress[:, 5] = drift[:, 5] = float("nan")
    purity = (latents % 4) / 4
    purity[5] = float("nan")
    return SAEDynamics(
        name=name, site=site, checkpoints=list(CHECKPOINTS), steps=[0, 200, 1000], model_loss=[5.0, 3.0, 2.0],
        fvu=[0.5, 0.3, 0.2], l0=[8.0, 6.0, 5.0], drift_to_final=drift, drift_to_previous=drift.clone(),
        progress_cosine=progress, progress_wjaccard=progress / 2, progress_activations=progress / 3,
        alive=latents != 5, formation=torch.arange(d_sae) % (n + 1) - 1, token_purity=purity,
        trajectory_latents=[], trajectories=torch.zeros(0, n, 2), independent_matched_to_final=[],
        independent_by_index_to_final=[], series_matched_to_independent=[], independent_fvu=[],
    )  # fmt: skip
