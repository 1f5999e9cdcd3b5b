"""Device and dtype names: unknown or absent devices and dtypes that cannot compute are named."""

from __future__ import annotations

import pytest
import torch

from saekit.devices import as_dtype, resolve_device
from saekit.errors import ConfigError


@pytest.mark.parametrize("name", ["tpu", "xla", "cuda:x", "", "gpu0"])
def test_devices_saekit_does_not_run_on_are_named(name):
    with pytest.raises(ConfigError, match=f"device {name!r} is not one saekit runs on"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_on_a_machine_without_it():
    with pytest.raises(ConfigError, match="device 'cuda:99' requested but CUDA is not available"):
        resolve_device("cuda:99")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_index_past_the_last_gpu():
    with pytest.raises(ConfigError, match=f"device 'cuda:99': this machine has {torch.cuda.device_count()} CUDA device"):
        resolve_device("cuda:99")


def test_known_devices_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("meta").type == "meta"
    assert resolve_device("auto").type in ("cpu", "cuda")


@pytest.mark.parametrize("name", ["float32", "torch.bfloat16", "float16", "float64", torch.float16])
def test_compute_dtypes(name):
    assert as_dtype(name).is_floating_point


@pytest.mark.parametrize(
    "name, message",
    [
        ("float8_e4m3fn", "dtype 'float8_e4m3fn' is a storage format torch cannot compute SAEs in"),
        (torch.float8_e5m2, "is a storage format torch cannot compute SAEs in"),
        ("int32", "dtype must be one of 'float32', 'bfloat16', 'float16', 'float64', got 'int32'"),
        ("junk", "got 'junk'"),
        ("__class__", "got '__class__'"),
    ],
)
def test_other_dtypes_are_refused(name, message):
    with pytest.raises(ConfigError, match=message):
        as_dtype(name)
