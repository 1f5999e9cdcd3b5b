"""Recognising layouts: each folder by itself, saekit/SAELens first, folders of SAEs, and a message
that names the folder and what it holds when nothing matches."""

from __future__ import annotations

import json

import pytest
import torch
from foreign_saes import (
    D_IN,
    D_SAE,
    activations,
    dictionary_learning_config,
    sparsify_cfg,
    write_dictionary_learning,
    write_gemma_scope,
    write_sparsify,
)

import saekit
from saekit.errors import ArtifactError
from saekit.io.convert import detect_layout, find_saes, layout_of, read_any, read_one

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_layout_is_recognised_by_itself(tmp_path):
    write_gemma_scope(tmp_path / "g")
    write_sparsify(tmp_path / "s")
    write_dictionary_learning(tmp_path / "d", "AutoEncoder")
    saekit.save_sae(saekit.build_sae("topk", d_in=6, d_sae=20, k=4, seed=0), tmp_path / "k")
    assert [detect_layout(tmp_path / n) for n in "gsdk"] == ["gemma_scope", "sparsify", "dictionary_learning", "saekit"]
    assert detect_layout(tmp_path / "g" / "params.npz") == "gemma_scope"
    assert detect_layout(tmp_path) == "mixed"
    assert list(read_any(tmp_path)) == ["d", "g", "k", "s"]


def test_saekit_comes_first(tmp_path):
    # A saekit folder that also carries another library's file is read as saekit.
    sae = saekit.build_sae("relu", d_in=6, d_sae=20, seed=0)
    folder = saekit.save_sae(sae, tmp_path / "sae")
    write_gemma_scope(folder)
    assert layout_of(folder) == "saekit"
    loaded = saekit.load_sae(folder)
    assert "converted_from" not in loaded.metadata
    assert torch.equal(loaded.W_enc, sae.W_enc)


def test_broken_folders_get_their_own_layout_message(tmp_path):
    # A cfg.json alone is told apart by its keys, so the message names the right missing file.
    (tmp_path / "saekit").mkdir()
    (tmp_path / "saekit" / "cfg.json").write_text(json.dumps({"architecture": "topk", "d_in": 6, "d_sae": 20, "k": 4}))
    (tmp_path / "sparsify").mkdir()
    (tmp_path / "sparsify" / "cfg.json").write_text(json.dumps(sparsify_cfg()))
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "config.json").write_text(json.dumps(dictionary_learning_config("AutoEncoder")))
    with pytest.raises(ArtifactError, match="sae_weights.safetensors is missing"):
        saekit.load_sae(tmp_path / "saekit")
    with pytest.raises(ArtifactError, match="has no sae.safetensors"):
        saekit.load_sae(tmp_path / "sparsify")
    with pytest.raises(ArtifactError, match="no ae.pt"):
        saekit.load_sae(tmp_path / "dl")


def test_unknown_layout_names_the_folder_and_its_files(tmp_path):
    folder = tmp_path / "mystery"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"\0" * 8)
    (folder / "notes.txt").write_text("hi")
    message = r"no SAE found at .*mystery nor in its subfolders: it holds notes.txt, sub/, weights.bin\. Layouts saekit reads: saekit "
    with pytest.raises(ArtifactError, match=message):
        saekit.load_sae(folder)
    with pytest.raises(ArtifactError, match=message):
        detect_layout(folder)


def test_empty_folder_and_stray_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"empty nor in its subfolders: it is empty"):
        saekit.load_sae(tmp_path / "empty")
    (tmp_path / "acts.npy").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"no SAE at .*acts.npy: it is a file of no known layout"):
        saekit.load_sae(tmp_path / "acts.npy")


def test_search_depth_is_bounded(tmp_path):
    write_sparsify(tmp_path / "a" / "b" / "c" / "d" / "sae")  # five folders down: beyond MAX_DEPTH = 4
    write_sparsify(tmp_path / "a" / "b" / "c" / "sae")
    assert [f.name for f in find_saes(tmp_path)] == ["a/b/c/sae"]


def test_saekit_suite_is_a_folder_of_saes(tmp_path):
    saes = {f"s{i}": saekit.build_sae("topk", d_in=6, d_sae=20, k=4, seed=i) for i in range(2)}
    saekit.save_suite(saes, tmp_path / "suite")
    loaded = read_any(tmp_path / "suite")
    assert list(loaded) == ["s0", "s1"]
    x = activations()
    for name, sae in saes.items():
        assert torch.equal(loaded[name].encode(x), sae.encode(x))


def test_origin_survives_a_save_and_reload(tmp_path):
    write_sparsify(tmp_path / "layers.3")
    sae = read_one(tmp_path / "layers.3")
    folder = saekit.save_sae(sae, tmp_path / "converted")
    again = saekit.load_sae(folder)
    origin = {"layout": "sparsify", "path": str((tmp_path / "layers.3").resolve())}
    assert again.metadata["converted_from"] == origin
    assert again.provenance["converted_from"] == {**origin, "source_config": sparsify_cfg()}
    assert json.loads((folder / "cfg.json").read_text())["metadata"]["hook_name"] == "layers.3.resid_post"


def test_device_argument_is_honoured(tmp_path):
    write_gemma_scope(tmp_path / "g")
    assert saekit.load_sae(tmp_path / "g", device="meta").W_enc.device.type == "meta"


def test_foreign_weights_with_nan_are_refused_by_name(tmp_path):
    import numpy as np

    bad = np.zeros((D_IN, D_SAE), dtype=np.float32)
    bad[0, 0] = np.nan
    write_gemma_scope(tmp_path / "gs", W_enc=bad)
    with pytest.raises(ArtifactError, match="weights are unusable: W_enc holds 1 NaN or infinite value"):
        read_one(tmp_path / "gs")
