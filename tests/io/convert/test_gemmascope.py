"""Gemma Scope params.npz folders read as saekit JumpReLU SAEs, checked against Gemma Scope's own
inference formula computed here from the raw arrays."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from foreign_saes import D_IN, D_SAE, activations, write_gemma_scope

import saekit
from saekit.errors import ArtifactError
from saekit.io.convert import read_any

pytestmark = pytest.mark.usefixtures("one_thread")


def gemma_scope_encode(x, p):
    """Gemma Scope's JumpReLU: pre = x W_enc + b_enc; 1[pre > θ] · ReLU(pre)."""
    pre = x @ p["W_enc"] + p["b_enc"]
    return (pre > p["threshold"]) * torch.relu(pre)


def gemma_scope_decode(f, p):
    return f @ p["W_dec"] + p["b_dec"]


def test_encode_and_decode_match_gemma_scope(tmp_path):
    raw = write_gemma_scope(tmp_path / "sae")
    sae = saekit.load_sae(tmp_path / "sae")
    x = activations()
    expected = gemma_scope_encode(x, raw)
    # The data exercises both sides of the thresholds, negative thresholds included.
    pre = x @ raw["W_enc"] + raw["b_enc"]
    assert ((pre > 0) & (pre <= raw["threshold"])).any() and (expected > 0).any()
    assert (raw["threshold"] < 0).any() and ((pre < 0) & (pre > raw["threshold"])).any()
    with torch.no_grad():
        codes = sae.encode(x)
        torch.testing.assert_close(codes, expected)
        torch.testing.assert_close(sae.decode(codes), gemma_scope_decode(expected, raw))
    assert sae.architecture == "jumprelu" and (sae.d_in, sae.d_sae) == (D_IN, D_SAE)
    assert sae.W_enc.dtype == torch.float32
    assert sae.provenance["converted_from"]["notes"] == [f"{int((raw['threshold'] < 0).sum())} negative thresholds stored as 0 (same codes)"]


def test_hub_layout_gives_site_model_and_origin(tmp_path):
    folder = tmp_path / "models--google--gemma-scope-2b-pt-res" / "snapshots" / "abc" / "layer_20" / "width_16k" / "average_l0_71"
    write_gemma_scope(folder)
    sae = saekit.load_sae(folder)
    assert sae.site == "layers.20.resid_post"
    assert sae.metadata["model"] == "google/gemma-2-2b"
    assert sae.metadata["converted_from"] == {"layout": "gemma_scope", "path": str((folder / "params.npz").resolve())}
    hub = sae.provenance["converted_from"]["hub"]
    assert hub == {"layer": 20, "width": "16k", "average_l0": 71, "release": "gemma-scope-2b-pt-res", "kind": "res"}


def test_mlp_release_maps_to_mlp_out_and_att_has_no_site(tmp_path):
    write_gemma_scope(tmp_path / "gemma-scope-9b-it-mlp" / "layer_4" / "width_16k" / "average_l0_12")
    write_gemma_scope(tmp_path / "gemma-scope-9b-pt-att" / "layer_4" / "width_16k" / "average_l0_12")
    mlp = saekit.load_sae(tmp_path / "gemma-scope-9b-it-mlp" / "layer_4" / "width_16k" / "average_l0_12")
    att = saekit.load_sae(tmp_path / "gemma-scope-9b-pt-att" / "layer_4" / "width_16k" / "average_l0_12")
    assert (mlp.site, mlp.metadata["model"]) == ("layers.4.mlp_out", "google/gemma-2-9b-it")
    assert att.site is None and att.metadata["model"] == "google/gemma-2-9b"


def test_params_file_itself_and_lower_case_keys(tmp_path):
    raw = write_gemma_scope(tmp_path / "sae")
    arrays = {k: v.numpy() for k, v in raw.items()}
    arrays["w_enc"], arrays["w_dec"] = arrays.pop("W_enc"), arrays.pop("W_dec")
    np.savez(tmp_path / "sae" / "params.npz", **arrays)
    sae = saekit.load_sae(tmp_path / "sae" / "params.npz")
    x = activations()
    torch.testing.assert_close(sae.encode(x).detach(), gemma_scope_encode(x, raw))


def test_float16_stays_float16(tmp_path):
    raw = write_gemma_scope(tmp_path / "sae")
    np.savez(tmp_path / "sae" / "params.npz", **{k: v.numpy().astype(np.float16) for k, v in raw.items()})
    sae = saekit.load_sae(tmp_path / "sae")
    assert sae.W_enc.dtype == torch.float16
    assert torch.equal(sae.W_dec, raw["W_dec"].half())


def test_a_width_folder_holds_several_saes(tmp_path):
    width = tmp_path / "layer_3" / "width_16k"
    write_gemma_scope(width / "average_l0_9", seed=1)
    write_gemma_scope(width / "average_l0_120", seed=2)
    saes = read_any(width)
    assert list(saes) == ["average_l0_9", "average_l0_120"]  # natural order
    assert not torch.equal(saes["average_l0_9"].W_enc, saes["average_l0_120"].W_enc)
    with pytest.raises(ArtifactError, match=r"width_16k is not itself an SAE folder but holds 2 below it \(average_l0_9, average_l0_120\)"):
        saekit.load_sae(width)


def test_missing_array_is_named(tmp_path):
    raw = write_gemma_scope(tmp_path / "sae")
    np.savez(tmp_path / "sae" / "params.npz", **{k: v.numpy() for k, v in raw.items() if k != "threshold"})
    with pytest.raises(ArtifactError, match=r"params.npz is not a valid Gemma Scope params.npz: missing threshold"):
        saekit.load_sae(tmp_path / "sae")


def test_wrong_shape_is_named(tmp_path):
    write_gemma_scope(tmp_path / "sae", W_dec=np.zeros((D_SAE, D_IN + 1), np.float32))
    with pytest.raises(ArtifactError, match=r"W_dec has shape \[20, 7\], expected \[d_sae, d_in\] = \[20, 6\]"):
        saekit.load_sae(tmp_path / "sae")


def test_object_arrays_are_refused(tmp_path):
    write_gemma_scope(tmp_path / "sae", threshold=np.array([{"x": 1}] * D_SAE, dtype=object))
    with pytest.raises(ArtifactError, match="threshold.npy holds pickled Python objects .*which saekit never loads"):
        saekit.load_sae(tmp_path / "sae")


def test_truncated_file(tmp_path):
    write_gemma_scope(tmp_path / "sae")
    path = tmp_path / "sae" / "params.npz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ArtifactError, match="params.npz is truncated or not an .npz file"):
        saekit.load_sae(tmp_path / "sae")


def test_scaling_factor_other_than_one_is_refused(tmp_path):
    write_gemma_scope(tmp_path / "ones", scaling_factor=np.ones(D_SAE, np.float32))
    assert saekit.load_sae(tmp_path / "ones").architecture == "jumprelu"
    write_gemma_scope(tmp_path / "scaled", scaling_factor=np.full(D_SAE, 2.0, np.float32))
    with pytest.raises(ArtifactError, match="scaling_factor other than 1"):
        saekit.load_sae(tmp_path / "scaled")


def test_an_extra_member_is_refused_from_its_header_before_decompression(tmp_path):
    """An extra member of 2^24 floats (64 MiB) stored in a few dozen KB: refused by name from its .npy
    header. Its compressed data is corrupted here, so decompressing it would fail instead."""
    write_gemma_scope(tmp_path / "sae")
    path = tmp_path / "sae" / "params.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2**24,)})
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("junk.npy", header.getvalue() + bytes(2**26))
    data = bytearray(path.read_bytes())
    data[data.index(b"PK\x01\x02") - 10] ^= 0xFF  # the end of junk.npy's compressed data
    path.write_bytes(bytes(data))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(ArtifactError, match=r"params.npz is not a valid Gemma Scope params.npz: unexpected junk \(found: .*junk \[16777216\]\)"):
        saekit.load_sae(tmp_path / "sae")


def test_a_consistent_zip_bomb_is_refused_by_its_compression_ratio(tmp_path):
    d_sae = 2**17  # every array the right shape, but all zeros: 12 MiB declared, a few KB stored
    (tmp_path / "sae").mkdir()
    with zipfile.ZipFile(tmp_path / "sae" / "params.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        for key, shape in {"W_enc": (D_IN, d_sae), "W_dec": (d_sae, D_IN), "b_enc": (d_sae,), "b_dec": (D_IN,), "threshold": (d_sae,)}.items():
            buffer = io.BytesIO()
            np.save(buffer, np.zeros(shape, np.float32))
            zf.writestr(f"{key}.npy", buffer.getvalue())
    with pytest.raises(ArtifactError, match="member W_enc.npy declares 3,145,856 bytes from .* compressed, a ratio no float weights reach"):
        saekit.load_sae(tmp_path / "sae")


def test_big_endian_arrays_are_read_exactly(tmp_path):
    raw = write_gemma_scope(tmp_path / "sae")
    np.savez(tmp_path / "sae" / "params.npz", **{k: v.numpy().astype(">f4") for k, v in raw.items()})
    sae = saekit.load_sae(tmp_path / "sae")
    assert torch.equal(sae.W_enc, raw["W_enc"]) and torch.equal(sae.b_dec, raw["b_dec"])


def test_scaling_factor_of_another_shape_is_refused_from_its_header(tmp_path):
    write_gemma_scope(tmp_path / "sae", scaling_factor=np.ones((D_SAE, 3), np.float32))
    with pytest.raises(ArtifactError, match=rf"scaling_factor has shape \[{D_SAE}, 3\], expected \[\] or \[{D_SAE}\]"):
        saekit.load_sae(tmp_path / "sae")
