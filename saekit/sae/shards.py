"""The maths of a dictionary whose latents are split over ranks (latent-sharded training,
``parallel = "latents"``; :mod:`saekit.training.latent_shards` builds the shards).

Each rank holds a contiguous slice of the latents: its columns of ``W_enc`` and ``b_enc``, its rows of
``W_dec`` (and its thresholds), every rank the whole of ``b_dec``; every rank reads the same rows. A
loss then differs from one process's at four points, each a function here over ``StepCtx.latents``
(the ranks sharing the latents; with ``LOCAL`` each is the one-process computation):

* the decoder's output is a partial sum: :func:`summed` adds the ranks' parts (its backward hands
  each part the sum's gradient, which is the same on every rank);
* an input every rank's part reads (``b_dec`` subtracted before the encoder) gets a gradient from
  each part: :func:`shared` sums them in its backward, so the replicated parameter's gradient is one
  process's on every rank and needs no all-reduce;
* a selection over latents (TopK per row, AuxK among dead latents) is global: each rank's best
  candidates are gathered, the cut found, and each rank keeps its own entries above it
  (:func:`saekit.sae.sparse.row_topk_pattern`); BatchTopK's cut is computed the same way (:mod:`saekit.sae.batch_topk`);
* a sum over latents (L0) is :func:`summed` too.

These are Megatron's "f" and "g" operators of tensor parallelism, for an SAE.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.comm import Comm


class _Summed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, part: Tensor, comm: Comm) -> Tensor:
        return comm.sum_(part.clone())

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _Shared(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: Tensor, comm: Comm) -> Tensor:
        ctx.comm = comm
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.comm.sum_(grad.clone()), None


def summed(part: Tensor, latents: Comm) -> Tensor:
    """The sum over the ranks of each rank's ``part`` (the same tensor on every rank); the gradient of
    each part is the sum's. ``part`` itself in one process."""
    return _Summed.apply(part, latents) if latents.distributed else part


def shared(value: Tensor | None, latents: Comm) -> Tensor | None:
    """``value``, read by every rank's part: its gradient becomes the sum of the ranks' gradients."""
    return _Shared.apply(value, latents) if value is not None and latents.distributed else value
