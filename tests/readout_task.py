"""A synthetic task where small features matter downstream: the activation ``x`` is the concatenation
of a "loud" part (large planted features that the read-out ignores) and a "quiet" part (small planted
features that decide the read-out), followed by a fixed linear read-out and a cross-entropy loss.

    x      = [Σ loud c_i f_i , Σ quiet c_j f_j]          loud magnitudes ≫ quiet magnitudes
    logits = R x,  R zero on the loud coordinates       the fixed differentiable read-out
    label  = argmax R x                                  what the downstream "model" predicts
    L(x)   = CE(R x, label),  grad = ∂L/∂x = Rᵀ(softmax(R x) − onehot(label))

The source yields ``ActBatch(x, grad)`` like a language-model source with gradients, and batch ``i``
is a pure function of ``(seed, i)``.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import Tensor

from saekit.sources.synthetic import SyntheticSource
from saekit.types import ActBatch


class Downstream(NamedTuple):
    ce: float
    """Mean read-out cross-entropy of the reconstruction against the labels of the original."""
    clean_ce: float
    """The same for the original activations."""
    accuracy: float
    """Fraction of tokens whose read-out argmax survives the reconstruction."""


class ReadoutSource:
    def __init__(self, d_half: int = 16, n_loud: int = 48, n_quiet: int = 48, n_classes: int = 8, seed: int = 0):
        self.loud = SyntheticSource(d=d_half, n_features=n_loud, mean_active=3, magnitude_min=1.5, magnitude_max=2.5, seed=seed)
        self.quiet = SyntheticSource(d=d_half, n_features=n_quiet, mean_active=3, magnitude_min=0.2, magnitude_max=0.4, seed=seed + 1)
        g = torch.Generator().manual_seed(seed + 2)
        self.readout = torch.cat([torch.zeros(n_classes, d_half), 3.0 * torch.randn(n_classes, d_half, generator=g)], dim=1)
        self.d = 2 * d_half
        self.seed = seed

    sites = ("readout",)

    def d_in(self, site: str) -> int:
        return self.d

    def describe(self) -> dict:
        return {"kind": "readout-task", "d": self.d, "seed": self.seed}

    def rows(self, index: int, n: int, seed: int) -> Tensor:
        loud = self.loud.batch(index, n, seed=seed).x
        quiet = self.quiet.batch(index, n, seed=seed + 1000).x
        return torch.cat([loud, quiet], dim=1)

    def labels(self, x: Tensor) -> Tensor:
        return (x @ self.readout.T).argmax(-1)

    def grad(self, x: Tensor) -> Tensor:
        logits = x @ self.readout.T
        probs = logits.softmax(-1)
        return (probs - torch.nn.functional.one_hot(logits.argmax(-1), probs.shape[-1]).float()) @ self.readout

    def batches(self, batch_size: int, *, seed: int, start: int = 0):
        for i in itertools.count(start):
            x = self.rows(i, batch_size, seed)
            yield {"readout": ActBatch(x, self.grad(x))}

    def held_out(self, n: int) -> Tensor:
        return self.rows(10**6, n, seed=12345)

    def downstream(self, x: Tensor, x_hat: Tensor) -> Downstream:
        labels = self.labels(x)
        ce = torch.nn.functional.cross_entropy(x_hat @ self.readout.T, labels)
        clean = torch.nn.functional.cross_entropy(x @ self.readout.T, labels)
        acc = (self.labels(x_hat) == labels).float().mean()
        return Downstream(float(ce), float(clean), float(acc))
