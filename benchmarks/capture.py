"""Activation capture throughput on the embedded SmolLM2-135M: every residual site from one forward
pass, and one pass feeding N sites versus N separate passes (each stopped after its layer).

    .venv/bin/python benchmarks/capture.py [--tokens 8192] [--context 128] [--batch 16]

Prints tokens/s and the ratio of N separate passes to one shared pass, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from saekit.models import load_model
from saekit.sources.hf import collect_activations
from saekit.sources.text import TextConfig, tokens_from_config


def timed(fn, tokens: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(tokens), batch):
        fn(tokens[i : i + batch])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    loaded = load_model("smollm2-135m")
    model = loaded.model
    tokens = tokens_from_config(TextConfig(context_size=args.context, n_tokens=args.tokens), loaded.tokenizer)
    n = tokens.numel()
    all_resid = [f"layers.{i}.resid_post" for i in range(30)]
    spread = [f"layers.{i}.resid_post" for i in (3, 9, 15, 21, 27)]
    results = {}
    with torch.inference_mode():
        collect_activations(model, tokens[:2], all_resid)  # warm-up
        results["forward_only_tok_s"] = n / timed(lambda t: model.model(t), tokens, args.batch)
        results["all_30_resid_one_pass_tok_s"] = n / timed(lambda t: collect_activations(model, t, all_resid), tokens, args.batch)
        one = timed(lambda t: collect_activations(model, t, spread), tokens, args.batch)
        separate = sum(timed(lambda t, s=s: collect_activations(model, t, [s]), tokens, args.batch) for s in spread)
    results["5_sites_one_pass_tok_s"] = n / one
    results["5_sites_separate_passes_tok_s"] = n / separate
    results["separate_over_shared_time_ratio"] = separate / one
    results["tokens"] = n
    results["threads"] = torch.get_num_threads()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
