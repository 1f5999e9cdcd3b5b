"""Two ranks under NCCL on two CUDA devices, in every mode, end with the weights of the same run in
one process on one device. Skipped without two GPUs (a run on one rank issues no collective, so NCCL's
path needs two); ``benchmarks/gpu.sh`` runs it on a lent machine, as it runs every file naming cuda."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit.training import train
from tests.training.test_distributed import SETTINGS, WORLD, _data, _exit, _leave, _saes, _states, spawn_ranks
from tests.training.test_latent_shards import _saes as latent_saes

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < WORLD, reason=f"needs {WORLD} CUDA devices")
CUDA = {**SETTINGS, "device": "cuda", "dtype": "float32"}


def _models(mode: str):
    return latent_saes() if mode == "latents" else _saes()


def _worker(rank: int, store: str, out: str, mode: str) -> None:
    os.environ["LOCAL_RANK"] = str(rank)  # as torchrun sets it: each rank its own GPU
    torch.distributed.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        result = train(_models(mode), _data(), steps=6, parallel=mode, **CUDA)
        if rank == 0:
            save_file(_states(result.saes), str(Path(out) / f"{mode}.safetensors"))
    finally:
        _leave()
    _exit()


@pytest.mark.parametrize("mode", ["data", "sites", "latents", "fsdp"])
def test_nccl_ranks_train_what_one_device_trains(tmp_path, mode):
    spawn_ranks(_worker, (str(tmp_path / "store"), str(tmp_path), mode))
    got = load_file(tmp_path / f"{mode}.safetensors")
    want = _states(train(_models(mode), _data(), steps=6, **CUDA).saes)
    assert got.keys() == want.keys()
    for key in want:  # float32 on the GPU; the ranks sum in another order than one device
        scale = want[key].float().norm().clamp_min(1e-6)
        assert float((got[key].float() - want[key].float()).norm() / scale) <= 1e-4, key
