"""Hostile saekit / SAELens folders: each is an ArtifactError naming the file and the key, never a raw
error or an allocation the folder's contents do not justify."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from saekit.errors import ArtifactError
from saekit.io import load_sae, save_sae
from saekit.sae import build

D_IN, D_SAE = 8, 16


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    sae = build("topk", d_in=D_IN, d_sae=D_SAE, k=2, seed=0)
    sae.metadata = {"site": "layers.1.resid_post", "model": "m"}
    return save_sae(sae, tmp_path / "sae")


def edit_cfg(folder: Path, edit) -> None:
    path = folder / "cfg.json"
    cfg = json.loads(path.read_text())
    edited = edit(cfg)
    path.write_text(json.dumps(edited if isinstance(edited, list) else cfg))


def as_saelens(cfg: dict) -> None:
    del cfg["saekit"]


# ---------------------------------------------------------------------------------------------
# Item 2: SAELens keys beside the saekit block must describe the same SAE


@pytest.mark.parametrize(
    "key, value, ours",
    [
        ("architecture", "standard", "'topk'"),
        ("d_in", D_IN + 1, str(D_IN)),
        ("d_sae", 2 * D_SAE, str(D_SAE)),
        ("k", 5, "2"),
        ("k", 2.0, "2"),  # SAELens would call topk with a float
        ("apply_b_dec_to_input", False, "True"),
        ("rescale_acts_by_decoder_norm", True, "False"),
        ("normalize_activations", "layer_norm", "'none'"),
        ("reshape_activations", "hook_z", "'none'"),
    ],
)
def test_saelens_keys_that_disagree_with_the_saekit_block_are_refused(folder, key, value, ours):
    edit_cfg(folder, lambda cfg: cfg.update({key: value}))
    with pytest.raises(ArtifactError, match=rf"cfg.json: {key} is {value!r} for SAELens but the saekit block's topk SAE has {key}={ours}"):
        load_sae(folder)


def test_a_dtype_that_disagrees_with_the_stored_weights_is_refused(folder):
    edit_cfg(folder, lambda cfg: cfg.update(dtype="float16"))
    with pytest.raises(ArtifactError, match="cfg.json: dtype is 'float16' but sae_weights.safetensors stores W_enc as float32"):
        load_sae(folder)


# ---------------------------------------------------------------------------------------------
# Item 3: dtypes


@pytest.mark.parametrize(
    "dtype, message",
    [
        ("float8_e4m3fn", "dtype 'float8_e4m3fn' is a storage format torch cannot compute SAEs in"),
        ("junk", "dtype must be one of 'float32', 'bfloat16', 'float16', 'float64', got 'junk'"),
        (5, "dtype must be one of .*, got 5$"),
    ],
)
def test_cfg_dtypes_saekit_cannot_compute_in_are_refused(folder, dtype, message):
    edit_cfg(folder, lambda cfg: cfg.update(dtype=dtype))
    with pytest.raises(ArtifactError, match=f"cfg.json: {message}"):
        load_sae(folder)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_and_double_folders_load_and_encode(tmp_path, dtype):
    sae = build("topk", d_in=D_IN, d_sae=D_SAE, k=2, seed=0).to(dtype)
    folder = save_sae(sae, tmp_path / "sae")
    loaded = load_sae(folder)
    assert loaded.W_enc.dtype == dtype
    x = torch.randn(4, D_IN, dtype=dtype)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    edit_cfg(folder, as_saelens)  # a SAELens folder is cast to its cfg.json dtype, as SAELens does
    edit_cfg(folder, lambda cfg: cfg.update(dtype="float32"))
    assert load_sae(folder).W_enc.dtype == torch.float32


def test_float8_weights_are_refused_by_name(folder):
    path = folder / "sae_weights.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in load_file(path).items()}, str(path))
    with pytest.raises(ArtifactError, match="W_enc is stored as torch.float8_e4m3fn, a floating-point format SAEs are not computed in"):
        load_sae(folder)


# ---------------------------------------------------------------------------------------------
# Item 5: other hostile cfg.json and weights


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda cfg: [cfg], "cfg.json must hold a JSON object, found list"),
        (lambda cfg: cfg.update(saekit=[1]), "the saekit block must hold an architecture name and a config table"),
        (lambda cfg: cfg["saekit"].update(architecture=["topk"]), "the saekit block must hold an architecture name"),
        (lambda cfg: (as_saelens(cfg), cfg.update(architecture=["topk"])), r"SAELens architecture \['topk'\] has no saekit equivalent"),
        (lambda cfg: (as_saelens(cfg), cfg.update(apply_b_dec_to_input=1)), "apply_b_dec_to_input=1 is not saekit's 'topk'"),
        (lambda cfg: cfg["metadata"].update(hook_name=["layers.1"]), r"hook_name must be a string, found \['layers.1'\]"),
        (lambda cfg: cfg.update(metadata=[1]), "metadata must be a JSON object, found list"),
    ],
)
def test_malformed_cfg_json_is_named(folder, edit, message):
    edit_cfg(folder, edit)
    with pytest.raises(ArtifactError, match=message):
        load_sae(folder)


@pytest.mark.parametrize("saekit_block", [True, False])
def test_a_cfg_json_declaring_huge_shapes_allocates_nothing(folder, saekit_block):
    """d_sae = 10^12 would be 32 TB of float32: refused from the weights' header, not by the allocator."""

    def huge(cfg):
        cfg["d_sae"] = 10**12
        if saekit_block:
            cfg["saekit"]["config"]["d_sae"] = 10**12
        else:
            as_saelens(cfg)

    edit_cfg(folder, huge)
    with pytest.raises(ArtifactError, match=r"does not match the topk SAE of its cfg.json: W_dec has shape \[16, 8\] but the config needs \[1000000000000, 8\]"):
        load_sae(folder)


def test_a_weights_header_declaring_huge_shapes_is_refused(folder):
    header = json.dumps({"W_enc": {"dtype": "F32", "shape": [D_IN, 10**11], "data_offsets": [0, 4 * D_IN * 10**11]}}).encode()
    (folder / "sae_weights.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ArtifactError, match="sae_weights.safetensors is truncated or corrupted: its header declares 3,200,000,000,000 bytes"):
        load_sae(folder)


@pytest.mark.parametrize(
    "text, message",
    [
        (b"\xff\xfe{}", r"cfg.json is not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "cfg.json nests lists or objects deeper than 64 levels"),
        (b'{"d_sae": 16, "d_sae": 99}', "cfg.json: key 'd_sae' is given twice in one object"),
    ],
)
def test_unreadable_cfg_json_is_named(folder, text, message):
    (folder / "cfg.json").write_bytes(text)
    with pytest.raises(ArtifactError, match=message):
        load_sae(folder)


@pytest.mark.parametrize("name", ["cfg.json", "sae_weights.safetensors", "provenance.json"])
def test_a_folder_or_a_symlink_loop_where_a_file_should_be_is_named(folder, name):
    (folder / name).unlink()
    (folder / name).mkdir()
    with pytest.raises(ArtifactError, match=f"{name} is a folder, not a file"):
        load_sae(folder)
    os.rmdir(folder / name)
    (folder / name).symlink_to(folder / name)
    with pytest.raises(ArtifactError, match=f"{name} cannot be opened: Too many levels of symbolic links"):
        load_sae(folder)
