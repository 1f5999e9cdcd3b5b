"""dictionary_learning ``ae.pt`` + ``config.json`` folders read as saekit SAEs, each class checked
against its own encode / decode written here from the raw state dict; ``ae.pt`` is only ever read
with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import json

import pytest
import torch
from foreign_saes import (
    D_IN,
    D_SAE,
    K,
    activations,
    dictionary_learning_config,
    dictionary_learning_state,
    write_dictionary_learning,
)

import saekit
from saekit.errors import ArtifactError
from saekit.io.convert import detect_layout, read_any

pytestmark = pytest.mark.usefixtures("one_thread")


def _topk_dense(acts, k):
    values, indices = acts.topk(k, dim=-1)
    return torch.zeros_like(acts).scatter(-1, indices, values)


# Each dictionary class's default encode and its decode, as dictionary.py and trainers/*.py write them.
def encode_autoencoder(x, s):
    return torch.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])


def decode_autoencoder(f, s):
    return f @ s["decoder.weight"].T + s["bias"]


def encode_topk(x, s):
    return _topk_dense(torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"]), int(s["k"]))


def encode_batch_topk(x, s):
    post = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    return post * (post > s["threshold"])


def decode_linear_b_dec(f, s):
    return f @ s["decoder.weight"].T + s["b_dec"]


def encode_matryoshka(x, s):
    post = torch.relu((x - s["b_dec"]) @ s["W_enc"] + s["b_enc"])
    return post * (post > s["threshold"])


def encode_jumprelu(x, s):
    pre = x @ s["W_enc"] + s["b_enc"]
    return torch.relu(pre * (pre > s["threshold"]))


def decode_params(f, s):
    return f @ s["W_dec"] + s["b_dec"]


def encode_gated(x, s):
    x_enc = (x - s["decoder_bias"]) @ s["encoder.weight"].T
    gate = (x_enc + s["gate_bias"] > 0).float()
    mag = torch.relu(s["r_mag"].exp() * x_enc + s["mag_bias"])
    return gate * mag


def decode_gated(f, s):
    return f @ s["decoder.weight"].T + s["decoder_bias"]


CASES = {
    "AutoEncoder": ("relu", encode_autoencoder, decode_autoencoder),
    "AutoEncoderTopK": ("topk", encode_topk, decode_linear_b_dec),
    "BatchTopKSAE": ("batch_topk", encode_batch_topk, decode_linear_b_dec),
    "MatryoshkaBatchTopKSAE": ("matryoshka_batch_topk", encode_matryoshka, decode_params),
    "JumpReluAutoEncoder": ("jumprelu", encode_jumprelu, decode_params),
    "GatedAutoEncoder": ("gated", encode_gated, decode_gated),
}


@pytest.mark.parametrize("dict_class", list(CASES))
def test_encode_and_decode_match_the_dictionary(tmp_path, dict_class):
    architecture, encode, decode = CASES[dict_class]
    state = write_dictionary_learning(tmp_path / "trainer_0", dict_class)
    sae = saekit.load_sae(tmp_path / "trainer_0")
    x = activations()
    expected = encode(x, state)
    # Some codes are kept and some are zeroed, so the comparison tests the selection rule.
    assert 0 < (expected > 0).float().mean() < 1
    with torch.no_grad():
        codes = sae.encode(x)
        torch.testing.assert_close(codes, expected)
        torch.testing.assert_close(sae.decode(codes), decode(expected, state))
    assert (sae.architecture, sae.d_in, sae.d_sae) == (architecture, D_IN, D_SAE)
    if architecture in ("topk", "batch_topk", "matryoshka_batch_topk"):
        assert sae.cfg.k == K
    assert sae.metadata == {
        "model": "EleutherAI/pythia-70m-deduped",
        "site": "layers.3.resid_post",
        "converted_from": {"layout": "dictionary_learning", "path": str((tmp_path / "trainer_0").resolve())},
    }
    assert sae.provenance["converted_from"]["dict_class"] == dict_class


def test_batch_topk_threshold_actually_selects(tmp_path):
    # Against the reference above the threshold could be trivially right if it zeroed nothing.
    state = write_dictionary_learning(tmp_path / "t", "BatchTopKSAE")
    post = torch.relu((activations() - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
    assert ((post > 0) & (post <= state["threshold"])).any()
    assert torch.equal(saekit.load_sae(tmp_path / "t").threshold, torch.full((D_SAE,), float(state["threshold"])))


def test_unset_batch_topk_threshold_is_refused(tmp_path):
    write_dictionary_learning(tmp_path / "t", "BatchTopKSAE", state=dictionary_learning_state("BatchTopKSAE", threshold=-1.0))
    with pytest.raises(ArtifactError, match=r"threshold is -1.0, i.e. never learned"):
        saekit.load_sae(tmp_path / "t")


def test_matryoshka_group_sizes_become_the_prefix_widths(tmp_path):
    write_dictionary_learning(tmp_path / "t", "MatryoshkaBatchTopKSAE")  # group sizes 5 and 15
    assert saekit.load_sae(tmp_path / "t").cfg.widths == (5, D_SAE)


@pytest.mark.parametrize(
    ("group_sizes", "message"),
    [([5, 10], r"last of widths must be d_sae=20 .* got \[5, 15\]"), ([0, 20], "widths must be positive, got 0")],
)
def test_matryoshka_group_sizes_that_are_no_nesting_of_the_dictionary_are_refused(tmp_path, group_sizes, message):
    state = dictionary_learning_state("MatryoshkaBatchTopKSAE") | {"group_sizes": torch.tensor(group_sizes)}
    write_dictionary_learning(tmp_path / "t", "MatryoshkaBatchTopKSAE", state=state)
    with pytest.raises(ArtifactError, match=rf"dictionary_learning settings give no valid matryoshka_batch_topk SAE: .*{message}"):
        saekit.load_sae(tmp_path / "t")


def test_a_sweep_folder_holds_one_sae_per_trainer(tmp_path):
    sweep = tmp_path / "resid_post_layer_3"
    write_dictionary_learning(sweep / "trainer_0", "AutoEncoderTopK", seed=0)
    write_dictionary_learning(sweep / "trainer_1", "BatchTopKSAE", seed=1)
    assert detect_layout(sweep) == "dictionary_learning"
    saes = read_any(sweep)
    assert [(name, sae.architecture) for name, sae in saes.items()] == [("trainer_0", "topk"), ("trainer_1", "batch_topk")]


class NotATensor:
    pass


def test_pickled_objects_are_refused_by_weights_only(tmp_path):
    state = dictionary_learning_state("AutoEncoder")
    write_dictionary_learning(tmp_path / "t", "AutoEncoder", state={**state, "extra": NotATensor()})
    with pytest.raises(
        ArtifactError,
        match=r"ae.pt holds Python objects other than tensors, which saekit refuses to unpickle .*: it refers to .*NotATensor",
    ):
        saekit.load_sae(tmp_path / "t")


def test_numpy_arrays_are_refused_too(tmp_path):
    state = dictionary_learning_state("AutoEncoder")
    write_dictionary_learning(tmp_path / "t", "AutoEncoder", state={**state, "bias": state["bias"].numpy()})
    with pytest.raises(ArtifactError, match=r"refuses to unpickle .*: it refers to numpy"):
        saekit.load_sae(tmp_path / "t")


def test_plain_values_that_are_not_tensors_are_named(tmp_path):
    state = dictionary_learning_state("AutoEncoder")
    write_dictionary_learning(tmp_path / "t", "AutoEncoder", state={**state, "note": "hello", "step": 3})
    with pytest.raises(ArtifactError, match=r"must hold only tensors; these are not: note \(str\), step \(int\)"):
        saekit.load_sae(tmp_path / "t")


def test_training_backup_is_refused(tmp_path):
    state = dictionary_learning_state("AutoEncoder")
    backup = {"step": 500, "ae": state, "optimizer": {"state": {}, "param_groups": []}, "config": {}, "norm_factor": None}
    write_dictionary_learning(tmp_path / "t", "AutoEncoder", state=backup)
    with pytest.raises(ArtifactError, match=r"is a training backup \(step 500\)"):
        saekit.load_sae(tmp_path / "t")


def test_missing_config_json(tmp_path):
    write_dictionary_learning(tmp_path / "t", "AutoEncoder")
    (tmp_path / "t" / "config.json").unlink()
    with pytest.raises(ArtifactError, match=r"has ae.pt but no config.json: dictionary_learning writes both"):
        saekit.load_sae(tmp_path / "t")


def test_missing_ae_pt(tmp_path):
    write_dictionary_learning(tmp_path / "t", "AutoEncoder")
    (tmp_path / "t" / "ae.pt").unlink()
    with pytest.raises(ArtifactError, match=r"has a dictionary_learning config.json but no ae.pt"):
        saekit.load_sae(tmp_path / "t")


def test_truncated_ae_pt(tmp_path):
    write_dictionary_learning(tmp_path / "t", "AutoEncoder")
    path = tmp_path / "t" / "ae.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="ae.pt is truncated or not a torch file"):
        saekit.load_sae(tmp_path / "t")


def test_wrong_shapes_and_extra_keys_are_named(tmp_path):
    state = dictionary_learning_state("GatedAutoEncoder")
    state["r_mag"] = torch.zeros(D_SAE + 1)
    state["b_enc"] = torch.zeros(D_SAE)
    write_dictionary_learning(tmp_path / "t", "GatedAutoEncoder", state=state)
    with pytest.raises(ArtifactError, match=r"unexpected b_enc; r_mag has shape \[21\], expected \[d_sae\] = \[20\]"):
        saekit.load_sae(tmp_path / "t")


def test_unsupported_dict_class(tmp_path):
    write_dictionary_learning(tmp_path / "t", "AutoEncoder", config=dictionary_learning_config("AutoEncoderNew"))
    with pytest.raises(ArtifactError, match=r"dict_class 'AutoEncoderNew' is not supported \(supported: AutoEncoder, "):
        saekit.load_sae(tmp_path / "t")


def test_k_must_agree_with_the_config(tmp_path):
    write_dictionary_learning(tmp_path / "t", "AutoEncoderTopK", config=dictionary_learning_config("AutoEncoderTopK", k=8))
    with pytest.raises(ArtifactError, match=r"the k buffer is 4 but config.json says k=8"):
        saekit.load_sae(tmp_path / "t")


def test_in_to_out_dictionaries_are_refused(tmp_path):
    config = dictionary_learning_config("AutoEncoder")
    config["buffer"]["io"] = "in_to_out"
    write_dictionary_learning(tmp_path / "t", "AutoEncoder", config=config)
    with pytest.raises(ArtifactError, match=r"io='in_to_out' trains a map between two activations"):
        saekit.load_sae(tmp_path / "t")


def test_config_without_trainer_block(tmp_path):
    write_dictionary_learning(tmp_path / "t", "AutoEncoder")
    (tmp_path / "t" / "config.json").write_text(json.dumps({"buffer": {}}))
    with pytest.raises(ArtifactError, match=r"config.json must hold a 'trainer' object with a 'dict_class' name"):
        saekit.load_sae(tmp_path / "t")


def test_site_is_left_out_when_the_submodule_is_not_the_residual_stream(tmp_path):
    write_dictionary_learning(tmp_path / "t", "AutoEncoder", config=dictionary_learning_config("AutoEncoder", submodule_name="mlp_out_layer_3"))
    assert saekit.load_sae(tmp_path / "t").site is None
