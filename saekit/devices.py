"""The one place device and dtype names are resolved, and the autocast of a run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

import torch

from saekit.errors import ConfigError

RUNS_ON = ("cpu", "cuda", "mps", "meta")
"""Device types saekit computes on ("meta": shapes only, no data)."""
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
"""The floating dtypes an SAE can be computed (and so loaded) in."""


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; any other name as torch reads it, refused by name
    when this machine has no such device (CUDA or MPS missing, a CUDA index past the last GPU) or it is
    a kind saekit does not run on."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in RUNS_ON:
        raise ConfigError(f"device {name!r} is not one saekit runs on: \"auto\", {', '.join(RUNS_ON)} (\"cuda:1\" for a given GPU)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} requested but MPS is not available")
    return device


def as_dtype(name: str | torch.dtype) -> torch.dtype:
    """One of :data:`COMPUTE_DTYPES` from its name (``"bfloat16"``, ``"torch.bfloat16"``) or itself. Other
    floating dtypes (float8) only store numbers: torch cannot compute an SAE's matmuls in them."""
    value = name if isinstance(name, torch.dtype) else getattr(torch, str(name).removeprefix("torch."), None)
    if value in COMPUTE_DTYPES:
        return value
    names = ", ".join(repr(str(d).removeprefix("torch.")) for d in COMPUTE_DTYPES)
    if isinstance(value, torch.dtype) and value.is_floating_point:
        raise ConfigError(f"dtype {name!r} is a storage format torch cannot compute SAEs in; use one of {names}")
    raise ConfigError(f"dtype must be one of {names}, got {name!r}")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype of a run: ``name``, or for "auto" bfloat16 on CUDA devices with bfloat16 support
    and float32 elsewhere (where bfloat16 matmuls are slower without AMX units)."""
    if name != "auto":
        return as_dtype(name)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


@contextlib.contextmanager
def autocast(name: str, devices: Iterable[torch.device]) -> Iterator[None]:
    """Autocast to the run's dtype ``name`` (as :func:`resolve_dtype` resolves it per device) on every
    device type of ``devices``; float32 means no autocast."""
    with contextlib.ExitStack() as stack:
        for device in {d.type: d for d in devices}.values():
            dtype = resolve_dtype(name, device)
            if dtype != torch.float32:
                stack.enter_context(torch.autocast(device.type, dtype=dtype))
        yield


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: under ``torchrun`` (``LOCAL_RANK`` set), an unnumbered "cuda" becomes
    this process's own GPU, ``cuda:<LOCAL_RANK>``, so that the ranks of a machine do not share GPU 0."""
    local = os.environ.get("LOCAL_RANK")
    if device.type == "cuda" and device.index is None and local is not None:
        return torch.device("cuda", int(local))
    return device
