"""SAEBench's meta-structure eval (``meta_structure_decoder_variance``; Bussmann et al. 2025, "Learning
multi-level features with Matryoshka SAEs", appendix D.1): how much of an SAE's dictionary a small
BatchTopK *meta-SAE* trained on its decoder rows explains. High: the latents' directions are built
from a few shared ones; low: they share little structure.

Recipe (SAEBench's defaults): the decoder rows ``W_dec [d_sae, d_out]``, each scaled to unit norm (as
SAEBench folds the decoder norm into the encoder before it reads them), train a BatchTopK SAE of
``max(ceil(width_ratio · d_sae), k)`` latents with k = 4 active per row on average, for ``train_steps``
steps of ``train_batch_size`` rows at a constant learning rate, through saekit's training engine with
the rows as a :class:`~saekit.sources.tensor.TensorSource` (no activation normalisation, no
learning-rate decay). The metric is computed on the whole decoder in batches of ``eval_batch_size``
rows with the training selection (the batch's n·k largest pre-activations), as SAEBench evaluates its
training SAE:

    decoder_fraction_variance_explained = 1 − Σ_i ||d_i − d̂_i||² / Σ_i ||d_i − d̄||²

(``1 − FVU`` of :func:`saekit.eval.metrics.fvu`; d̄ the mean row; 0 when every row is the same),
and ``final_reconstruction_mse`` the mean squared error per element. The meta-SAE's decoder spans at
most its width in directions, so for an orthonormal dictionary the fraction is at most about
``width_ratio``; a dictionary of combinations of a few directions approaches 1.

Each of ``seeds`` seeds (``random_seed``, ``random_seed + 1``, ...) trains its own meta-SAE (its
initialisation and row order); the metrics are the means over seeds, their spread in the output's
``eval_result_unstructured``. Differences from SAEBench: rows are drawn in shuffled epochs rather than
with replacement, and the meta-SAE is saekit's ``batch_topk`` (its AuxK loss only touches latents dead
for ``dead_feature_window`` steps, SAEBench's window, longer than the default run).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.errors import ConfigError, DataError
from saekit.eval import metrics
from saekit.sae.base import SAE
from saekit.sae.registry import build
from saekit.sources.tensor import TensorSource
from saekit.training.config import TrainConfig
from saekit.training.engine import run
from saekit.types import ActBatch, StepCtx

EVAL_TYPE = "meta_structure_decoder_variance"


@dataclass(frozen=True)
class MetaStructureConfig:
    width_ratio: float = 0.25
    """Meta-SAE latents per base-SAE latent (at least k latents)."""
    k: int = 4
    """Active meta-latents per decoder row, on average over a batch (BatchTopK)."""
    train_steps: int = 1500
    train_batch_size: int = 1024
    """Decoder rows per training step."""
    learning_rate: float = 5e-4
    eval_batch_size: int = 4096
    """Rows per batch of the final evaluation (the batch the BatchTopK selection runs over)."""
    dead_feature_window: int = 2000
    """Steps without firing after which a meta-latent counts as dead for the AuxK loss."""
    seeds: int = 3
    """Meta-SAEs trained, seeded random_seed, random_seed + 1, ..."""
    random_seed: int = 42
    device: str = "auto"
    """Where the meta-SAEs train ("cpu", "cuda", ...; "auto" takes CUDA when available)."""

    def __post_init__(self) -> None:
        if not 0 < self.width_ratio <= 1:
            raise ConfigError(f"width_ratio must be in (0, 1], got {self.width_ratio}")
        for key in ("k", "train_steps", "train_batch_size", "eval_batch_size", "dead_feature_window", "seeds"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")


def unit_rows(sae: SAE, name: str) -> Tensor:
    """The SAE's decoder rows scaled to unit norm, float32 on the CPU; a zero or non-finite row is refused."""
    w_dec = sae.W_dec.detach().float().cpu()
    norms = w_dec.norm(dim=1, keepdim=True)
    bad = ~torch.isfinite(norms.squeeze(1)) | (norms.squeeze(1) == 0)
    if bad.any():
        raise DataError(
            f"SAE {name!r}: {int(bad.sum())} decoder row(s) (first: latent {int(bad.nonzero()[0])}) are zero or not finite; "
            "the meta-structure eval needs a direction for every latent"
        )
    return w_dec / norms


def meta_width(d_sae: int, cfg: MetaStructureConfig) -> int:
    """SAEBench's meta-SAE width: ``max(ceil(d_sae · width_ratio), k)``."""
    return max(math.ceil(d_sae * cfg.width_ratio), cfg.k)


@torch.no_grad()
def batch_reconstruction(meta: SAE, rows: Tensor, batch_size: int) -> Tensor:
    """``rows`` reconstructed by ``meta`` with its training selection, ``batch_size`` rows at a time."""
    device = meta.W_dec.device
    parts = [meta.loss(ActBatch(part.to(device)), StepCtx()).x_hat.float().cpu() for part in rows.split(batch_size)]
    return torch.cat(parts)


def fit_meta_sae(rows: Tensor, cfg: MetaStructureConfig, seed: int) -> dict[str, float]:
    """Train one meta-SAE on ``rows`` (seeded) and score it on them."""
    width = meta_width(rows.shape[0], cfg)
    meta = build("batch_topk", d_in=rows.shape[1], d_sae=width, k=cfg.k, lr=cfg.learning_rate, seed=seed)
    train_cfg = TrainConfig(
        steps=cfg.train_steps, batch_size=cfg.train_batch_size, seed=seed, lr_decay_fraction=0.0, normalize_activations=False,
        dead_tokens=cfg.dead_feature_window * cfg.train_batch_size, device=cfg.device, dtype="float32", progress=False,
    )  # fmt: skip
    started = time.perf_counter()
    run([meta], TensorSource(rows), train_cfg)
    seconds = time.perf_counter() - started
    x_hat = batch_reconstruction(meta, rows, cfg.eval_batch_size)
    fvu = metrics.fvu(rows, x_hat)
    return {
        "decoder_fraction_variance_explained": 0.0 if math.isnan(fvu) else 1 - fvu,
        "train_time_seconds": seconds,
        "final_reconstruction_mse": metrics.mse(rows, x_hat),
        "meta_width": width,
    }


def meta_structure(saes: Mapping[str, SAE], config: MetaStructureConfig | None = None, *, release: str | None = None) -> dict[str, dict[str, Any]]:
    """SAEBench ``meta_structure_decoder_variance`` output (a JSON-ready dict) of every SAE, by name."""
    from saekit.eval.bench.output import meta_structure_output

    cfg = config or MetaStructureConfig()
    if not saes:
        raise ConfigError("a benchmark needs at least one SAE")
    rows = {name: unit_rows(sae, name) for name, sae in saes.items()}  # every SAE checked before any training
    for name, sae in saes.items():
        if meta_width(sae.d_sae, cfg) >= sae.d_sae:
            raise ConfigError(
                f"SAE {name!r} has d_sae={sae.d_sae}: a meta-SAE of {meta_width(sae.d_sae, cfg)} latents (k={cfg.k}) would "
                "be as wide as the dictionary; the eval needs d_sae > max(ceil(width_ratio * d_sae), k)"
            )
    out = {}
    for name, sae in tqdm(saes.items(), desc="meta-SAEs", unit="SAE", leave=False):
        per_seed = [fit_meta_sae(rows[name], cfg, cfg.random_seed + s) for s in range(cfg.seeds)]
        out[name] = meta_structure_output(name, sae, per_seed, cfg, release)
    return out
