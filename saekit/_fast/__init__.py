"""The fast paths of a training run, private to saekit and owned by training.

They change nothing outside a run: :func:`training_fast_paths` (entered by the training engine for
the whole run) switches them on and restores everything on exit. Outside it ``encode``, ``evaluate``
and imports never compile code, change the allocator or start threads: :func:`row_topk` is
``torch.topk``, :func:`saekit._fast.scratch.buffer` is ``torch.empty``.

* :mod:`.kernels`: the per-row top-k in C (the TopK family's selection), compiled on first use inside
  a run into the user cache and run on a small thread pool that is shut down when the run ends;
* :mod:`.heap`: glibc's mmap and trim thresholds raised for the run, so the large blocks of each step
  and of the model's forward passes are reused instead of faulted in afresh;
* :mod:`.scratch`: one reused buffer per shape for the per-step [batch, d_sae] pre-activations.

Each is kept because ``benchmarks/`` shows a whole-run gain (docs/benchmarks.md, "Why a training step is
fast"); each has a torch fallback with the same results up to float rounding and the order of ties.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import Tensor

from saekit._fast import heap, kernels, scratch

_active: ContextVar[bool] = ContextVar("saekit_training_fast_paths", default=False)


@contextlib.contextmanager
def training_fast_paths(device: torch.device) -> Iterator[None]:
    """Switch the fast paths on for the block (a training run on ``device``)."""
    token = _active.set(True)
    try:
        with heap.reuse_large_blocks(device), scratch.reusing():
            yield
    finally:
        _active.reset(token)
        if not _active.get():
            kernels.shutdown_pool()


def row_topk(scores: Tensor, k: int) -> Tensor:
    """[n_rows, k] int64: the columns of each row's k largest scores, ascending within the row (the
    choice among equal scores is free). The compiled kernel inside a run, ``torch.topk`` outside."""
    if scores.dim() != 2 or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"row_topk needs a 2-d tensor with 1 <= k <= its columns, got {tuple(scores.shape)} and k={k}")
    if _active.get():
        indices = kernels.row_topk(scores, k)
        if indices is not None:
            return indices
    return scores.detach().topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values


__all__ = ["row_topk", "training_fast_paths"]
