"""`saekit eval SUITE_OR_SAE --bench sparse_probing,absorption`: SAEBench's evaluations of every SAE, run
offline through the model, written as SAEBench JSON files with a table and plots."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from saekit.cli.args import positive_int, refuse_unused

if TYPE_CHECKING:
    from saekit.eval.bench.sparse_probing import SparseProbingConfig

BENCHES = ("sparse_probing", "absorption")
PROBING_ONLY = ("tasks", "k", "train_size", "test_size")
"""Options of sparse probing alone."""
ABSORPTION_ONLY = ("words",)
"""Options of the absorption eval alone."""
BENCH_ONLY = (*PROBING_ONLY, *ABSORPTION_ONLY, "seeds")
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
    ev.add_argument("--words", type=positive_int, default=2000, help="with --bench absorption: vocabulary words scored (default 2000)")


def run(args: argparse.Namespace, saes: dict, target: Path, model_name: str) -> int:
    from saekit.eval.bench import write_bench_report
    from saekit.eval.bench.absorption import AbsorptionConfig, absorption
    from saekit.eval.bench.sparse_probing import check_saes, sparse_probing
    from saekit.models import load_model

    if "sparse_probing" not in args.bench:
        refuse_unused(args, args.parser, (*PROBING_ONLY, "context_size", "skip_positions"), "without --bench sparse_probing")
    if "absorption" not in args.bench:
        refuse_unused(args, args.parser, ABSORPTION_ONLY, "without --bench absorption")
    probing = _probing_config(args) if "sparse_probing" in args.bench else None
    absorbing = AbsorptionConfig(max_words=args.words, seeds=args.seeds, batch_size=args.batch_size) if "absorption" in args.bench else None
    check_saes(saes, [*(probing.k_values if probing else ()), *((absorbing.max_k,) if absorbing else ())])
    loaded = load_model(model_name, device=args.device)
    print(f"saekit eval --bench {','.join(args.bench)}: {len(saes)} SAE(s) through {model_name}")
    results: dict[str, dict] = {}
    intro = [f"{len(saes)} SAE(s) from `{target}` read at their sites of {model_name}, {args.seeds} seed(s)."]
    if probing:
        results["sparse_probing"] = sparse_probing(saes, loaded, probing, release=target.name)
        intro.append(
            f"Sparse probing: {len(probing.tasks)} binary task(s) of sae-probes, up to {probing.train_size} training and "
            f"{probing.test_size} held-out texts each, the first {probing.skip_positions} position(s) of each text left out."
        )
    if absorbing:
        results["absorption_first_letter"] = absorption(saes, loaded, absorbing, release=target.name)
        intro.append(f"Absorption: up to {absorbing.max_words} single-token words of the vocabulary, first-letter task.")
    out = Path(args.out) if args.out else target / "bench"
    write_bench_report(out, results, title=f"saekit eval --bench: {target.name}", intro=" ".join(intro), links={"SAEs": target})
    return 0


def _probing_config(args: argparse.Namespace) -> SparseProbingConfig:
    from saekit.eval.bench import SparseProbingConfig, list_tasks
    from saekit.eval.bench.tasks import DEFAULT_TASKS

    if args.tasks == "all":
        tasks = tuple(list_tasks())
    elif args.tasks:
        tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    else:
        tasks = DEFAULT_TASKS
    return SparseProbingConfig(
        tasks=tasks, k_values=args.k, train_size=args.train_size, test_size=args.test_size, seeds=args.seeds,
        context_length=args.context_size, skip_positions=args.skip_positions, batch_size=args.batch_size,
    )  # fmt: skip
