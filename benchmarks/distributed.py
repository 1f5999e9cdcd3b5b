"""Distributed training in each mode against one process: step time, bytes each rank sends per step
and peak memory per rank, on this machine's CPU (gloo).

    .venv/bin/python benchmarks/distributed.py [--world 2] [--modes data sites latents fsdp] [--arch topk batch_topk]
                                               [--saes 2] [--steps 12] [--d-in 576] [--d-sae 4608] [--batch 4096]

Each run trains ``--saes`` SAEs of one architecture side by side (as a suite trains one per site;
site parallel needs one per rank at least; latent sharding splits each one's latents). Each configuration runs in fresh processes: one process
with ``--world`` threads, then ``--world`` ranks with one thread each (the same cores) in each mode,
interleaved and repeated (``--repeats``). Step time is
the median of the steady-state steps (the first 2 left out). Bytes are counted at the collectives
(every tensor a rank passes to all_reduce, all_gather, gather or broadcast, and FSDP's
all_gather_single and reduce_scatter_single, as the payload it contributes: a reduce-scatter's is the
whole tensor it reduces);
a ring all-reduce sends about 2·(W−1)/W times that. Peak memory is the process's maximum resident
set; the SAE state is what the rank's SAEs hold between steps (parameters, gradients, Adam moments:
its shares of them in a sharded mode), the part of a device's memory that the mode decides. Prints a table; ``--markdown PATH`` also writes it with the machine and the command
(benchmarks/RESULTS-distributed.md), ``--json PATH`` the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saekit.sae import build  # noqa: E402
from saekit.training.config import TrainConfig  # noqa: E402
from saekit.training.engine import prepare, restore_or_initialise, train_step  # noqa: E402
from saekit.training.objective import LocalObjective  # noqa: E402


def _data(rows: int, d_in: int) -> torch.Tensor:
    return torch.randn(rows, d_in, generator=torch.Generator().manual_seed(0))


PAYLOAD = {
    "all_reduce": (0, "tensor"), "all_gather": (1, "tensor"), "gather": (0, "tensor"), "broadcast": (0, "tensor"),
    "all_gather_single": (1, "input_tensor"), "reduce_scatter_single": (1, "input"),  # FSDP2's
}  # fmt: skip
"""Each counted collective of torch.distributed, and where its caller's payload is (position, keyword)."""


class _Counter:
    """Counts the bytes this process contributes to collectives, by wrapping torch.distributed's calls."""

    def __init__(self) -> None:
        self.bytes = 0
        for name, where in PAYLOAD.items():
            original = getattr(torch.distributed, name)
            setattr(torch.distributed, name, self._wrap(original, *where))

    def _wrap(self, original, position: int, keyword: str):
        def call(*args, **kwargs):
            tensor = args[position] if len(args) > position else kwargs[keyword]
            self.bytes += tensor.numel() * tensor.element_size()
            return original(*args, **kwargs)

        return call


def _run(rank: int, world: int, mode: str, store: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(args.world if world == 1 else 1)
    counter = None
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        counter = _Counter()
    extra = {"k": 32} if args.arch != "relu" else {}
    saes = [build(args.arch, d_in=args.d_in, d_sae=args.d_sae, seed=i, **extra) for i in range(args.saes)]
    cfg = TrainConfig(
        steps=args.steps, batch_size=args.batch, norm_estimation_tokens=args.batch, progress=False, log_every=10**6, parallel=mode
    )
    state = prepare(saes, _source(args), cfg, LocalObjective(), None, False)
    restore_or_initialise(state, False)
    batches = state.source.batches(cfg.batch_size, seed=0)
    times, sent = [], []
    for step in range(args.steps):
        batch = next(batches)
        before = counter.bytes if counter else 0
        started = time.perf_counter()
        train_step(state, step, batch)
        times.append(time.perf_counter() - started)
        sent.append((counter.bytes if counter else 0) - before)
    if rank == 0:
        row = {
            "arch": args.arch, "mode": mode if world > 1 else "one process", "world": world, "step_s": statistics.median(times[2:]),
            "bytes_per_step": statistics.median(sent[2:]), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "state_mb": _state_bytes(state) / 1e6,
        }  # fmt: skip
        Path(out).write_text(json.dumps(row))
    if world > 1:
        torch.distributed.destroy_process_group()


def _state_bytes(state) -> int:
    """Bytes of the training state this rank holds between steps: its SAEs' parameters, gradients and
    Adam moments (a fully sharded parameter's local share only). What a device must hold for the SAEs."""
    from torch.distributed.tensor import DTensor

    def local(t: torch.Tensor) -> int:
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    total = 0
    for i in state.owned:
        for p in state.saes[i].parameters():
            total += local(p) + (local(p.grad) if p.grad is not None else 0)
        total += sum(local(v) for s in state.optimizers[i].state.values() for v in s.values() if isinstance(v, torch.Tensor))
    return total


def _source(args: argparse.Namespace):
    from saekit.sources.tensor import TensorSource

    return TensorSource(_data(args.batch * 4, args.d_in))


def _measure(world: int, mode: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        mp.start_processes(_run, args=(world, mode, os.path.join(tmp, "store"), args, out), nprocs=world, join=True, start_method="spawn")
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["data", "sites", "latents", "fsdp"], choices=["data", "sites", "latents", "fsdp"])
    parser.add_argument("--arch", nargs="+", default=["topk", "batch_topk"])
    parser.add_argument("--saes", type=int, default=2, help="SAEs trained side by side")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    args.load = [os.getloadavg()[0]]
    rows = []
    for arch in args.arch:
        args.arch = arch
        plans = [(1, "data"), *((args.world, mode) for mode in args.modes)]
        runs: dict[tuple[int, str], list[dict]] = {plan: [] for plan in plans}
        for _ in range(args.repeats):
            for world, mode in plans:
                runs[world, mode].append(_measure(world, mode, args))
        for measured in runs.values():
            numbers = {k: statistics.median(r[k] for r in measured) for k in ("step_s", "bytes_per_step", "peak_rss_mb", "state_mb")}
            rows.append({"arch": arch, "mode": measured[0]["mode"], "world": measured[0]["world"], **numbers})
    table = (
        "| arch | mode | ranks | step (ms) | sent per rank per step (MB) | SAE state per rank (MB) | peak RSS per rank (MB) |\n"
        "|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| {r['arch']} | {r['mode']} | {r['world']} | {1000 * r['step_s']:.1f} | {r['bytes_per_step'] / 1e6:.2f} | {r['state_mb']:.0f} "
            f"| {r['peak_rss_mb']:.0f} |\n"
            for r in rows
        )
    )
    args.load.append(os.getloadavg()[0])
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(_markdown(table, args))


def _markdown(table: str, args: argparse.Namespace) -> str:
    import platform

    return (
        "# Distributed training: measured results\n\n"
        f"Written by `python benchmarks/distributed.py {' '.join(sys.argv[1:])}`; do not edit, run it again. "
        "How it measures: the script's docstring; the formulas and when to use which mode: [docs/scaling.md](../docs/scaling.md).\n\n"
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores ({platform.processor() or 'cpu'}); torch {torch.__version__}; backend gloo; "
        f"{time.strftime('%Y-%m-%d')}; load average {args.load[0]:.1f} at the start, {args.load[1]:.1f} at the end (the machine is shared: "
        "step times move with it; bytes and SAE state do not).\n"
        f"- One process uses {args.world} threads; each of the {args.world} ranks one thread (the same cores).\n"
        f"- {args.saes} SAEs side by side, each d_in {args.d_in}, d_sae {args.d_sae}; batch {args.batch} rows, k 32, {args.steps} steps (median of the steady ones), "
        f"median of {args.repeats} interleaved repeats.\n\n" + table
    )


if __name__ == "__main__":
    main()
