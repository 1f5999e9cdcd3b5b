"""Named types shared by sources, architectures, the training loop and evaluation.

Everything that crosses a module boundary is one of these, so that a function never returns a bare
tuple whose shape depends on a flag.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, final, runtime_checkable

import torch
from torch import Tensor

from saekit.comm import LOCAL, Comm


class ActBatch(NamedTuple):
    """Activations of one site for a batch of tokens.

    x:      [batch, d_in] activations, one row per token.
    grad:   [batch, d_in] gradient of the language-model loss with respect to ``x``, when the source
            computes it (gradient-aware SAEs use it for latent selection); ``None`` otherwise.
    target: [batch, d_out] the same tokens' activations at the site a transcoder reconstructs (its
            ``site_out``), which the engine hands to a transcoder's loss; ``None`` for an SAE, which
            reconstructs ``x`` (sources yield one ActBatch per site and leave it ``None``).
    """

    x: Tensor
    grad: Tensor | None = None
    target: Tensor | None = None


@dataclass(frozen=True)
class StepCtx:
    """What an SAE's ``loss`` may know about training progress.

    step:           optimiser steps taken before this one (0 on the first step).
    total_steps:    steps the run will take in all.
    sparsity_scale: multiplier in [0, 1] on the sparsity coefficient (linear warm-up).
    dead_mask:      [d_sae] bool, latents that have not fired for the dead-latent window; ``None``
                    when not tracked (evaluation, a single call from user code).
    comm:           the ranks sharing the batch (:mod:`saekit.comm`); a loss that couples the rows of
                    a batch makes that computation global through it. One process: ``LOCAL``.
    latents:        the ranks sharing the SAE's latents (latent-sharded training): the SAE holds a
                    slice of them, and its loss sums and selects over the ranks through it
                    (:mod:`saekit.sae.shards`). ``LOCAL``: the SAE holds all of its latents.
    """

    step: int = 0
    total_steps: int = 1
    sparsity_scale: float = 1.0
    dead_mask: Tensor | None = None
    comm: Comm = LOCAL
    latents: Comm = LOCAL

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))


@final
class Codes:
    """The [rows, d_sae] codes a training loss selected (``LossOut.codes``): one type out of every path.

    A dense path hands over its strided tensor (leading dimensions flattened into rows; with autograd
    where the loss has it). A sparse path (the TopK family, JumpReLU's sparse regime) hands over a
    detached sparse CSR tensor, so that no dense [rows, d_sae] matrix is filled each step, and the
    latents that fired when its selection already knows them. What the engine and the architectures
    read of the codes is a method here: no consumer branches on the layout.
    """

    __slots__ = ("_fired", "_values")

    def __init__(self, values: Tensor, fired: Tensor | None = None) -> None:
        if values.layout == torch.strided and values.dim() >= 2:
            values = values.reshape(-1, values.shape[-1])
        elif values.layout != torch.sparse_csr or values.dim() != 2:
            raise ValueError(f"codes are a dense [..., d_sae] or a sparse CSR [rows, d_sae] tensor, got {values.layout} {tuple(values.shape)}")
        self._values = values
        self._fired = fired

    @property
    def shape(self) -> torch.Size:
        """``(rows, d_sae)``."""
        return self._values.shape

    def to_dense(self) -> Tensor:
        """The codes as a dense [rows, d_sae] tensor (the tensor itself on a dense path)."""
        return self._values.to_dense() if self._values.layout == torch.sparse_csr else self._values

    def fired(self) -> Tensor:
        """[d_sae] bool: the latents with a non-zero code on some row."""
        if self._fired is not None:
            return self._fired
        if self._values.layout == torch.sparse_csr:
            fired = torch.zeros(self.shape[1], dtype=torch.bool, device=self._values.device)
            return fired.index_fill_(0, self._values.col_indices()[self._values.values() != 0], True)
        return (self._values != 0).any(0)

    def density(self) -> Tensor:
        """[d_sae] fraction of the rows on which each latent is non-zero (detached)."""
        rows = max(1, self.shape[0])
        if self._values.layout == torch.sparse_csr:
            nonzero = self._values.values() != 0
            counts = torch.zeros(self.shape[1], device=self._values.device)
            return counts.index_add_(0, self._values.col_indices()[nonzero], nonzero[nonzero].float()) / rows
        return (self._values.detach() != 0).float().sum(0) / rows

    def smallest_positive(self, per_latent: bool = False) -> Tensor:
        """Smallest positive code: one scalar for all rows, or one per latent ([d_sae]); NaN where no
        code is positive (detached)."""
        if self._values.layout == torch.sparse_csr:
            values, cols = self._values.values(), self._values.col_indices()
        else:
            values = self._values.detach()
        positive = values.masked_fill(values <= 0, float("inf"))
        if not per_latent:
            smallest = positive.amin() if positive.numel() else positive.new_tensor(float("inf"))
        elif self._values.layout == torch.sparse_csr:
            smallest = positive.new_full((self.shape[1],), float("inf")).scatter_reduce_(0, cols, positive, "amin")
        else:
            smallest = positive.amin(0)
        return smallest.masked_fill(smallest.isinf(), float("nan"))


class LossOut(NamedTuple):
    """Result of ``SAE.loss``.

    loss:  scalar to minimise.
    x_hat: [batch, d_in] reconstruction used by the loss.
    codes: the latent activations used by the loss (training-time selection, which for batch-coupled
           architectures may differ from ``encode``), as :class:`Codes`.
    terms: named scalar parts of the objective and diagnostics (``mse``, ``l1``, ``l0``, ``aux_k``, ...),
           logged verbatim. Values are detached tensors.
    """

    loss: Tensor
    x_hat: Tensor
    codes: Codes
    terms: dict[str, Tensor]


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


@runtime_checkable
class RowSource(Protocol):
    """A source that can read one site once, in order (TensorSource, SyntheticSource)."""

    def iter_rows(
        self, batch_size: int, *, site: str | None = None, max_rows: int | None = None
    ) -> Iterator[Tensor]: ...


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
