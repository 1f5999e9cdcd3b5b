"""`saekit eval SUITE_OR_SAE --bench sparse_probing,absorption,core,meta_structure`: SAEBench's
evaluations of every SAE, run offline (through the model, except meta_structure, which reads the
decoders alone), written as SAEBench JSON files with a table and plots."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saekit.cli.args import positive_int, refuse_unused

if TYPE_CHECKING:
    from saekit.eval.bench.sparse_probing import SparseProbingConfig
    from saekit.models.load import LoadedModel

BENCHES = ("sparse_probing", "absorption", "core", "meta_structure")
READERS = {
    "tasks": ("sparse_probing",),
    "k": ("sparse_probing",),
    "train_size": ("sparse_probing",),
    "test_size": ("sparse_probing",),
    "words": ("absorption",),
    "meta_steps": ("meta_structure",),
    "seeds": ("sparse_probing", "absorption", "meta_structure"),
    "corpus": ("core",),
    "tokens": ("core",),
    "context_size": ("sparse_probing", "core"),
    "skip_positions": ("sparse_probing", "core"),
    "batch_size": ("sparse_probing", "absorption", "core"),
    "model": ("sparse_probing", "absorption", "core"),
}
"""The benchmarks' options and the benchmarks that read them; one set where none of those runs is refused."""
BENCH_ONLY = ("tasks", "k", "train_size", "test_size", "words", "meta_steps", "seeds")
"""Options of the benchmark, which the plain evaluation does not read."""
NOT_BENCH = ("data", "max_tokens", "json")
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
    ev.add_argument("--seeds", type=positive_int, default=5, help="with --bench: train/test partitions scored, or meta-SAEs trained (default 5)")
    ev.add_argument("--train-size", type=positive_int, default=1024, help="with --bench: training texts per task (default 1024)")
    ev.add_argument("--test-size", type=positive_int, default=256, help="with --bench: held-out texts per task (default 256)")
    ev.add_argument("--words", type=positive_int, default=2000, help="with --bench absorption: vocabulary words scored (default 2000)")
    ev.add_argument("--meta-steps", type=positive_int, default=1500, help="with --bench meta_structure: training steps of each meta-SAE (default 1500)")


def run(args: argparse.Namespace, saes: dict, target: Path, model_name: str) -> int:
    from saekit.eval.bench import write_bench_report
    from saekit.eval.bench.absorption import AbsorptionConfig
    from saekit.eval.bench.sparse_probing import check_saes
    from saekit.models import load_model

    _refuse_unread(args)
    probing = _probing_config(args) if "sparse_probing" in args.bench else None
    check_saes(saes, [1, *(probing.k_values if probing else ()), *((AbsorptionConfig().max_k,) if "absorption" in args.bench else ())])
    needs_model = any(name in args.bench for name in READERS["model"])
    loaded = load_model(model_name, device=args.device) if needs_model else None
    print(f"saekit eval --bench {','.join(args.bench)}: {len(saes)} SAE(s)" + (f" through {model_name}" if needs_model else ""))
    results: dict[str, dict] = {}
    intro = [f"{len(saes)} SAE(s) from `{target}`" + (f" read at their sites of {model_name}." if needs_model else ".")]
    for name in BENCHES:
        if name in args.bench:
            eval_type, outputs, said = RUNNERS[name](args, saes, loaded, target.name, probing)
            results[eval_type] = outputs
            intro.append(said)
    out = Path(args.out) if args.out else target / "bench"
    write_bench_report(out, results, title=f"saekit eval --bench: {target.name}", intro=" ".join(intro), links={"SAEs": target})
    return 0


def _refuse_unread(args: argparse.Namespace) -> None:
    """Refuse, before any work, every option that none of the chosen benchmarks reads."""
    unread = [option for option, readers in READERS.items() if not any(name in args.bench for name in readers)]
    refuse_unused(args, args.parser, unread, f"with --bench {','.join(args.bench)}")


def _probing(args: argparse.Namespace, saes: dict, loaded: Any, release: str, probing: Any) -> tuple[str, dict, str]:
    from saekit.eval.bench.sparse_probing import sparse_probing

    said = (
        f"Sparse probing: {len(probing.tasks)} binary task(s) of sae-probes, up to {probing.train_size} training and "
        f"{probing.test_size} held-out texts each, the first {probing.skip_positions} position(s) of each text left out, "
        f"{args.seeds} seed(s)."
    )
    return "sparse_probing", sparse_probing(saes, loaded, probing, release=release), said


def _absorption(args: argparse.Namespace, saes: dict, loaded: Any, release: str, _: Any) -> tuple[str, dict, str]:
    from saekit.eval.bench.absorption import AbsorptionConfig, absorption

    cfg = AbsorptionConfig(max_words=args.words, seeds=args.seeds, batch_size=args.batch_size)
    said = f"Absorption: up to {cfg.max_words} single-token words of the vocabulary, first-letter task, {args.seeds} seed(s)."
    return "absorption_first_letter", absorption(saes, loaded, cfg, release=release), said


def _core(args: argparse.Namespace, saes: dict, loaded: LoadedModel, release: str, _: Any) -> tuple[str, dict, str]:
    from saekit.eval.bench.core import CoreConfig, core
    from saekit.sources.text import TextConfig, tokens_from_config

    text = TextConfig(corpus=args.corpus, context_size=args.context_size, n_tokens=args.tokens, split="test")
    tokens = tokens_from_config(text, loaded.tokenizer)
    cfg = CoreConfig(batch_size_prompts=args.batch_size, skip_positions=args.skip_positions, dataset=str(args.corpus))
    said = (
        f"Core: {tokens.shape[0]} held-out contexts of {tokens.shape[1]} tokens from {args.corpus}, the first "
        f"{args.skip_positions} position(s) of each left clean, unscored and uncounted."
    )
    return "core", core(saes, loaded, tokens, cfg, release=release), said


def _meta(args: argparse.Namespace, saes: dict, _: Any, release: str, __: Any) -> tuple[str, dict, str]:
    from saekit.eval.bench.meta_structure import MetaStructureConfig, meta_structure

    cfg = MetaStructureConfig(train_steps=args.meta_steps, seeds=args.seeds, device=args.device or "auto")
    said = (
        f"Meta-structure: {args.seeds} BatchTopK meta-SAE(s) per SAE (width {cfg.width_ratio} × d_sae, k={cfg.k}, "
        f"{cfg.train_steps} steps of {cfg.train_batch_size} decoder rows)."
    )
    return "meta_structure_decoder_variance", meta_structure(saes, cfg, release=release), said


RUNNERS = {"sparse_probing": _probing, "absorption": _absorption, "core": _core, "meta_structure": _meta}
"""Each benchmark's run: (args, SAEs, model, release, probing config) -> (eval type id, outputs, report sentence)."""


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
