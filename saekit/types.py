"""Named types shared by sources, architectures, the training loop and evaluation.

Everything that crosses a module boundary is one of these, so that a function never returns a bare
tuple whose shape depends on a flag.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor


class ActBatch(NamedTuple):
    """Activations of one site for a batch of tokens.

    x:    [batch, d_in] activations, one row per token.
    grad: [batch, d_in] gradient of the language-model loss with respect to ``x``, when the source
          computes it (gradient-aware SAEs use it for latent selection); ``None`` otherwise.
    """

    x: Tensor
    grad: Tensor | None = None


@dataclass(frozen=True)
class StepCtx:
    """What an SAE's ``loss`` may know about training progress.

    step:           optimiser steps taken before this one (0 on the first step).
    total_steps:    steps the run will take in all.
    sparsity_scale: multiplier in [0, 1] on the sparsity coefficient (linear warm-up).
    dead_mask:      [d_sae] bool, latents that have not fired for the dead-latent window; ``None``
                    when not tracked (evaluation, a single call from user code).
    """

    step: int = 0
    total_steps: int = 1
    sparsity_scale: float = 1.0
    dead_mask: Tensor | None = None

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))


class LossOut(NamedTuple):
    """Result of ``SAE.loss``.

    loss:  scalar to minimise.
    x_hat: [batch, d_in] reconstruction used by the loss.
    codes: [batch, d_sae] latent activations used by the loss (training-time selection, which for
           batch-coupled architectures may differ from ``encode``). The sparse training paths give a
           detached sparse CSR tensor, so that no dense matrix is filled each step; ``codes.to_dense()``
           works on either layout.
    terms: named scalar parts of the objective and diagnostics (``mse``, ``l1``, ``l0``, ``aux_k``, ...),
           logged verbatim. Values are detached tensors.
    fired: optional [d_sae] bool, the latents with a non-zero code in the batch (``(codes != 0).any(0)``),
           given by architectures that know it from their sparse selection so that the training loop's
           dead-latent count need not scan the dense codes; None: the loop computes it from ``codes``.
    """

    loss: Tensor
    x_hat: Tensor
    codes: Tensor
    terms: dict[str, Tensor]
    fired: Tensor | None = None


@runtime_checkable
class ActivationSource(Protocol):
    """Anything that yields activation batches for one or more sites.

    ``batches(batch_size, seed=..., start=n)`` must yield exactly the batches that an iteration from
    ``start=0`` would yield after skipping ``n`` of them, so that an interrupted run resumes exactly.
    """

    @property
    def sites(self) -> tuple[str, ...]: ...

    def d_in(self, site: str) -> int: ...

    def batches(self, batch_size: int, *, seed: int, start: int = 0) -> Iterator[Mapping[str, ActBatch]]: ...

    def describe(self) -> dict: ...


@dataclass(frozen=True)
class Recovery:
    """How well a learned dictionary recovers known feature directions.

    mmcs:      mean over true features of the maximum cosine similarity with any learned direction.
    recovered: fraction of true features whose best match has cosine >= ``threshold``.
    threshold: the cosine used for ``recovered``.
    best_cos:  [n_true] best cosine of each true feature.
    """

    mmcs: float
    recovered: float
    threshold: float
    best_cos: Tensor = field(repr=False)


def as_float(value: Tensor | float) -> float:
    return float(value.detach().cpu()) if isinstance(value, torch.Tensor) else float(value)
