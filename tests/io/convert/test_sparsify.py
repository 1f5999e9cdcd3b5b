"""EleutherAI sparsify folders (one per hookpoint, or a training checkpoint holding several) read as
saekit TopK SAEs, checked against sparsify's SparseCoder formula computed here from the raw tensors."""

from __future__ import annotations

import json

import pytest
import torch
from foreign_saes import D_IN, D_SAE, K, activations, sparsify_cfg, write_sparsify
from safetensors.torch import save_file

import saekit
from saekit.errors import ArtifactError
from saekit.io.convert import detect_layout, read_any

pytestmark = pytest.mark.usefixtures("one_thread")


def sparsify_encode(x, raw, k=K):
    """SparseCoder.encode: TopK of ReLU((x - b_dec) encoder.weightᵀ + encoder.bias), scattered to dense."""
    pre = torch.relu((x - raw["b_dec"]) @ raw["encoder.weight"].T + raw["encoder.bias"])
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def sparsify_decode(codes, raw):
    return codes @ raw["W_dec"] + raw["b_dec"]


def test_encode_and_decode_match_sparsify(tmp_path):
    raw = write_sparsify(tmp_path / "layers.3")
    sae = saekit.load_sae(tmp_path / "layers.3")
    x = activations()
    expected = sparsify_encode(x, raw)
    assert ((expected > 0).sum(-1) == K).all()  # TopK actually selects here, the ReLU rarely bites
    with torch.no_grad():
        codes = sae.encode(x)
        torch.testing.assert_close(codes, expected)
        torch.testing.assert_close(sae.decode(codes), sparsify_decode(expected, raw))
    assert (sae.architecture, sae.cfg.k, sae.d_in, sae.d_sae) == ("topk", K, D_IN, D_SAE)
    assert (sae.site, sae.metadata["hookpoint"]) == ("layers.3.resid_post", "layers.3")
    assert sae.metadata["converted_from"] == {"layout": "sparsify", "path": str((tmp_path / "layers.3").resolve())}
    assert sae.provenance["converted_from"]["source_config"] == sparsify_cfg()


def test_k_from_cfg_is_honoured(tmp_path):
    raw = write_sparsify(tmp_path / "sae", cfg=sparsify_cfg(k=2))
    sae = saekit.load_sae(tmp_path / "sae")
    x = activations()
    torch.testing.assert_close(sae.encode(x).detach(), sparsify_encode(x, raw, k=2))


def test_bfloat16_weights_keep_their_dtype(tmp_path):
    raw = write_sparsify(tmp_path / "sae", dtype=torch.bfloat16)
    sae = saekit.load_sae(tmp_path / "sae")
    assert sae.W_enc.dtype == torch.bfloat16
    assert torch.equal(sae.W_enc, raw["encoder.weight"].T)


def test_checkpoint_folder_holds_one_sae_per_hookpoint(tmp_path):
    run = tmp_path / "checkpoints" / "unnamed"
    raws = {name: write_sparsify(run / name, seed=i) for i, name in enumerate(["layers.10", "layers.2", "layers.9"])}
    # What sparsify's trainer writes beside the SAEs; none of it is read.
    (run / "config.json").write_text(json.dumps({"sae": sparsify_cfg(), "batch_size": 32, "model": "EleutherAI/pythia-160m"}))
    torch.save({"global_step": 3}, run / "state.pt")
    assert detect_layout(run) == "sparsify"
    saes = read_any(run)
    assert list(saes) == ["layers.2", "layers.9", "layers.10"]  # natural order, as sparsify's natsort
    x = activations()
    for name, sae in saes.items():
        assert sae.site == f"{name}.resid_post"
        torch.testing.assert_close(sae.encode(x).detach(), sparsify_encode(x, raws[name]))
    with pytest.raises(ArtifactError, match="holds 3 below it"):
        saekit.load_sae(run)


def test_several_seeds_per_hookpoint(tmp_path):
    write_sparsify(tmp_path / "layers.1" / "seed0", seed=0)
    write_sparsify(tmp_path / "layers.1" / "seed1", seed=1)
    saes = read_any(tmp_path)
    assert list(saes) == ["layers.1/seed0", "layers.1/seed1"]
    assert all(sae.metadata["hookpoint"] == "layers.1" for sae in saes.values())


@pytest.mark.parametrize(
    "hookpoint, site",
    [("h.4", "layers.4.resid_post"), ("layers.12", "layers.12.resid_post"), ("h.0.attn", None), ("embed_tokens", None)],
)
def test_block_outputs_become_resid_post_sites(tmp_path, hookpoint, site):
    write_sparsify(tmp_path / hookpoint)
    sae = saekit.load_sae(tmp_path / hookpoint)
    assert (sae.site, sae.metadata["hookpoint"]) == (site, hookpoint)


def test_missing_weights_file(tmp_path):
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(sparsify_cfg()))
    with pytest.raises(ArtifactError, match=r"looks like a sparsify folder but has no sae.safetensors"):
        saekit.load_sae(tmp_path / "sae")


def test_missing_cfg_file(tmp_path):
    write_sparsify(tmp_path / "sae")
    (tmp_path / "sae" / "cfg.json").unlink()
    with pytest.raises(ArtifactError, match=r"looks like a sparsify folder but has no cfg.json"):
        saekit.load_sae(tmp_path / "sae")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"transcode": True}, "transcode=true is a transcoder"),
        ({"skip_connection": True}, "skip_connection=true adds a linear skip path"),
        ({"activation": "groupmax"}, "activation='groupmax' is not supported"),
        ({"k": 0}, "k must be a positive integer, got 0"),
        ({"k": D_SAE + 1}, "the sparsify settings give no valid topk SAE"),
        ({"d_in": D_IN + 1}, r"d_in=7 but encoder.weight is \[20, 6\]"),
        ({"num_latents": 64}, "num_latents=64 but encoder.weight has 20 rows"),
    ],
)
def test_settings_saekit_cannot_honour_are_refused(tmp_path, change, message):
    write_sparsify(tmp_path / "sae", cfg=sparsify_cfg(**change))
    with pytest.raises(ArtifactError, match=message):
        saekit.load_sae(tmp_path / "sae")


def test_skip_weights_are_refused(tmp_path):
    raw = write_sparsify(tmp_path / "sae")
    save_file({**raw, "W_skip": torch.zeros(D_IN, D_IN)}, str(tmp_path / "sae" / "sae.safetensors"))
    with pytest.raises(ArtifactError, match="holds W_skip"):
        saekit.load_sae(tmp_path / "sae")


def test_wrong_and_missing_tensors_are_named_together(tmp_path):
    raw = write_sparsify(tmp_path / "sae")
    bad = {"encoder.weight": raw["encoder.weight"], "W_dec": torch.zeros(D_SAE, D_IN + 2), "b_dec": raw["b_dec"]}
    save_file(bad, str(tmp_path / "sae" / "sae.safetensors"))
    with pytest.raises(ArtifactError, match=r"missing encoder.bias; W_dec has shape \[20, 8\], expected \[d_sae, d_in\] = \[20, 6\]"):
        saekit.load_sae(tmp_path / "sae")


def test_corrupted_weights(tmp_path):
    write_sparsify(tmp_path / "sae")
    path = tmp_path / "sae" / "sae.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ArtifactError, match="sae.safetensors is truncated or corrupted"):
        saekit.load_sae(tmp_path / "sae")


def test_weights_are_checked_from_their_header_before_loading(tmp_path):
    """A header declaring 10^11 latents in a file of a few bytes is refused from the header itself."""
    write_sparsify(tmp_path / "sae")
    path = tmp_path / "sae" / "sae.safetensors"
    header = json.dumps({"encoder.weight": {"dtype": "F32", "shape": [10**11, D_IN], "data_offsets": [0, 4 * D_IN * 10**11]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ArtifactError, match="sae.safetensors is truncated or corrupted: its header declares 2,400,000,000,000 bytes"):
        saekit.load_sae(tmp_path / "sae")
