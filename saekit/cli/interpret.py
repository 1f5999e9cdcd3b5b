"""`saekit interpret SAE_OR_SUITE --endpoint URL --model NAME`: explain and score latents with an
OpenAI-compatible chat-completions endpoint (saekit.interpret)."""

from __future__ import annotations

import argparse

from saekit.cli.args import doc_help, int64, non_negative_int, positive_int
from saekit.interpret.client import EndpointConfig
from saekit.interpret.run import InterpretSettings
from saekit.strict import field_docs

_MAX_LATENT = 1 << 24
"""Bound of a latent id on the command line, so that a typo cannot ask for a list of billions."""


def latent_ranges(text: str) -> list[int]:
    """An argparse type: latent ids as ``0-99,120,200-210`` (ranges inclusive)."""
    ids: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected latent ids like 0-99,120, got {text!r}") from None
        if not 0 <= first <= last < _MAX_LATENT:
            raise argparse.ArgumentTypeError(f"expected ranges low-high with 0 <= low <= high < {_MAX_LATENT}, got {part.strip()!r}")
        ids.extend(range(first, last + 1))
    return ids


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    docs, settings = field_docs(EndpointConfig), field_docs(InterpretSettings)
    p = sub.add_parser("interpret", help="explain and score latents with an OpenAI-compatible endpoint (local or hosted)")
    p.add_argument("target", metavar="SAE_OR_SUITE", help="an SAE folder or a suite folder (with index.json)")
    p.add_argument("--endpoint", required=True, metavar="URL", help=doc_help(docs["base_url"]))
    p.add_argument("--model", required=True, metavar="NAME", help=doc_help(docs["model"]))
    p.add_argument("--latents", type=latent_ranges, default=None, help="latent ids, e.g. 0-99,120 (default: all)")
    p.add_argument("--api-key-env", metavar="VAR", default=None, help=doc_help(docs["api_key_env"]))
    p.add_argument("--timeout", type=positive_float, default=EndpointConfig.timeout_s, help=doc_help(docs["timeout_s"]))
    p.add_argument("--retries", type=non_negative_int, default=EndpointConfig.retries, help=doc_help(docs["retries"]))
    p.add_argument("--concurrency", type=positive_int, default=EndpointConfig.concurrency, help=doc_help(docs["concurrency"]))
    p.add_argument("--max-tokens", type=positive_int, default=EndpointConfig.max_tokens, help="longest answer, in tokens")
    p.add_argument("--batch", type=positive_int, default=InterpretSettings.batch, help=doc_help(settings["batch"]))
    p.add_argument("--seed", type=int64, default=InterpretSettings.seed, help=doc_help(settings["seed"]))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saekit.interpret.run import interpret

    endpoint = EndpointConfig(
        base_url=args.endpoint, model=args.model, api_key_env=args.api_key_env, timeout_s=args.timeout,
        retries=args.retries, concurrency=args.concurrency, max_tokens=args.max_tokens,
    )  # fmt: skip
    interpret(args.target, endpoint, latents=args.latents, settings=InterpretSettings(batch=args.batch, seed=args.seed))
    return 0


__all__ = ["add_parser", "latent_ranges"]
