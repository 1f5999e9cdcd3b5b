"""One training run of one library on one case, timed: saekit, SAELens or dictionary_learning.

Each library is driven through its public training API on the same activations (already scaled to
E||x||² = 1, so no library normalises and every FVU is in the same units):

* saekit: ``saekit.train`` (the one training loop);
* SAELens: ``SAETrainer(SAETrainerConfig, <Arch>TrainingSAE, data_provider).fit()``;
* dictionary_learning: its trainer classes' ``update(step, x)``, the call its ``trainSAE`` makes.

Every library gets the same tokens (``steps × batch``), the same learning rate and the same linear
warm-up / final decay fractions; the architecture's own sparsity objective is kept.

Speed is timed on the training steps only, in steady state, the same way for every library: each
library pulls its batches from an iterator (:class:`Clock`) that notes the time of every pull, so step
``i`` lasts from pull ``i`` to pull ``i + 1``. The first ``WARMUP_STEPS`` steps (lazy allocation,
dictionary_learning's geometric-median b_dec init inside its first step, thread pools warming up) are
dropped, as is everything before the first pull (imports, building the SAE, saekit's b_dec init) and
after the last one; tokens/s = batch / median of the remaining step times. The wall time of the whole
call is kept too (``seconds_total``). Peak memory is the
highest resident set size above the level just before training (a sampling thread, every 2 ms), or
``torch.cuda.max_memory_allocated`` on CUDA. Used by benchmarks/train_speed.py, run in a subprocess
per (case, library) so that every measurement starts from a fresh process.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Case:
    name: str
    """Label in the tables and in bench-results.json."""
    arch: str
    """saekit architecture name: topk, batch_topk, jumprelu or relu."""
    d_sae: int
    steps: int
    batch: int = 4096
    k: int = 32
    lr: float = 1e-3


class PeakRSS:
    """Highest resident memory (MB) above the level at ``start``, sampled by a background thread."""

    def __init__(self) -> None:
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


WARMUP_STEPS = 2
"""Steps left out of the speed measurement, for every library."""


class Clock:
    """An iterator over ``batches`` that notes ``time.perf_counter()`` at every pull."""

    def __init__(self, batches) -> None:
        self._it = iter(batches)
        self.times: list[float] = []

    def __iter__(self) -> Clock:
        return self

    def __next__(self):
        item = next(self._it)
        self.times.append(time.perf_counter())
        return item


def step_seconds(times: list[float], warmup: int = WARMUP_STEPS) -> list[float]:
    """Durations of the steps after the first ``warmup``, from the pull times (the last step, which
    has no following pull, is not timed)."""
    return [b - a for a, b in zip(times[warmup:-1], times[warmup + 1 :])]


def batches(x: torch.Tensor, case: Case):
    for step in range(case.steps):
        start = (step * case.batch) % (len(x) - case.batch + 1)
        yield x[start : start + case.batch]


class _ClockedSource:
    """A saekit ActivationSource whose latest ``batches`` iterator (the training loop's) is clocked."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.clock = Clock(())

    @property
    def sites(self):
        return self.inner.sites

    def d_in(self, site: str) -> int:
        return self.inner.d_in(site)

    def describe(self) -> dict:
        return self.inner.describe()

    def batches(self, batch_size: int, *, seed: int, start: int = 0):
        self.clock = Clock(self.inner.batches(batch_size, seed=seed, start=start))
        return self.clock


def schedule(case: Case) -> tuple[int, int]:
    """(lr warm-up steps, lr decay steps): saekit's defaults (5% and 20% of the run), for everyone."""
    return max(1, case.steps // 20), int(0.2 * case.steps)


# ---------------------------------------------------------------------------------------------


def run_saekit(case: Case, x: torch.Tensor, d_in: int):
    import saekit

    kw = {"k": case.k} if case.arch in ("topk", "batch_topk") else {}
    sae = saekit.build_sae(case.arch, d_in=d_in, d_sae=case.d_sae, lr=case.lr, seed=0, **kw)
    warm, _ = schedule(case)
    from saekit.sources.tensor import as_source

    # The activations are a contiguous block of the training rows, as the peers get them.
    source = _ClockedSource(as_source(x[: case.steps * case.batch]))
    saekit.train(
        sae, source, steps=case.steps, batch_size=case.batch, normalize_activations=False, progress=False,
        lr_warmup_steps=warm, log_every=max(1, case.steps), seed=0,
    )
    return lambda h: sae.encode(h), lambda f: sae.decode(f), source.clock.times


def run_saelens(case: Case, x: torch.Tensor, d_in: int):
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    common = {"d_in": d_in, "d_sae": case.d_sae, "normalize_activations": "none"}
    warm, decay = schedule(case)
    if case.arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=case.k, aux_loss_coefficient=1 / 32, rescale_acts_by_decoder_norm=False, **common))
    elif case.arch == "batch_topk":
        sae = BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(k=case.k, aux_loss_coefficient=1 / 32, rescale_acts_by_decoder_norm=False, **common)
        )
    elif case.arch == "jumprelu":
        sae = JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                l0_coefficient=3e-3, jumprelu_init_threshold=0.001, jumprelu_bandwidth=0.001,
                l0_warm_up_steps=case.steps // 10, **common,
            )
        )
    elif case.arch == "relu":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=0.1, l1_warm_up_steps=case.steps // 10, **common))
    else:
        raise ValueError(case.arch)
    cfg = SAETrainerConfig(
        total_training_samples=case.steps * case.batch, train_batch_size_samples=case.batch, lr=case.lr,
        lr_warm_up_steps=warm, lr_decay_steps=decay, lr_end=0.0, adam_beta1=0.0 if case.arch == "jumprelu" else 0.9,
        device=str(x.device),
    )
    import contextlib
    import io

    clock = Clock(batches(x, case))
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        SAETrainer(cfg=cfg, sae=sae, data_provider=clock).fit()
    return lambda h: sae.encode(h), lambda f: sae.decode(f), clock.times


def run_dictionary_learning(case: Case, x: torch.Tensor, d_in: int):
    from dictionary_learning.trainers import BatchTopKTrainer, JumpReluTrainer, TopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainerAprilUpdate

    warm, decay = schedule(case)
    common = {
        "steps": case.steps, "activation_dim": d_in, "dict_size": case.d_sae, "layer": 0, "lm_name": "bench",
        "lr": case.lr, "warmup_steps": warm, "decay_start": case.steps - max(1, decay), "device": str(x.device), "seed": 0,
    }
    if case.arch == "topk":
        trainer = TopKTrainer(k=case.k, threshold_start_step=case.steps // 2, **common)
    elif case.arch == "batch_topk":
        trainer = BatchTopKTrainer(k=case.k, threshold_start_step=case.steps // 2, **common)
    elif case.arch == "jumprelu":
        trainer = JumpReluTrainer(target_l0=float(case.k), sparsity_warmup_steps=case.steps // 10, bandwidth=0.001, **common)
    elif case.arch == "relu":
        trainer = StandardTrainerAprilUpdate(l1_penalty=0.1, sparsity_warmup_steps=case.steps // 10, **common)
    else:
        raise ValueError(case.arch)
    clock = Clock(batches(x, case))
    for step, batch in enumerate(clock):
        trainer.update(step, batch)
    ae = trainer.ae
    return lambda h: ae.encode(h), lambda f: ae.decode(f), clock.times


RUNNERS = {"saekit": run_saekit, "sae_lens": run_saelens, "dictionary_learning": run_dictionary_learning}


@torch.no_grad()
def quality(encode, decode, held_out: torch.Tensor) -> tuple[float, float]:
    """(FVU, L0) on held-out rows: Σ||x − x̂||² / Σ||x − mean||², and mean non-zero codes per row."""
    err = total = 0.0
    nonzero = 0
    mean = held_out.mean(0)
    for chunk in held_out.split(2048):
        codes = encode(chunk)
        err += float((decode(codes) - chunk).pow(2).sum())
        total += float((chunk - mean).pow(2).sum())
        nonzero += int((codes != 0).sum())
    return err / total, nonzero / len(held_out)


def main() -> None:
    """argv: library, case JSON, activations .npy (scaled), held-out rows, device, output JSON."""
    library, case_json, acts_path, n_held_out, device, out_path = sys.argv[1:7]
    case = Case(**json.loads(case_json))
    arr = np.load(acts_path, mmap_mode="r")
    n_held = int(n_held_out)
    x = torch.from_numpy(np.array(arr[n_held:])).float().to(device)
    held_out = torch.from_numpy(np.array(arr[:n_held])).float().to(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with PeakRSS() as mem:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        encode, decode, times = RUNNERS[library](case, x, x.shape[1])
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else mem.mb
    if len(times) != case.steps:
        raise RuntimeError(f"{library} pulled {len(times)} batches for {case.steps} steps")
    steps = step_seconds(times)
    if not steps:
        raise ValueError(f"{case.name}: {case.steps} steps leave no timed step after {WARMUP_STEPS} warm-up steps")
    fvu, l0 = quality(encode, decode, held_out)
    record = {
        "case": case.name, "library": library, "tokens_per_s": case.batch / statistics.median(steps),
        "peak_mem_mb": round(peak, 1), "fvu": fvu, "l0": l0, "step_seconds": steps, "seconds_total": seconds,
        "tokens": case.steps * case.batch, "case_config": asdict(case),
    }
    with open(out_path, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
