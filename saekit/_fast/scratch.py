"""Reused CPU buffers for the per-step [batch, d_sae] pre-activations of the sparse training paths.

A sparse training step fills one dense [batch, d_sae] matrix (tens of megabytes) and drops it before the
step ends. PyTorch asks glibc for such blocks with ``posix_memalign``, whose request is a little larger
than the block it hands back, so a freed block rarely fits the next step's request: the heap grows
instead and the kernel faults in (and zeroes) every page again. Inside :func:`reusing` (the training
engine's run), :func:`buffer` hands out the same tensor for the same shape every time.

Contract: a buffer is valid until the next :func:`buffer` call with the same shape, dtype and device.
The sparse paths of :mod:`saekit.sae.sparse` consume their pre-activations within the ``loss`` call
that made them (selections and gathers copy what they keep; autograd saves none of it), and the
engine runs one ``loss`` call at a time, so no caller can see its buffer overwritten. Outside
:func:`reusing` and on CUDA (whose caching allocator already reuses blocks), :func:`buffer` is a plain
``torch.empty``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch

_pool: ContextVar[dict[tuple, torch.Tensor] | None] = ContextVar("saekit_scratch_pool", default=None)


@contextlib.contextmanager
def reusing() -> Iterator[None]:
    """While the block runs, :func:`buffer` reuses CPU tensors of the same shape; they are freed on exit."""
    token = _pool.set({})
    try:
        yield
    finally:
        _pool.reset(token)


def buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor: inside :func:`reusing`, the same one for the same shape every time."""
    pool = _pool.get()
    if pool is None or device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    key = (tuple(shape), dtype, device)
    if key not in pool:
        pool[key] = torch.empty(shape, dtype=dtype, device=device)
    return pool[key]
