"""The one place device and dtype names are resolved, and the autocast of a run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from saekit.errors import ConfigError


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; any other name as torch reads it, refused when it
    names CUDA on a machine without it."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a device name torch knows ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def as_dtype(name: str | torch.dtype) -> torch.dtype:
    """A floating torch dtype from its name (``"bfloat16"``) or itself."""
    if isinstance(name, torch.dtype):
        value = name
    else:
        value = getattr(torch, str(name), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ConfigError(f"dtype must be a floating torch dtype such as 'float32' or 'bfloat16', got {name!r}")
    return value


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
