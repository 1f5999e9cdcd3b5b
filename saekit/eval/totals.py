"""Running sums over batches of (rows, reconstructions, codes) from which every activation metric of
:mod:`saekit.eval.evaluate` is computed at the end, in float64 on the evaluation device.

The total variance that FVU divides by is merged across batches with Chan et al.'s parallel update of
per-dimension means and squared deviations, which stays accurate when activations have a large common
offset (where Σ||x||² − n||x̄||² would cancel catastrophically).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saekit.errors import DataError
from saekit.eval import metrics


class Totals:
    """Running sums from which every metric of :func:`evaluate` is computed at the end."""

    def __init__(self, width: int, d_sae: int, device: torch.device) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64

        def zero(*shape: int) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.tokens = 0
        self.sq_err, self.sq_x, self.sq_x_hat, self.dot = zero(), zero(), zero(), zero()
        self.cos, self.l2_ratio, self.l2_ratio_tokens = zero(), zero(), zero()
        self.active = torch.zeros((), dtype=torch.int64, device=device)
        self.fired = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.mean, self.m2 = zero(width), zero(width)
        self.dtype = dtype

    def update(self, x: Tensor, x_hat: Tensor, codes: Tensor) -> None:
        n = x.shape[0]
        x, x_hat = x.to(self.dtype), x_hat.to(self.dtype)
        self.sq_err += (x - x_hat).pow(2).sum()
        self.sq_x += x.pow(2).sum()
        self.sq_x_hat += x_hat.pow(2).sum()
        self.dot += (x * x_hat).sum()
        self.cos += metrics.per_token_cosine(x, x_hat).sum()
        ratios = metrics.per_token_l2_ratio(x, x_hat)
        self.l2_ratio += ratios.sum()
        self.l2_ratio_tokens += ratios.numel()
        nonzero = codes != 0
        self.active += nonzero.sum()
        self.fired += nonzero.sum(0)
        batch_mean = x.mean(0)
        delta = batch_mean - self.mean
        total = self.tokens + n
        self.m2 += (x - batch_mean).pow(2).sum(0) + delta.pow(2) * (self.tokens * n / total)
        self.mean += delta * (n / total)
        self.tokens = total

    def result(self, dense_threshold: float) -> dict[str, Any]:
        n, d_in = self.tokens, self.mean.numel()
        if n < 2 or float(self.m2.sum()) == 0:
            # FVU divides by the activations' total variance: with one token, or all tokens equal, it
            # is 0 and every FVU would be NaN or infinite.
            raise DataError(
                f"FVU needs activations that vary: {n} token(s) read"
                + (", all equal" if n >= 2 else "")
                + "; evaluate on more tokens"
            )
        frequency = self.fired.double() / n
        fvu = metrics.safe_ratio(self.sq_err, self.m2.sum())
        return {
            "l0": float(self.active) / n,
            "fvu": fvu,
            "explained_variance": 1.0 - fvu,
            "mse": float(self.sq_err) / (n * d_in),
            "nmse": metrics.safe_ratio(self.sq_err, self.sq_x),
            "cos": float(self.cos) / n,
            "l2_ratio": metrics.safe_ratio(self.l2_ratio, self.l2_ratio_tokens),
            "relative_reconstruction_bias": metrics.safe_ratio(self.sq_x_hat, self.dot),
            "dead_fraction": float((self.fired == 0).double().mean()),
            "dense_fraction": float((frequency > dense_threshold).double().mean()),
            "density_histogram": metrics.density_histogram(frequency),
            "tokens": n,
        }
