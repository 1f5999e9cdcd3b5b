"""`saekit demo`: a small SAE suite on the embedded SmolLM2-135M, everywhere at once.

Several architectures on residual-stream sites spread over the depth train side by side from ONE
stream of forward passes over the default corpus, then each SAE is measured on held-out documents:
activation metrics, and the change in next-token loss when its reconstruction replaces the site
(BOS left as it is). Writes ``report.md``, ``results.json``, plots, the SAEs and the training log;
interrupt it and run it again to resume.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from saekit.eval.evaluate import evaluate
from saekit.eval.plots import pyplot
from saekit.eval.report import write_report
from saekit.io import save_suite
from saekit.sae.base import SAE
from saekit.sae.registry import build
from saekit.sources.hf import next_token_loss, splice
from saekit.sources.model import ModelSource
from saekit.training.config import TrainConfig
from saekit.training.loop import run

LAYERS = (3, 9, 15, 21, 27)
ARCHITECTURES = {"topk": {"k": 32}, "batch_topk": {"k": 32}, "relu": {}}
COLUMNS = ["name", "site", "l0", "fvu", "cos", "dead_fraction", "delta_ce", "ce_clean", "ce_spliced"]


@dataclass(frozen=True)
class DemoSettings:
    train_tokens: int = 131_072
    """Corpus tokens run through the model once; the first ``skip_positions`` of each context are left out."""
    eval_tokens: int = 8_192
    """Held-out tokens for the activation metrics."""
    ce_tokens: int = 1_024
    """Held-out tokens for the spliced next-token loss (one pass over them per SAE)."""
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
    eval_source = ModelSource(model, held_out, sites, chunk_seqs=held_out.shape[0], skip_positions=skip)
    eval_acts = next(eval_source.chunks_in_order())
    ce_tokens = held_out[: max(1, settings.ce_tokens // settings.context)]
    ce_clean = spliced_ce(model, ce_tokens, None, skip)
    rows = []
    for name, sae in zip(names, result.saes):
        metrics = evaluate(sae, eval_acts[sae.site])
        ce_spliced = spliced_ce(model, ce_tokens, sae, skip)
        rows.append({"name": name, "site": sae.site, **metrics, "ce_clean": ce_clean, "ce_spliced": ce_spliced, "delta_ce": ce_spliced - ce_clean})
    suite = save_suite(result.saes, out / "saes", names=names)
    write_report(
        out,
        title=f"saekit demo: SAEs on {loaded.name}",
        intro=(
            f"{len(saes)} SAEs with {settings.d_sae} latents trained side by side on {rows_per_pass:,} tokens of the sotu "
            f"corpus (contexts of {settings.context}, the first {skip} positions left out), batch {settings.batch_size}. Metrics on "
            f"{eval_acts[sites[0]].shape[0]:,} held-out tokens; `delta_ce` = next-token cross-entropy with the SAE's "
            f"reconstruction spliced into the site (all positions but the first {skip}) minus the clean one, on {ce_tokens.numel():,} "
            f"held-out tokens. FVU = Σ‖x−x̂‖² / Σ‖x−x̄‖²."
        ),
        rows=rows,
        columns=COLUMNS,
        plot=_plot(rows, out / "by_layer.png"),
        suite=suite,
    )
    return rows


@torch.no_grad()
def spliced_ce(model: torch.nn.Module, tokens: torch.Tensor, sae: SAE | None, skip: int, batch: int = 8) -> float:
    """Next-token cross-entropy, predicted from positions >= ``skip``, with ``sae``'s reconstruction
    in place of its site at those positions (the first ``skip`` positions keep their activations);
    the clean model's with ``sae=None``. Contexts go ``batch`` at a time to bound the logits' memory."""

    def reconstruct(h: torch.Tensor) -> torch.Tensor:
        out = h.clone()
        out[:, skip:] = sae(h[:, skip:].float()).to(h.dtype)
        return out

    losses = []
    with splice(model, sae.site, reconstruct) if sae is not None else contextlib.nullcontext():
        for start in range(0, len(tokens), batch):
            part = tokens[start : start + batch]
            losses.append(float(next_token_loss(model(part).logits[:, skip:], part[:, skip:])) * len(part))
    return sum(losses) / len(tokens)


def _plot(rows: list[dict], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, (ax_fvu, ax_ce) = plt.subplots(1, 2, figsize=(11, 4))
    for arch in ARCHITECTURES:
        mine = [r for r in rows if r["name"].endswith(f"-{arch}")]
        layers = [int(r["site"].split(".")[1]) for r in mine]
        ax_fvu.plot(layers, [r["fvu"] for r in mine], marker="o", label=arch)
        ax_ce.plot(layers, [r["delta_ce"] for r in mine], marker="o", label=arch)
    ax_fvu.set(xlabel="layer (resid_post)", ylabel="FVU (held-out)", title="Reconstruction by depth")
    ax_ce.set(xlabel="layer (resid_post)", ylabel="Δ CE (nats/token)", title="Spliced next-token loss increase")
    ax_fvu.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
