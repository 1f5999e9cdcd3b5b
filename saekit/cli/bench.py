"""`saekit eval SUITE_OR_SAE --bench sparse_probing`: SAEBench's evaluations of every SAE, run offline
through the model, written as SAEBench JSON files with a table and a plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.cli.args import positive_int
from saekit.errors import ConfigError

BENCHES = ("sparse_probing",)
BENCH_ONLY = ("tasks", "k", "seeds", "train_size", "test_size")
"""Options of the benchmark, which the plain evaluation does not read."""
NOT_BENCH = ("data", "corpus", "tokens", "max_tokens", "json")
"""Options of the plain evaluation, which the benchmark does not read."""


def benches(text: str) -> tuple[str, ...]:
    """An argparse type: a comma-separated list of benchmark names."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in BENCHES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown benchmark {', '.join(unknown) or repr(text)}; choose from {', '.join(BENCHES)}")
    return names


def positive_ints(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated positive integers (k values)."""
    return tuple(positive_int(part.strip()) for part in text.split(","))


def add_arguments(ev: argparse.ArgumentParser) -> None:
    ev.add_argument("--bench", type=benches, help=f"run SAEBench evaluations instead: {', '.join(BENCHES)} (comma-separated)")
    ev.add_argument("--tasks", help="with --bench: sae-probes task names, comma-separated, or 'all' (default: five short-text tasks)")
    ev.add_argument("--k", type=positive_ints, default=(1, 2, 5, 10, 20, 50), help="with --bench: latents per sparse probe (default 1,2,5,10,20,50)")
    ev.add_argument("--seeds", type=positive_int, default=5, help="with --bench: train/test partitions scored (default 5)")
    ev.add_argument("--train-size", type=positive_int, default=1024, help="with --bench: training texts per task (default 1024)")
    ev.add_argument("--test-size", type=positive_int, default=256, help="with --bench: held-out texts per task (default 256)")


def run(args: argparse.Namespace, saes: dict, target: Path, model_name: str) -> int:
    from saekit.eval.bench import SparseProbingConfig, list_tasks, sparse_probing, write_bench_report
    from saekit.eval.bench.sparse_probing import check_saes
    from saekit.eval.bench.tasks import DEFAULT_TASKS
    from saekit.models import load_model

    if args.tasks == "all":
        tasks = tuple(list_tasks())
    elif args.tasks:
        tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    else:
        tasks = DEFAULT_TASKS
    cfg = SparseProbingConfig(
        tasks=tasks, k_values=args.k, train_size=args.train_size, test_size=args.test_size, seeds=args.seeds,
        context_length=args.context_size, skip_positions=args.skip_positions, batch_size=args.batch_size,
    )  # fmt: skip
    if cfg.skip_positions >= cfg.context_length:
        raise ConfigError("--skip-positions must be smaller than --context-size")
    check_saes(saes, cfg.k_values)
    loaded = load_model(model_name, device=args.device)
    print(f"saekit eval --bench: {len(saes)} SAE(s) on {len(tasks)} sparse-probing task(s) through {model_name}")
    outputs = sparse_probing(saes, loaded, cfg, release=target.name)
    out = Path(args.out) if args.out else target / "bench"
    intro = (
        f"{len(saes)} SAE(s) from `{target}` read at their sites of {model_name}; {len(tasks)} binary task(s) of "
        f"sae-probes, up to {cfg.train_size} training and {cfg.test_size} held-out texts each, {cfg.seeds} seed(s)."
    )
    write_bench_report(out, outputs, title=f"saekit eval --bench: {target.name}", intro=intro, links={"SAEs": target})
    return 0
