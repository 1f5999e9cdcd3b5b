"""The compiled kernels of the training fast paths (:mod:`saekit._fast`), each with the torch
computation it replaces as the fallback.

:func:`row_topk` (``row_topk.c``) selects each row's top k, the TopK family's selection over the
[batch, d_sae] pre-activations (docs/benchmarks.md has its gain). C versions of the sparse backward
products of :mod:`saekit.sae.sparse` were tried and dropped: they are bound by reading scattered rows
of memory, and were no faster than torch's ``embedding_bag`` and ``sampled_addmm``.

The C file is compiled on first use with the system C compiler (``$CC``, else ``cc``) into one
library in ``<cache>/kernels`` (:func:`saekit.paths.cache_root`), once per machine and source version,
and loaded with ctypes; nothing is needed at install time. Without a compiler, with
``SAEKIT_KERNELS=0``, or for input a kernel does not take (not CPU float32, NaN present), the caller
runs the torch computation instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from saekit.atomic import write_file
from saekit.paths import cache_root

_SOURCES = sorted(Path(__file__).parent.glob("*.c"))
_GROUP = 16  # GROUP in row_topk.c: the kernel's scratch holds n_cols + n_cols // GROUP entries
_PARALLEL_MIN_ENTRIES = 1 << 20
"""Below this much work (entries read) one thread does it all (a hand-off costs tens of µs)."""

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)
"""(threads, process id) of ``_pool``."""


def _flags() -> list[list[str]]:
    """Compiler flags to try, best first: tuned to this CPU (the library is built on the machine that
    runs it), then portable."""
    return [["-O3", "-march=native"], ["-O3"]]


def _library_path() -> Path:
    # The CPU's feature flags are part of the key: -march=native code must not move to another CPU
    # through a shared home folder.
    cpu = ""
    try:
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    sources = b"".join(path.name.encode() + path.read_bytes() for path in _SOURCES)
    key = hashlib.sha256(sources + platform.machine().encode() + cpu.encode()).hexdigest()[:16]
    return cache_root() / "kernels" / f"saekit-kernels-{key}.so"


def _compile(target: Path) -> bool:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        return False
    for flags in _flags():

        def build(tmp: Path, flags: list[str] = flags) -> None:
            subprocess.run([compiler, *flags, "-shared", "-fPIC", "-o", str(tmp), *map(str, _SOURCES)], capture_output=True,
                           timeout=120, check=True)  # fmt: skip

        try:
            write_file(target, build)  # a reader never sees half a library
            return True
        except (OSError, subprocess.SubprocessError):
            continue
    return False


def _load() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None where they cannot be (then torch runs)."""
    global _library, _tried
    with _lock:
        if _tried:
            return _library
        _tried = True
        if os.environ.get("SAEKIT_KERNELS", "1") == "0":
            return None
        try:
            path = _library_path()
            if not path.exists() and not _compile(path):
                return None
            library = ctypes.CDLL(str(path))
        except OSError:
            return None
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        library.row_topk.restype = ctypes.c_int
        library.row_topk.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, ptr]
        _library = library
        return library


def available() -> bool:
    """Whether the compiled kernels run here (else every function falls back to torch)."""
    return _load() is not None


def _executor(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` workers, made anew for another count or in a forked child (whose copy of
    the parent's pool has no threads behind it and would never run a task)."""
    global _pool, _pool_key
    key = (threads, os.getpid())
    with _lock:
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[1] == key[1]:
                _pool.shutdown(wait=False)
            _pool, _pool_key = ThreadPoolExecutor(threads, thread_name_prefix="saekit-kernels"), key
        return _pool


def row_topk(scores: Tensor, k: int) -> Tensor | None:
    """[n_rows, k] int64: the columns of each row's k largest scores, ascending within the row; None
    where the kernel does not run (no compiler, not CPU float32, a NaN in the rows)."""
    library = _load() if scores.device.type == "cpu" and scores.dtype == torch.float32 else None
    if library is None or scores.shape[0] == 0 or scores.shape[1] >= 2**31:  # the kernel counts a row in 32 bits
        return None
    return _run(library, scores.detach().contiguous(), k)


def shutdown_pool() -> None:
    """Stop the worker threads (the end of a training run)."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None


def _split(n_parts: int, work: int, part) -> list:
    """``part(begin, end)`` over ``[0, n_parts)``: on the calling thread for small work, else split across
    torch's thread count (ctypes lets go of the GIL during a call, so the pieces run in parallel)."""
    threads = max(1, min(torch.get_num_threads(), n_parts)) if work >= _PARALLEL_MIN_ENTRIES else 1
    bounds = [n_parts * i // threads for i in range(threads + 1)]
    if threads == 1:
        return [part(0, n_parts)]
    return list(_executor(threads).map(part, bounds[:-1], bounds[1:]))


def _run(library: ctypes.CDLL, scores: Tensor, k: int) -> Tensor | None:
    n_rows, n_cols = scores.shape
    out = torch.empty(n_rows, k, dtype=torch.int64)
    scratch = n_cols + n_cols // _GROUP

    def part(begin: int, end: int) -> int:
        keys = torch.empty(scratch, dtype=torch.int32)
        ids = torch.empty(scratch, dtype=torch.int64)
        return library.row_topk(scores.data_ptr(), n_cols, begin, end, k, out.data_ptr(), keys.data_ptr(), ids.data_ptr())

    return None if any(_split(n_rows, scores.numel(), part)) else out
