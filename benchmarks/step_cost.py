"""Cost of one training step (loss, backward, Adam) of saekit's sparse path against its plain dense path,
interleaved in one run, and both against the encoder product alone (the floor).

    .venv/bin/python benchmarks/step_cost.py [--repeats 3] [--batch 4096]

Prints milliseconds per step (median of ``repeats``, after a warm-up step) for TopK (d_sae 4608 and
18432, k 32), BatchTopK and JumpReLU (θ set so that about 1% of latents are active, the regime the
sparse path is for) on Gaussian rows of width 576.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import saekit
from saekit.types import ActBatch, StepCtx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "sae"))
from dense_reference import dense_loss  # noqa: E402  (the TopK family's dense oracle)


def step(sae, opt, x, dense: bool) -> None:
    if not dense:
        out = sae.loss(ActBatch(x), StepCtx())
    else:
        out = sae._dense_loss(x, StepCtx()) if sae.architecture == "jumprelu" else dense_loss(sae, x, StepCtx())
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 576) / 576**0.5
    print(f"{'case':16s} {'floor ms':>9s} {'sparse ms':>10s} {'dense ms':>9s} {'dense/sparse':>12s}")
    for name, arch, d_sae, kw in [
        ("topk-4608", "topk", 4608, {"k": 32}),
        ("topk-18432", "topk", 18432, {"k": 32}),
        ("batch_topk-4608", "batch_topk", 4608, {"k": 32}),
        ("jumprelu-4608", "jumprelu", 4608, {}),
    ]:
        sae = saekit.build_sae(arch, d_in=576, d_sae=d_sae, seed=0, **kw)
        if arch == "jumprelu":
            with torch.no_grad():
                sae.threshold.copy_((x @ sae.W_enc + sae.b_enc).quantile(0.99, dim=0))
        opt = torch.optim.Adam(sae.parameters(), lr=1e-6)  # tiny lr: the regime stays the same
        floor = timed(lambda sae=sae: x @ sae.W_enc, args.repeats)
        sparse = timed(lambda sae=sae, opt=opt: step(sae, opt, x, dense=False), args.repeats)
        dense = timed(lambda sae=sae, opt=opt: step(sae, opt, x, dense=True), args.repeats)
        print(f"{name:16s} {floor:9.0f} {sparse:10.0f} {dense:9.0f} {dense / sparse:12.2f}")


if __name__ == "__main__":
    main()
