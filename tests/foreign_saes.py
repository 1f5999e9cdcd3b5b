"""Small SAE folders in other libraries' layouts, with random weights, for the converter tests.

Key names, shapes and file formats follow the libraries' own save code: Gemma Scope's hub
``params.npz``; sparsify's ``SparseCoder.save_to_disk`` (``cfg.json`` = SparseCoderConfig fields +
``d_in``, ``sae.safetensors`` = the module's state dict); dictionary_learning's ``trainSAE`` (``ae.pt`` =
``torch.save`` of the dictionary's state dict, ``config.json`` = ``{"trainer": ..., "buffer": ...}``).
Each writer returns the raw tensors it wrote, for the tests' own reference computations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

D_IN, D_SAE, K = 6, 20, 4


def randn(g: torch.Generator, *shape: int, scale: float = 1.0) -> Tensor:
    return torch.randn(shape, generator=g) * scale


def write_gemma_scope(folder: Path, seed: int = 0, d_in: int = D_IN, d_sae: int = D_SAE, **overrides: np.ndarray) -> dict[str, Tensor]:
    """params.npz with float32 arrays; thresholds include negative ones (Gemma Scope's formula ignores their sign)."""
    g = torch.Generator().manual_seed(seed)
    raw = {
        "W_enc": randn(g, d_in, d_sae),
        "W_dec": randn(g, d_sae, d_in),
        "b_enc": randn(g, d_sae, scale=0.5),
        "b_dec": randn(g, d_in, scale=0.5),
        "threshold": torch.rand(d_sae, generator=g) * 2.0 - 0.5,
    }
    arrays = {k: v.numpy() for k, v in raw.items()} | overrides
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **arrays)
    return raw


def sparsify_cfg(**changes) -> dict:
    """SparseCoderConfig.to_dict() plus d_in, as SparseCoder.save_to_disk writes it."""
    cfg = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": D_SAE,
        "k": K,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D_IN,
    }
    return cfg | changes


def write_sparsify(folder: Path, seed: int = 0, cfg: dict | None = None, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    raw = {
        "encoder.weight": randn(g, D_SAE, D_IN),
        "encoder.bias": randn(g, D_SAE, scale=0.5),
        "W_dec": randn(g, D_SAE, D_IN),
        "b_dec": randn(g, D_IN, scale=0.5),
    }
    raw = {k: v.to(dtype) for k, v in raw.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(raw, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(sparsify_cfg() if cfg is None else cfg))
    return raw


def dictionary_learning_state(dict_class: str, seed: int = 0, threshold: float = 0.3) -> dict[str, Tensor]:
    """The state dict of a dictionary_learning class, with the class's own key names and shapes."""
    g = torch.Generator().manual_seed(seed)
    linear = {
        "encoder.weight": randn(g, D_SAE, D_IN),  # nn.Linear(activation_dim, dict_size): [out, in]
        "encoder.bias": randn(g, D_SAE, scale=0.5),
        "decoder.weight": randn(g, D_IN, D_SAE),  # nn.Linear(dict_size, activation_dim, bias=False)
    }
    params = {
        "W_enc": randn(g, D_IN, D_SAE),
        "b_enc": randn(g, D_SAE, scale=0.5),
        "W_dec": randn(g, D_SAE, D_IN),
        "b_dec": randn(g, D_IN, scale=0.5),
    }
    buffers = {"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(threshold, dtype=torch.float32)}
    if dict_class == "AutoEncoder":
        return {"bias": randn(g, D_IN, scale=0.5), **linear}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        return {**buffers, **linear, "b_dec": randn(g, D_IN, scale=0.5)}
    if dict_class == "MatryoshkaBatchTopKSAE":
        return {**buffers, "group_sizes": torch.tensor([5, 15]), **params}
    if dict_class == "JumpReluAutoEncoder":
        return {**params, "threshold": torch.rand(D_SAE, generator=g) * 2.0 - 0.5}
    if dict_class == "GatedAutoEncoder":
        return {
            "decoder_bias": randn(g, D_IN, scale=0.5),
            "r_mag": randn(g, D_SAE, scale=0.5),
            "gate_bias": randn(g, D_SAE, scale=0.5),
            "mag_bias": randn(g, D_SAE, scale=0.5),
            "encoder.weight": randn(g, D_SAE, D_IN),  # nn.Linear(..., bias=False)
            "decoder.weight": randn(g, D_IN, D_SAE),
        }
    raise ValueError(dict_class)


def dictionary_learning_config(dict_class: str, **trainer) -> dict:
    """config.json as trainSAE writes it: the trainer's config and the buffer's."""
    base = {
        "trainer_class": "SomeTrainer",
        "dict_class": dict_class,
        "activation_dim": D_IN,
        "dict_size": D_SAE,
        "lr": 3e-4,
        "layer": 3,
        "lm_name": "EleutherAI/pythia-70m-deduped",
        "submodule_name": "resid_post_layer_3",
    }
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        base["k"] = K
    buffer = {"d_submodule": D_IN, "io": "out", "n_ctxs": 30, "ctx_len": 128, "refresh_batch_size": 8, "out_batch_size": 64, "device": "cpu"}
    return {"trainer": base | trainer, "buffer": buffer}


def write_dictionary_learning(folder: Path, dict_class: str, seed: int = 0, state: dict | None = None, config: dict | None = None) -> dict[str, Tensor]:
    state = dictionary_learning_state(dict_class, seed) if state is None else state
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps(dictionary_learning_config(dict_class) if config is None else config))
    return state


def activations(n: int = 64, seed: int = 7, d_in: int = D_IN) -> Tensor:
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed)) * 1.5
