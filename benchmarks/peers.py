"""One training run of one library on one case, timed: saekit, SAELens, dictionary_learning or sparsify.

Each library is driven through its public training API on the same activations (already scaled to
E||x||² = 1, so no library normalises and every FVU is in the same units):

* saekit: ``saekit.train`` (the one training loop);
* SAELens: ``SAETrainer(SAETrainerConfig, <Arch>TrainingSAE, data_provider).fit()``;
* dictionary_learning: its trainer classes' ``update(step, x)``, the call its ``trainSAE`` makes;
* sparsify: its ``SparseCoder`` driven with the steps of its ``Trainer.fit`` (benchmarks/peer_sparsify.py;
  its trainer only reads a model's hookpoints).

Every library gets the same tokens (``steps × batch``), the same learning rate and the same linear
warm-up / final decay fractions; the architecture's own sparsity objective is kept.

Dead latents. All three count a latent as dead only after a long window without firing:
dictionary_learning after 10M tokens (``dead_feature_threshold``), SAELens after
``dead_feature_window`` = 1000 steps (4.1M tokens at batch 4096), and saekit is given
``dead_tokens=10_000_000`` (dictionary_learning's value) instead of its default for short runs (a tenth
of the run, which in a benchmark-length run marks every latent that missed a single batch as dead).
So in any run shorter than 1000 steps no library has a dead latent, and the TopK auxiliary losses
(AuxK), which all three skip when nothing is dead, cost nobody anything: the same dead set for all.

JumpReLU starts sparse, from one shared SAE (:func:`jumprelu_start`). With the usual initial threshold
(0.001) about half the latents fire on every token, so a short run would time dense steps only,
whereas a JumpReLU spends almost all of its training with L0 near its target. The start, computed on
the first ``CALIBRATION_ROWS`` training rows:

1. saekit's JumpReLU init, ``build_sae("jumprelu", seed=0)``: W_enc = W_decᵀ with unit-norm decoder
   rows, b_enc = 0;
2. b_dec = the mean of the rows (where a trained SAE's b_dec is; Adam at lr 1e-3 would take longer
   than a benchmark run to learn it from 0);
3. W_enc and b_enc times the least-squares factor c > 0 of the reconstruction with the thresholds
   of step 4 (raw projections as codes overshoot: FVU ~7 instead of ~0.75 on these rows); scaling
   changes no firing set (c·z > c·θ ⟺ z > θ);
4. each latent's threshold θ_j = the quantile of its pre-activations z_j = x·W_enc[:, j] + b_enc[j]
   above which exactly ``k · rows / d_sae`` of the rows lie, so that each latent fires on a fraction
   k / d_sae of them and the mean L0 there is k = 32. A latent whose quantile is below
   ``MIN_THRESHOLD`` (a few dozen, pointing away from the activations' mean) gets θ_j = MIN_THRESHOLD
   and b_enc[j] raised by the difference: the same firing set, and θ stays positive, as saekit's
   clamp and dictionary_learning's ReLU assume.

train_speed.py writes these tensors once to a safetensors file (``Case.init``) and every library
loads exactly them: saekit's ``JumpReLUSAE``, SAELens's ``JumpReLUTrainingSAE`` (with
``apply_b_dec_to_input=False``: saekit's and dictionary_learning's JumpReLU encode x·W_enc + b_enc)
and dictionary_learning's ``JumpReluAutoEncoder`` all store W_enc [d_in, d_sae], W_dec [d_sae, d_in],
b_enc, b_dec and the threshold itself (not its log: SAELens 6 trains ``threshold`` directly and only
converts an old ``log_threshold`` on load; dictionary_learning's trainer uses ``threshold`` too).
Each keeps its own sparsity objective, set to hold L0 near 32: dictionary_learning its
(L0 / target_l0 − 1)² penalty with ``target_l0 = 32``; saekit and SAELens the straight L0 penalty
λ·L0 (SAELens's "step" mode, the same loss) with λ = ``JUMPRELU_L0_COEF`` = 1e-2; the sparsity
warm-up is 0 for all three, since the start is already sparse. Adam β = (0, 0.999) and bandwidth
0.001 for all three. L0 does not stay at 32: from the start, the encoder's first Adam steps at lr 1e-3
raise it to ~70 before the thresholds catch up, and after 32 steps it is ~42–46 for all three, the
steps staying in the sparse regime (density ≤ 1.5%) throughout.

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
from typing import NamedTuple

import numpy as np
import torch


@dataclass(frozen=True)
class Case:
    name: str
    """Label in the tables and in bench-results.json."""
    arch: str
    """saekit architecture name: topk, batch_topk, jumprelu, relu, matryoshka_batch_topk, crosscoder,
    topk_transcoder or topk_clt."""
    d_sae: int
    steps: int
    batch: int = 4096
    k: int = 32
    """TopK's k; for JumpReLU, the L0 its start and sparsity settings aim at."""
    lr: float = 1e-3
    init: str | None = None
    """A safetensors file with the SAE every library starts from (saekit's parameter names and
    layouts, see :func:`jumprelu_start`); None: each library's own initialisation."""
    sites: tuple[str, ...] = ()
    """The sites read, side by side in the activations file (empty: the one site of the single-site
    cases). Over several sites a peer trains the same SAE on the concatenated rows."""
    sites_out: tuple[str, ...] = ()
    """The sites a transcoder writes, after ``sites`` in the activations file (empty: an SAE)."""
    skip: bool = False
    """A transcoder's skip connection."""

    @classmethod
    def from_json(cls, text: str) -> Case:
        """The case :func:`dataclasses.asdict` wrote as JSON (lists back to tuples)."""
        fields = json.loads(text)
        return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in fields.items()})

    @property
    def n_columns(self) -> int:
        """How many sites' rows the activations file holds side by side: ``sites`` then ``sites_out``."""
        return max(len(self.sites), 1) + len(self.sites_out)


TRAINED_BY = {
    "topk": ("saekit", "sae_lens", "dictionary_learning", "sparsify"),
    "batch_topk": ("saekit", "sae_lens", "dictionary_learning"),
    "jumprelu": ("saekit", "sae_lens", "dictionary_learning"),
    "relu": ("saekit", "sae_lens", "dictionary_learning"),
    "matryoshka_batch_topk": ("saekit", "sae_lens", "dictionary_learning"),
    "crosscoder": ("saekit",),
    "topk_transcoder": ("saekit",),
    "topk_clt": ("saekit",),
}
"""The libraries that train each architecture (of those installed for the benchmark: SAELens 6.54,
dictionary_learning 0.1.0, which has no crosscoder, and sparsify 1.3.3, whose only SAE activation is
TopK and whose transcoders and CLTs are trained only from a model's hookpoints, not from rows; no
other installed peer trains transcoders or CLTs)."""


def libraries_for(case: Case, libraries: list[str]) -> list[str]:
    """Those of ``libraries`` that train ``case``'s architecture, in the given order."""
    return [lib for lib in libraries if lib in TRAINED_BY.get(case.arch, ())]


DEAD_TOKENS = 10_000_000
"""saekit's dead-latent window, in tokens: dictionary_learning's (see the module docstring)."""

CALIBRATION_ROWS = 4608
"""Training rows the JumpReLU start's thresholds are set on (``k · rows / d_sae`` = 32 firing rows
per latent at d_sae 4608)."""

MIN_THRESHOLD = 1e-3
"""Smallest threshold of the JumpReLU start (saekit's and dictionary_learning's initial value)."""

JUMPRELU_L0_COEF = 1e-2
"""λ of the L0 penalty of saekit's and SAELens's JumpReLU (loss = Σ_d (x − x̂)² + λ·L0, activations
scaled to E||x||² = 1). From the sparse start at lr 1e-3, L0 first rises (the encoder learns faster
than Adam, at ~lr per step, can raise the thresholds) and comes back: over 32 steps it peaks near 70
and ends near 44 for saekit and SAELens (dictionary_learning, target_l0 32: 42). Any λ from 6e-3 to
2e-2 gives nearly the same path (the threshold steps saturate at ~lr); 2e-3 ends near 55."""

JUMPRELU_BANDWIDTH = 1e-3

SINK_FACTOR = 10.0
"""Rows with a squared norm above this many times the median are attention sinks (see sink_rows)."""


def sink_rows(x: torch.Tensor) -> torch.Tensor:
    """[rows] bool: the rows whose squared norm exceeds SINK_FACTOR × the median squared norm.

    SmolLM2 writes massive activations (up to 10⁴ × the median squared norm) at BOS and, in about one
    context in 25, at the first token after it (and at a few other positions in layers 2–8). A single
    such row can carry more squared error than all the others of a 4096-row evaluation set together,
    so it would decide the FVU, and a handful of them would set the activations' scale."""
    n = x.double().pow(2).sum(-1)
    return n > SINK_FACTOR * n.median()

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

    def close(self) -> None:
        """Close the wrapped iterator too (saekit's loop closes its batch iterator when done)."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


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


class JumpReLUStart(NamedTuple):
    tensors: dict[str, torch.Tensor]
    """W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in], threshold [d_sae]."""
    calibration_l0: float
    """Mean L0 of the start on the calibration rows (k by construction)."""
    raised: int
    """Latents whose quantile was below MIN_THRESHOLD (b_enc raised to keep their firing set)."""
    code_scale: float
    """The least-squares factor W_enc and b_enc were scaled by (before the thresholds were set)."""
    calibration_fvu: float
    """FVU of the start on the calibration rows."""


@torch.no_grad()
def jumprelu_start(d_sae: int, k: int, x: torch.Tensor) -> JumpReLUStart:
    """saekit's JumpReLU init (seed 0) with per-latent thresholds at the quantile of the pre-activations
    on ``x[:CALIBRATION_ROWS]`` that k / d_sae of those rows exceed (see the module docstring)."""
    import saekit

    sae = saekit.build_sae("jumprelu", d_in=x.shape[1], d_sae=d_sae, seed=0)
    t = {name: p.detach().clone().float().cpu() for name, p in sae.named_parameters()}
    rows = x[:CALIBRATION_ROWS].float().cpu()
    firing = round(k * len(rows) / d_sae)
    if not 0 < firing < len(rows):
        raise ValueError(f"{len(rows)} calibration rows cannot give L0 {k} of {d_sae} latents")
    # A trained SAE's b_dec holds the activations' mean (55% of E||x||² at this site); at lr 1e-3 Adam
    # would need hundreds of steps to learn it from 0, longer than a benchmark run.
    t["b_dec"] = rows.mean(0)

    def quantiles() -> torch.Tensor:
        # kthvalue (torch.quantile refuses more than 2^24 elements): exactly `firing` rows lie above it.
        return torch.kthvalue(rows @ t["W_enc"] + t["b_enc"], len(rows) - firing, dim=0).values

    # Codes of raw projections overshoot (FVU ~7 at d_sae 4608); scaling the encoder side by the
    # least-squares factor c > 0 fixes that and keeps every firing set (c·z > c·θ ⟺ z > θ).
    z = rows @ t["W_enc"] + t["b_enc"]
    recon = (z * (z > quantiles())) @ t["W_dec"]
    c = float(((rows - t["b_dec"]) * recon).sum() / recon.pow(2).sum())
    if not c > 0:
        raise ValueError(f"the start's least-squares code scale is {c}, not positive")
    t["W_enc"] *= c
    t["b_enc"] *= c
    q = quantiles()  # on the scaled pre-activations, exactly as the libraries will compute them
    lift = (MIN_THRESHOLD - q).clamp(min=0)
    t["b_enc"] += lift
    t["threshold"] = q + lift
    z = rows @ t["W_enc"] + t["b_enc"]
    fired = z > t["threshold"]
    fvu = float(((z * fired) @ t["W_dec"] + t["b_dec"] - rows).pow(2).sum() / (rows - rows.mean(0)).pow(2).sum())
    tensors = {n: v.contiguous() for n, v in t.items()}
    return JumpReLUStart(tensors, float(fired.sum(1).float().mean()), int((lift > 0).sum()), c, fvu)


def load_start(case: Case) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(case.init)


@torch.no_grad()
def _assign(params: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> None:
    """Copy ``start`` into the same-named parameters in place (optimisers built on them stay valid)."""
    if set(params) != set(start):
        raise ValueError(f"parameters {sorted(params)} do not match the start's {sorted(start)}")
    for name, value in start.items():
        if params[name].shape != value.shape:
            raise ValueError(f"{name}: shape {tuple(params[name].shape)} vs the start's {tuple(value.shape)}")
        params[name].copy_(value)


# ---------------------------------------------------------------------------------------------
# Each library's SAE (or trainer) as it is before its first step; the runners below train them.


def saekit_sae(case: Case, d_in: int, d_out: int | None = None):
    import saekit

    kw: dict = {"k": case.k} if case.arch in ("topk", "batch_topk", "matryoshka_batch_topk") else {}
    if case.arch == "jumprelu":
        kw = {"l0_coef": JUMPRELU_L0_COEF, "bandwidth": JUMPRELU_BANDWIDTH}
    if case.arch == "topk_transcoder":
        kw = {"k": case.k, "d_out": d_out, "skip": case.skip}
    if case.arch == "topk_clt":
        kw = {"k": case.k, "d_out": d_out, "skip": case.skip, "n_layers": len(case.sites)}
    sae = saekit.build_sae(case.arch, d_in=d_in, d_sae=case.d_sae, lr=case.lr, seed=0, **kw)
    if len(case.sites) > 1:
        sae.metadata["sites"] = list(case.sites)
    if len(case.sites_out) > 1:
        sae.metadata["sites_out"] = list(case.sites_out)
    elif case.sites_out:
        sae.metadata.update(site=case.sites[0], site_out=case.sites_out[0])
    if case.init is not None:
        _assign(dict(sae.named_parameters()), load_start(case))
    return sae


def matryoshka_widths(d_sae: int) -> list[int]:
    """saekit's default prefix widths (d_sae/16, /8, /4, /2, d_sae), given to every library."""
    return [d_sae // 16, d_sae // 8, d_sae // 4, d_sae // 2, d_sae]


def saelens_sae(case: Case, d_in: int):
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    torch.manual_seed(0)
    common = {"d_in": d_in, "d_sae": case.d_sae, "normalize_activations": "none"}
    if case.arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=case.k, aux_loss_coefficient=1 / 32, rescale_acts_by_decoder_norm=False, **common))
    elif case.arch == "batch_topk":
        sae = BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(k=case.k, aux_loss_coefficient=1 / 32, rescale_acts_by_decoder_norm=False, **common)
        )
    elif case.arch == "matryoshka_batch_topk":
        sae = MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(
                k=case.k, aux_loss_coefficient=1 / 32, rescale_acts_by_decoder_norm=False,
                matryoshka_widths=matryoshka_widths(case.d_sae), **common,
            )
        )
    elif case.arch == "jumprelu":
        sae = JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                l0_coefficient=JUMPRELU_L0_COEF, jumprelu_sparsity_loss_mode="step", jumprelu_bandwidth=JUMPRELU_BANDWIDTH,
                jumprelu_init_threshold=MIN_THRESHOLD, l0_warm_up_steps=0, apply_b_dec_to_input=False, **common,
            )
        )
    elif case.arch == "relu":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=0.1, l1_warm_up_steps=case.steps // 10, **common))
    else:
        raise ValueError(case.arch)
    if case.init is not None:
        _assign(dict(sae.named_parameters()), load_start(case))
    return sae


def dictionary_learning_trainer(case: Case, d_in: int, device: str = "cpu"):
    from dictionary_learning.trainers import BatchTopKTrainer, JumpReluTrainer, TopKTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainerAprilUpdate

    warm, decay = schedule(case)
    common = {
        "steps": case.steps, "activation_dim": d_in, "dict_size": case.d_sae, "layer": 0, "lm_name": "bench",
        "lr": case.lr, "warmup_steps": warm, "decay_start": case.steps - max(1, decay), "device": device, "seed": 0,
    }
    if case.arch == "topk":
        trainer = TopKTrainer(k=case.k, threshold_start_step=case.steps // 2, **common)
    elif case.arch == "batch_topk":
        trainer = BatchTopKTrainer(k=case.k, threshold_start_step=case.steps // 2, **common)
    elif case.arch == "matryoshka_batch_topk":
        widths = matryoshka_widths(case.d_sae)
        sizes = [b - a for a, b in zip([0, *widths[:-1]], widths)]
        trainer = MatryoshkaBatchTopKTrainer(
            k=case.k, threshold_start_step=case.steps // 2, group_fractions=[n / case.d_sae for n in sizes], **common
        )
    elif case.arch == "jumprelu":
        trainer = JumpReluTrainer(target_l0=float(case.k), sparsity_warmup_steps=0, bandwidth=JUMPRELU_BANDWIDTH, **common)
    elif case.arch == "relu":
        trainer = StandardTrainerAprilUpdate(l1_penalty=0.1, sparsity_warmup_steps=case.steps // 10, **common)
    else:
        raise ValueError(case.arch)
    if case.init is not None:
        _assign(dict(trainer.ae.named_parameters()), load_start(case))
    return trainer


# ---------------------------------------------------------------------------------------------


def saekit_source(case: Case, x: torch.Tensor, y: torch.Tensor | None):
    """A saekit source over ``x`` (and a transcoder's target rows ``y``): one site, or ``case.sites``
    (then ``case.sites_out``) as equal blocks of columns, one site each, the same rows at every site."""
    from saekit.sources.tensor import as_source

    if not case.sites:
        return as_source(x)
    blocks = dict(zip(case.sites, x.chunk(len(case.sites), dim=1)))
    if case.sites_out:
        assert y is not None
        blocks.update(zip(case.sites_out, y.chunk(len(case.sites_out), dim=1)))
    return as_source({site: block.contiguous() for site, block in blocks.items()})


def run_saekit(case: Case, x: torch.Tensor, y: torch.Tensor | None):
    import saekit

    sae = saekit_sae(case, x.shape[1], None if y is None else y.shape[1])
    warm, _ = schedule(case)
    # The activations are a contiguous block of the training rows, as the peers get them.
    rows = case.steps * case.batch
    source = _ClockedSource(saekit_source(case, x[:rows], None if y is None else y[:rows]))
    saekit.train(
        sae, source, steps=case.steps, batch_size=case.batch, normalize_activations=False, progress=False,
        lr_warmup_steps=warm, log_every=max(1, case.steps), seed=0, dead_tokens=DEAD_TOKENS,
        **({"sparsity_warmup_steps": 0} if case.arch == "jumprelu" else {}),
    )
    return lambda h: sae.encode(h), lambda h, f: sae.reconstruct(h, f), source.clock.times


def _only_sae(case: Case, y: torch.Tensor | None) -> None:
    if y is not None:
        raise ValueError(f"{case.name}: only saekit trains transcoders here (target rows given)")


def run_saelens(case: Case, x: torch.Tensor, y: torch.Tensor | None):
    import contextlib
    import io

    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    _only_sae(case, y)
    sae = saelens_sae(case, x.shape[1])
    warm, decay = schedule(case)
    cfg = SAETrainerConfig(
        total_training_samples=case.steps * case.batch, train_batch_size_samples=case.batch, lr=case.lr,
        lr_warm_up_steps=warm, lr_decay_steps=decay, lr_end=0.0, adam_beta1=0.0 if case.arch == "jumprelu" else 0.9,
        device=str(x.device), autocast=x.device.type == "cuda",  # bfloat16 on a GPU, as saekit's "auto" and sparsify
    )
    clock = Clock(batches(x, case))
    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        SAETrainer(cfg=cfg, sae=sae, data_provider=clock).fit()
    return lambda h: sae.encode(h), lambda h, f: sae.decode(f), clock.times


def run_dictionary_learning(case: Case, x: torch.Tensor, y: torch.Tensor | None):
    _only_sae(case, y)
    trainer = dictionary_learning_trainer(case, x.shape[1], str(x.device))
    clock = Clock(batches(x, case))
    for step, batch in enumerate(clock):
        trainer.update(step, batch)
    ae = trainer.ae
    return lambda h: ae.encode(h), lambda h, f: ae.decode(f), clock.times


def run_sparsify(case: Case, x: torch.Tensor, y: torch.Tensor | None):
    from peer_sparsify import run  # imported here: it imports this module

    return run(case, x, y)


RUNNERS = {
    "saekit": run_saekit, "sae_lens": run_saelens, "dictionary_learning": run_dictionary_learning,
    "sparsify": run_sparsify,
}


@torch.no_grad()
def quality(encode, reconstruct, held_out: torch.Tensor, target: torch.Tensor | None = None) -> tuple[float, float]:
    """(FVU, L0) on held-out rows: Σ||y − ŷ||² / Σ||y − mean||² with y the target rows (a transcoder's
    output site; the rows themselves for an SAE) and ŷ = reconstruct(x, encode(x)), and the mean
    number of non-zero codes per row."""
    y = held_out if target is None else target
    err = total = 0.0
    nonzero = 0
    mean = y.mean(0)
    for chunk, want in zip(held_out.split(2048), y.split(2048)):
        codes = encode(chunk)
        err += float((reconstruct(chunk, codes) - want).pow(2).sum())
        total += float((want - mean).pow(2).sum())
        nonzero += int((codes != 0).sum())
    return err / total, nonzero / len(held_out)


def main() -> None:
    """argv: library, case JSON, activations .npy (scaled), held-out rows, device, output JSON."""
    library, case_json, acts_path, n_held_out, device, out_path = sys.argv[1:7]
    case = Case.from_json(case_json)
    arr = np.load(acts_path, mmap_mode="r")
    n_held = int(n_held_out)
    if arr.shape[1] % case.n_columns:
        raise ValueError(f"{acts_path}: {arr.shape[1]} columns are not {case.n_columns} sites of equal width")
    split = arr.shape[1] // case.n_columns * max(len(case.sites), 1)
    x = torch.from_numpy(np.array(arr[n_held:, :split])).float().to(device)
    held_out = torch.from_numpy(np.array(arr[:n_held, :split])).float().to(device)
    y = held_y = None
    if case.sites_out:
        y = torch.from_numpy(np.array(arr[n_held:, split:])).float().to(device)
        held_y = torch.from_numpy(np.array(arr[:n_held, split:])).float().to(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with PeakRSS() as mem:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        encode, reconstruct, times = RUNNERS[library](case, x, y)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else mem.mb
    if len(times) != case.steps:
        raise RuntimeError(f"{library} pulled {len(times)} batches for {case.steps} steps")
    steps = step_seconds(times)
    if not steps:
        raise ValueError(f"{case.name}: {case.steps} steps leave no timed step after {WARMUP_STEPS} warm-up steps")
    fvu, l0 = quality(encode, reconstruct, held_out, held_y)
    record = {
        "case": case.name, "library": library, "tokens_per_s": case.batch / statistics.median(steps),
        "peak_mem_mb": round(peak, 1), "fvu": fvu, "l0": l0, "step_seconds": steps, "seconds_total": seconds,
        "tokens": case.steps * case.batch, "case_config": asdict(case), "d_in": x.shape[1],
    }
    with open(out_path, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main()
