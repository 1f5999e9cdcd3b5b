"""Reused CPU buffers for the per-step [batch, d_sae] pre-activations of the sparse training paths.

A sparse training step fills one dense [batch, d_sae] matrix (tens of megabytes) and drops it before the
step ends. PyTorch asks glibc for such blocks with ``posix_memalign``, whose request is a little larger
than the block it hands back, so a freed block rarely fits the next step's request: the heap grows
instead and the kernel faults in (and zeroes) every page again. Measured on the 30-site suite (2-core
CPU): the [4096, 576] @ [576, 4608] encoder product took 18,432 page faults every step (its whole
result) and none with a reused buffer. The training loop therefore opens :func:`reusing`, and inside it
:func:`buffer` hands out the same tensor for the same shape from step to step.

A buffer is handed out again only when nobody else holds it, so a caller that keeps a result alive gets a
fresh tensor rather than one that the next step overwrites. Callers must not keep views of a buffer
(their storage is not counted): the sparse paths consume it within the step (``topk`` and gathers copy).
Outside :func:`reusing`, on CUDA (whose caching allocator already reuses blocks) and in other threads,
:func:`buffer` is a plain ``torch.empty``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from contextvars import ContextVar

import torch

_pool: ContextVar[dict[tuple, torch.Tensor] | None] = ContextVar("saekit_scratch_pool", default=None)


def _refcount_of_an_unheld_pooled_tensor() -> int:
    """``sys.getrefcount`` of a tensor held only by a pool dict, read as :func:`buffer` reads it (the
    count depends on the interpreter, so it is measured rather than assumed)."""
    pool = {0: torch.empty(0)}
    pooled = pool.get(0)
    return sys.getrefcount(pooled)


_HELD_BY_POOL_ONLY = _refcount_of_an_unheld_pooled_tensor()


@contextlib.contextmanager
def reusing() -> Iterator[None]:
    """While the block runs, :func:`buffer` reuses CPU tensors of the same shape; they are freed on exit."""
    token = _pool.set({})
    try:
        yield
    finally:
        _pool.reset(token)


def buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor, the same one as at the last call with this shape if nobody holds it."""
    pool = _pool.get()
    if pool is None or device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    key = (tuple(shape), dtype, device)
    pooled = pool.get(key)
    if pooled is None or sys.getrefcount(pooled) > _HELD_BY_POOL_ONLY:
        pooled = pool[key] = torch.empty(shape, dtype=dtype, device=device)
    return pooled
