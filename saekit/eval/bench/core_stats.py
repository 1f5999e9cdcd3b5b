"""SAEBench's core statistics (``sae_bench/evals/core/main.py``) where their formulas differ from
saekit's own (:mod:`saekit.eval.metrics`), as pure functions and one running accumulator.

SAEBench aggregates batch by batch; the quirks kept here make its numbers comparable with SAEBench's
tables (docs/metrics.md, "SAEBench's core eval"):

* ``explained_variance`` is ``1 − mean_b R_b / (mean_b A_b − (mean_b A_b / d)²)`` with ``A_b`` the
  batch's mean ``||x||²`` and ``R_b`` its mean ``||x − x̂||²``: the variance about zero, not about the
  mean (its per-dimension "mean" is a mean of squares). saekit's ``1 − FVU`` (centred) sits beside it.
* ``explained_variance_legacy`` is the mean over tokens of ``1 − ||x_n − x̂_n||² / ||x_n − x̄_b||²``
  (x̄_b the batch's mean token): a per-token ratio.
* ``mse`` is the mean over tokens of ``||x_n − x̂_n||² / N_b`` (N_b the batch's tokens), so it depends on
  the batch size; saekit's per-element MSE sits beside it.
* ``l2_ratio`` is the mean over tokens of ``||x̂_n|| / ||x_n||``, a norm below 1e-4 replaced by 1;
  ``relative_reconstruction_bias`` the mean over batches of ``E_b||x̂||² / E_b[x · x̂]``;
  ``l1`` the mean over tokens of the sum of the codes (no absolute value, as SAEBench).
* A latent's density counts codes ``> 0``; ``consistent_activation_heuristic`` is its firings per
  context it fires in (NaN, written -1 as SAEBench does, for a latent that never fires).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saekit.eval import metrics
from saekit.sae.base import SAE

TINY_NORM = 1e-4
"""SAEBench's l2_ratio divides by 1 instead of a norm below this."""


def l2_ratio_tokens(x: Tensor, x_hat: Tensor) -> Tensor:
    """[n] ``||x̂_n|| / ||x_n||``, the divisor 1 where ``||x_n|| < 1e-4`` (SAEBench's guard)."""
    norm = x.norm(dim=-1)
    return x_hat.norm(dim=-1) / torch.where(norm.abs() < TINY_NORM, torch.ones_like(norm), norm)


def legacy_explained_variance_tokens(x: Tensor, x_hat: Tensor) -> Tensor:
    """[n] ``1 − ||x_n − x̂_n||² / ||x_n − x̄||²`` with x̄ the mean of the rows given (one batch)."""
    return 1 - (x - x_hat).pow(2).sum(-1) / (x - x.mean(0)).pow(2).sum(-1)


def explained_variance(mean_sq: list[float], mean_resid: list[float], d: int) -> float:
    """SAEBench's ``explained_variance`` from each batch's mean ``||x||²`` and mean ``||x − x̂||²``."""
    total = statistics.fmean(mean_sq)
    return 1 - statistics.fmean(mean_resid) / (total - (total / d) ** 2)


def misc_metrics(density: Tensor, max_encoder_cos: Tensor | None, max_decoder_cos: Tensor) -> dict[str, float | None]:
    """SAEBench's ``misc_metrics`` from each latent's firing density and max cosine similarities."""
    density = density.double()
    total = density.sum()

    def share_above(threshold: float) -> float:
        return float(density[density > threshold].sum() / total) if total > 0 else 0.0

    return {
        "freq_over_1_percent": float((density > 0.01).double().mean()),
        "freq_over_10_percent": float((density > 0.1).double().mean()),
        "normalized_freq_over_1_percent": share_above(0.01),
        "normalized_freq_over_10_percent": share_above(0.1),
        "average_max_encoder_cosine_sim": None if max_encoder_cos is None else float(max_encoder_cos.double().mean()),
        "average_max_decoder_cosine_sim": float(max_decoder_cos.double().mean()),
        "frac_alive": float((density > 0).double().mean()),
    }


def max_cosine_sim(vectors: Tensor, chunk: int = 1024) -> Tensor:
    """[F] each row's largest cosine similarity with any other row of ``vectors [F, D]`` (-inf with one row)."""
    unit = torch.nn.functional.normalize(vectors.double(), dim=1)
    out = torch.empty(unit.shape[0], dtype=torch.float64)
    for start in range(0, unit.shape[0], chunk):
        sims = unit[start : start + chunk] @ unit.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -math.inf
        out[start : start + chunk] = sims.max(dim=1).values
    return out


def encoder_bias(sae: SAE) -> Tensor:
    """The bias SAEBench reports per latent: ``b_enc``; a gated SAE's magnitude bias; zeros without either."""
    if sae.has_b_enc:
        return sae.b_enc.detach()
    return sae.state_dict().get("b_mag", torch.zeros(sae.d_sae)).detach()


class WeightStats(NamedTuple):
    """SAEBench's per-latent weight statistics, each [d_sae] float64 (None: not defined, see :func:`weight_metrics`)."""

    encoder_bias: Tensor
    encoder_norm: Tensor
    encoder_decoder_cosine_sim: Tensor | None
    max_decoder_cosine_sim: Tensor
    max_encoder_cosine_sim: Tensor | None


def weight_metrics(sae: SAE) -> WeightStats:
    """SAEBench's per-latent weight statistics. A transcoder's encoder columns live in its input space
    and its decoder rows in its output space, so their cosines (encoder-decoder, max encoder) are None
    there; the decoder's own are kept."""
    w_enc = sae.W_enc.detach().double().cpu().T  # [d_sae, d_in]
    w_dec = sae.W_dec.detach().double().cpu()  # [d_sae, d_out]
    same_space = not sae.transcoder
    return WeightStats(
        encoder_bias=encoder_bias(sae).double().cpu(),
        encoder_norm=w_enc.norm(dim=1),
        encoder_decoder_cosine_sim=metrics.per_token_cosine(w_enc, w_dec) if same_space else None,
        max_decoder_cosine_sim=max_cosine_sim(w_dec),
        max_encoder_cosine_sim=max_cosine_sim(w_enc) if same_space else None,
    )


class CoreTotals:
    """Running sums of SAEBench's activation statistics of one SAE, fed one context batch at a time
    (``target [contexts, positions, d]``, ``x_hat`` and ``codes`` one row per (context, position))."""

    def __init__(self, d_sae: int) -> None:
        self.tokens = 0
        self.contexts = 0
        self.sums: dict[str, float] = dict.fromkeys(("l2_norm_in", "l2_norm_out", "l2_ratio", "l0", "l1", "explained_variance_legacy", "mse", "cossim"), 0.0)
        self.per_batch: dict[str, list[float]] = {"relative_reconstruction_bias": [], "mean_sq": [], "mean_resid": []}
        self.fired = torch.zeros(d_sae, dtype=torch.float64)
        self.fired_contexts = torch.zeros(d_sae, dtype=torch.float64)

    @torch.no_grad()
    def update(self, target: Tensor, x_hat: Tensor, codes: Tensor) -> None:
        dtype = torch.float32 if target.device.type == "mps" else torch.float64  # MPS has no float64
        x = target.reshape(-1, target.shape[-1]).to(dtype)
        x_hat, codes = x_hat.to(dtype), codes.to(dtype)
        n = x.shape[0]
        resid = (x - x_hat).pow(2).sum(-1)
        for key, values in (
            ("l2_norm_in", x.norm(dim=-1)),
            ("l2_norm_out", x_hat.norm(dim=-1)),
            ("l2_ratio", l2_ratio_tokens(x, x_hat)),
            ("l0", (codes != 0).sum(-1).to(dtype)),
            ("l1", codes.sum(-1)),
            ("explained_variance_legacy", legacy_explained_variance_tokens(x, x_hat)),
            ("mse", resid / n),
            ("cossim", metrics.per_token_cosine(x, x_hat)),
        ):
            self.sums[key] += float(values.sum())
        self.per_batch["relative_reconstruction_bias"].append(float(x_hat.pow(2).sum(-1).mean() / (x * x_hat).sum(-1).mean()))
        self.per_batch["mean_sq"].append(float(x.pow(2).sum(-1).mean()))
        self.per_batch["mean_resid"].append(float(resid.mean()))
        positive = (codes > 0).reshape(target.shape[0], -1, codes.shape[-1]).cpu()
        self.fired += positive.sum(dim=(0, 1)).double()
        self.fired_contexts += positive.any(dim=1).sum(0).double()
        self.tokens += n
        self.contexts += target.shape[0]

    def result(self, d: int) -> dict[str, Any]:
        """Token means, SAEBench's explained variance (``d`` the width reconstructed) and per-latent densities."""
        out: dict[str, Any] = {key: value / self.tokens for key, value in self.sums.items()}
        out["relative_reconstruction_bias"] = statistics.fmean(self.per_batch["relative_reconstruction_bias"])
        out["explained_variance"] = explained_variance(self.per_batch["mean_sq"], self.per_batch["mean_resid"], d)
        out["feature_density"] = self.fired / self.tokens
        out["consistent_activation_heuristic"] = self.fired / self.fired_contexts
        return out
