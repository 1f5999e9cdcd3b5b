"""Keep large CPU buffers in the heap for the duration of a training run.

Every training step allocates several [batch, d_sae] tensors (pre-activations, masks, gradients) of
tens of megabytes, and the model's forward passes larger ones. glibc serves blocks that large with a
fresh ``mmap`` and unmaps them when freed, so each step the kernel faults in and zeroes every page
again. Raising glibc's mmap and trim thresholds while the run lasts lets the heap reuse the same
blocks from step to step; on exit both thresholds go back to glibc's default value and the freed
memory is handed back to the system with ``malloc_trim``. (Once set by ``mallopt``, glibc no longer
adjusts its mmap threshold by itself: the process keeps the fixed default.) The gain is largest on
the model's forward passes (docs/benchmarks.md). Blocks nest: only the outermost one sets and
restores the thresholds.

Nothing happens on CUDA (its caching allocator already reuses blocks) or where glibc is absent
(macOS, Windows, musl): there the context manager does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator

import torch

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
GLIBC_DEFAULT_THRESHOLD = 128 * 1024
"""glibc's default for both thresholds (the mmap one is then adjusted dynamically, up to 32 MiB)."""
TRAINING_THRESHOLD = 1 << 30
"""Blocks up to 1 GiB come from the heap while training."""


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - only glibc (and a few look-alikes) have mallopt and malloc_trim
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_lock = threading.Lock()
_depth = 0
"""Open blocks across the process (the glibc settings are process-wide)."""
_applied = False


@contextlib.contextmanager
def reuse_large_blocks(device: torch.device) -> Iterator[bool]:
    """While the block runs, large CPU allocations are reused instead of mapped afresh; yields whether
    the setting took effect. Blocks nest: the outermost one sets the thresholds and restores them."""
    global _depth, _applied
    libc = _glibc() if device.type == "cpu" else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, TRAINING_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRAINING_THRESHOLD))
        _depth += 1
        applied = _applied
    try:
        yield applied
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
                libc.mallopt(M_TRIM_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
                libc.malloc_trim(0)
