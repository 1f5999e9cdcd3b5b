"""Saved SAE folders: exact round trips, the SAELens-facing cfg.json, atomic overwrites, and errors
that name the broken file."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import saekit
from saekit import atomic
from saekit.errors import ArtifactError, UnknownArchitectureError
from saekit.io import artifact, is_sae_folder, load_sae, load_suite, save_sae, save_suite
from saekit.sae import SAE, build, get, list_architectures
from saekit.types import ActBatch, StepCtx
from tests.io.saelens_reference import reference_encode, reference_forward
from tests.tolerance import assert_close_normwise

D_IN, D_SAE = 12, 48
D_OUT = 10
"""A transcoder's output width here, unlike its input's."""
ARCHITECTURES = list_architectures()
SAELENS_LOADS = [name for name in ARCHITECTURES if name not in ("topk_transcoder", "crosscoder", "topk_clt")]
"""The architectures SAELens 6.54 has an inference class for (it has no TopK transcoder, crosscoder or cross-layer transcoder)."""
SAELENS_CASES = [pytest.param(name, {}, id=name) for name in SAELENS_LOADS] + [
    pytest.param(name, {"skip": True}, id=f"{name}-skip") for name in SAELENS_LOADS if get(name).transcoder
]
"""Those architectures, and each transcoder among them with its skip connection too."""

# Pinned independently of the classes' attributes: (SAELens class, apply_b_dec_to_input).
SAELENS_NAMES = {
    "relu": ("standard", True),
    "topk": ("topk", True),
    "batch_topk": ("jumprelu", True),
    "matryoshka_batch_topk": ("jumprelu", True),
    "jumprelu": ("jumprelu", False),
    "gated": ("gated", True),
    "relu_transcoder": ("transcoder", False),
    "jumprelu_transcoder": ("jumprelu_transcoder", False),
    "batch_topk_transcoder": ("jumprelu_transcoder", False),
}
SKIP_NAMES = {"relu_transcoder": "skip_transcoder", "jumprelu_transcoder": "jumprelu_skip_transcoder", "batch_topk_transcoder": "jumprelu_skip_transcoder"}


def build_any(name: str, seed: int = 0, **hparams) -> SAE:
    """``build`` with this file's widths; a transcoder writes D_OUT unless told otherwise."""
    extra = {"d_out": D_OUT} if get(name).transcoder else {}
    return build(name, d_in=D_IN, d_sae=D_SAE, seed=seed, **(extra | hparams))


def sites_of(sae: SAE) -> dict:
    """The metadata of the sites ``sae`` reads and, for a transcoder, writes."""
    return {"site": "layers.3.resid_post"} | ({"site_out": "layers.3.mlp_out"} if sae.transcoder else {})


def perturbed(name: str, seed: int = 0, **hparams) -> SAE:
    """An SAE whose every tensor is random, so that no default value can hide a lost tensor."""
    sae = build_any(name, seed, **hparams)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for t in sae.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
            elif t.dtype == torch.bool:
                t.copy_(torch.rand(t.shape, generator=g) > 0.5)
            else:
                t.copy_(torch.randint(0, 100, t.shape, generator=g))
    sae.metadata = sites_of(sae) | {"model": "smollm2-135m", "normalization_factor": 1.75}
    return sae


def assert_same_sae(a: SAE, b: SAE) -> None:
    assert type(a) is type(b)
    assert a.cfg == b.cfg
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        if key in a.training_state:  # not saved: a loaded SAE starts its training schedule afresh
            assert torch.equal(sb[key], type(a)(a.cfg).state_dict()[key]), key
        else:
            assert torch.equal(sa[key], sb[key]), key
    x = torch.randn(32, a.d_in, generator=torch.Generator().manual_seed(7)).to(a.W_enc.dtype)
    assert torch.equal(a.encode(x), b.encode(x))
    assert torch.equal(a(x), b(x))


def read_cfg(folder: Path) -> dict:
    return json.loads((folder / "cfg.json").read_text())


def write_cfg(folder: Path, cfg: dict) -> None:
    (folder / "cfg.json").write_text(json.dumps(cfg))


def saved(tmp_path: Path, name: str = "topk") -> Path:
    return save_sae(perturbed(name), tmp_path / "sae")


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_round_trip_is_exact(tmp_path, name):
    sae = perturbed(name)
    folder = save_sae(sae, tmp_path / "sae", provenance={"seed": 3})
    loaded = load_sae(folder)
    assert_same_sae(sae, loaded)
    assert loaded.metadata == sae.metadata
    assert loaded.site == "layers.3.resid_post"
    assert loaded.provenance["seed"] == 3


def test_round_trip_keeps_a_non_default_dtype(tmp_path):
    sae = perturbed("topk").to(torch.bfloat16)
    folder = save_sae(sae, tmp_path / "sae")
    assert read_cfg(folder)["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(folder / "sae_weights.safetensors").values()} == {torch.bfloat16}
    assert_same_sae(sae, load_sae(folder))


def test_weights_file_holds_exactly_the_state_dict_in_fp32(tmp_path):
    sae = perturbed("topk")
    tensors = load_file(save_sae(sae, tmp_path / "sae") / "sae_weights.safetensors")
    assert tensors.keys() == sae.state_dict().keys()
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_provenance_merges_the_sae_own_with_the_given_one(tmp_path):
    sae = perturbed("topk")
    sae.provenance = {"tokens": 1000, "seed": 1}
    folder = save_sae(sae, tmp_path / "sae", provenance={"seed": 2})
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["tokens"] == 1000 and prov["seed"] == 2
    assert prov["saekit_version"] == saekit.__version__
    assert datetime.fromisoformat(prov["saved_at"]).tzinfo is not None


def test_load_moves_to_the_requested_device(tmp_path):
    loaded = load_sae(saved(tmp_path), device="meta")
    assert all(t.device.type == "meta" for t in loaded.state_dict().values())


# ---------------------------------------------------------------------------------------------
# cfg.json as SAELens reads it


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_cfg_json_has_the_saelens_keys(tmp_path, name):
    sae = perturbed(name)
    cfg = read_cfg(save_sae(sae, tmp_path / "sae"))
    assert cfg["architecture"] == sae.saelens_architecture
    assert cfg["apply_b_dec_to_input"] is sae.apply_b_dec_to_input
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["device"]) == (D_IN, D_SAE, "float32", "cpu")
    assert cfg["normalize_activations"] == cfg["reshape_activations"] == "none"
    assert cfg["sae_lens_version"] == artifact.SAELENS_FORMAT  # else SAELens drops our metadata
    out = {"hook_name_out": "layers.3.mlp_out", "d_out": D_OUT} if sae.transcoder else {}
    assert cfg["metadata"] == {"model_name": "smollm2-135m", "hook_name": "layers.3.resid_post", "normalization_factor": 1.75} | {
        k: v for k, v in out.items() if k == "hook_name_out"
    }
    assert cfg.get("d_out") == out.get("d_out")
    for key, value in sae.extra_saelens_cfg().items():
        assert cfg[key] == value
    assert cfg["saekit"] == {
        "architecture": name,
        "config": saekit.strict.to_dict(sae.cfg),
        "version": saekit.__version__,
        "normalization_factor": 1.75,
    }


@pytest.mark.parametrize("name", sorted(set(SAELENS_NAMES) & set(ARCHITECTURES)))
def test_saelens_architecture_names_are_pinned(tmp_path, name):
    cfg = read_cfg(save_sae(perturbed(name), tmp_path / "sae"))
    assert (cfg["architecture"], cfg["apply_b_dec_to_input"]) == SAELENS_NAMES[name]


@pytest.mark.parametrize("name", sorted(SKIP_NAMES))
def test_a_skip_transcoder_is_saved_as_saelens_skip_class(tmp_path, name):
    cfg = read_cfg(save_sae(perturbed(name, skip=True), tmp_path / "sae"))
    assert (cfg["architecture"], cfg["d_out"]) == (SKIP_NAMES[name], D_OUT)
    assert load_file(tmp_path / "sae" / "sae_weights.safetensors")["W_skip"].shape == (D_OUT, D_IN)


def test_topk_writes_k_for_saelens(tmp_path):
    cfg = read_cfg(save_sae(perturbed("topk", k=7), tmp_path / "sae"))
    assert cfg["k"] == 7
    assert cfg["rescale_acts_by_decoder_norm"] is False


def test_unknown_metadata_value_is_named(tmp_path):
    sae = perturbed("topk")
    sae.metadata["bad"] = object()
    with pytest.raises(ArtifactError, match="cfg.json"):
        save_sae(sae, tmp_path / "sae")
    assert not (tmp_path / "sae").exists()


# ---------------------------------------------------------------------------------------------
# Folders written by SAELens itself (no saekit block)


def as_saelens_folder(folder: Path) -> dict:
    """Strip what only saekit writes, leaving the cfg.json SAELens's own save_model would write."""
    cfg = read_cfg(folder)
    del cfg["saekit"], cfg["sae_lens_version"]
    cfg["metadata"] = {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post", "sae_lens_version": "6.54.12"}
    write_cfg(folder, cfg)
    (folder / "provenance.json").unlink()
    return cfg


# batch_topk, matryoshka_batch_topk and batch_topk_transcoder are absent: without a saekit block a
# SAELens "jumprelu" ("jumprelu_transcoder") means saekit's jumprelu (jumprelu_transcoder).
@pytest.mark.parametrize(
    ("name", "hparams"),
    [(n, {}) for n in ("relu", "topk", "jumprelu", "gated", "relu_transcoder", "jumprelu_transcoder")]
    + [("relu_transcoder", {"skip": True}), ("jumprelu_transcoder", {"skip": True})],
)
def test_saelens_folder_loads_as_the_matching_class(tmp_path, name, hparams):
    sae = perturbed(name, **hparams)
    folder = save_sae(sae, tmp_path / "sae")
    cfg = as_saelens_folder(folder)
    if sae.transcoder:
        write_cfg(folder, cfg | {"metadata": cfg["metadata"] | {"hook_name_out": "blocks.3.hook_mlp_out"}})
    loaded = load_sae(folder)
    assert_same_sae(sae, loaded)
    out = {"site_out": "blocks.3.hook_mlp_out"} if sae.transcoder else {}
    assert loaded.metadata == {"site": "blocks.3.hook_resid_post", "model": "gpt2", **out, "sae_lens_version": "6.54.12"}
    assert loaded.site_out == out.get("site_out")
    assert loaded.provenance == {}


def test_saelens_topk_takes_k_from_cfg(tmp_path):
    folder = save_sae(perturbed("topk", k=5), tmp_path / "sae")
    as_saelens_folder(folder)
    assert load_sae(folder).cfg.k == 5


@pytest.mark.skipif("jumprelu" not in ARCHITECTURES, reason="jumprelu not registered")
def test_saelens_jumprelu_that_subtracts_b_dec_is_refused(tmp_path):
    folder = save_sae(perturbed("jumprelu"), tmp_path / "sae")
    cfg = as_saelens_folder(folder)
    write_cfg(folder, cfg | {"apply_b_dec_to_input": True})
    with pytest.raises(ArtifactError, match="apply_b_dec_to_input=True"):
        load_sae(folder)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architecture": "matching_pursuit"}, "'matching_pursuit' has no saekit equivalent"),
        ({"normalize_activations": "expected_average_only_in"}, "normalize_activations='expected_average_only_in'"),
        ({"reshape_activations": "hook_z"}, "reshape_activations='hook_z'"),
        ({"rescale_acts_by_decoder_norm": True}, "rescale_acts_by_decoder_norm=True"),
        ({"k": 0}, "invalid config"),
    ],
)
def test_saelens_settings_we_cannot_honour_are_refused(tmp_path, change, message):
    folder = saved(tmp_path)
    write_cfg(folder, as_saelens_folder(folder) | change)
    with pytest.raises(ArtifactError, match=message):
        load_sae(folder)


def test_a_saelens_transcoder_folder_we_cannot_honour_is_refused(tmp_path):
    folder = save_sae(perturbed("relu_transcoder", skip=True), tmp_path / "sae")
    cfg = as_saelens_folder(folder)
    write_cfg(folder, cfg | {"metadata": cfg["metadata"] | {"hook_name_out": 3}})
    with pytest.raises(ArtifactError, match="hook_name_out must be a string, found 3"):
        load_sae(folder)
    write_cfg(folder, cfg | {"apply_b_dec_to_input": True})
    with pytest.raises(ArtifactError, match="a SAELens 'skip_transcoder' SAE with apply_b_dec_to_input=True"):
        load_sae(folder)
    write_cfg(folder, cfg | {"architecture": "transcoder"})  # W_skip in the weights, but no skip class
    with pytest.raises(ArtifactError, match="unexpected tensors W_skip"):
        load_sae(folder)


# ---------------------------------------------------------------------------------------------
# Atomic writes


def test_overwrite_replaces_the_folder_and_leaves_nothing_behind(tmp_path):
    first, second = perturbed("topk", seed=1), perturbed("topk", seed=2)
    save_sae(first, tmp_path / "sae")
    save_sae(second, tmp_path / "sae")
    assert_same_sae(second, load_sae(tmp_path / "sae"))
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]


def test_failed_write_keeps_the_previous_folder(tmp_path, monkeypatch):
    first = perturbed("topk", seed=1)
    save_sae(first, tmp_path / "sae")

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(artifact, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_sae(perturbed("topk", seed=2), tmp_path / "sae")
    assert_same_sae(first, load_sae(tmp_path / "sae"))
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]


def test_failed_swap_restores_the_previous_folder(tmp_path, monkeypatch):
    first = perturbed("topk", seed=1)
    save_sae(first, tmp_path / "sae")
    real_replace, calls = atomic.os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 2:  # old -> .old succeeded; new -> folder fails
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="power cut"):
        save_sae(perturbed("topk", seed=2), tmp_path / "sae")
    assert_same_sae(first, load_sae(tmp_path / "sae"))


def test_interrupted_swap_is_named_and_superseded_by_the_next_save(tmp_path):
    first = perturbed("topk", seed=1)
    save_sae(first, tmp_path / "sae")
    (tmp_path / "sae").rename(tmp_path / ".sae.old")  # as a crash between the two renames leaves it
    with pytest.raises(ArtifactError, match=r"previous version in .*\.sae\.old"):
        load_sae(tmp_path / "sae")
    second = perturbed("topk", seed=2)
    save_sae(second, tmp_path / "sae")
    assert_same_sae(second, load_sae(tmp_path / "sae"))
    assert [p.name for p in tmp_path.iterdir()] == ["sae"]


def test_refuses_to_overwrite_a_folder_that_is_not_an_sae(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match=r"refusing to overwrite .*notes"):
        save_sae(perturbed("topk"), tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["notes"]


def test_refuses_to_overwrite_a_file(tmp_path):
    (tmp_path / "sae").write_text("x")
    with pytest.raises(ArtifactError, match="refusing to overwrite"):
        save_sae(perturbed("topk"), tmp_path / "sae")


def test_writes_into_an_empty_folder_and_creates_parents(tmp_path):
    (tmp_path / "empty").mkdir()
    assert is_sae_folder(save_sae(perturbed("topk"), tmp_path / "empty"))
    assert is_sae_folder(save_sae(perturbed("topk"), tmp_path / "a" / "b"))
    assert not is_sae_folder(tmp_path / "a")


# ---------------------------------------------------------------------------------------------
# Errors that name the problem


def test_missing_folder(tmp_path):
    with pytest.raises(ArtifactError, match=r"no SAE folder at .*nowhere"):
        load_sae(tmp_path / "nowhere")


def test_folder_without_cfg_json(tmp_path):
    (tmp_path / "sae").mkdir()
    with pytest.raises(ArtifactError, match=r"no SAE found at .*sae nor in its subfolders: it is empty\. Layouts saekit reads: saekit \(cfg.json"):
        load_sae(tmp_path / "sae")


def test_invalid_cfg_json(tmp_path):
    folder = saved(tmp_path)
    (folder / "cfg.json").write_text('{"d_in": 12,')
    with pytest.raises(ArtifactError, match=r"cfg.json is not valid JSON"):
        load_sae(folder)


def test_missing_weights(tmp_path):
    folder = saved(tmp_path)
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="sae_weights.safetensors is missing"):
        load_sae(folder)


def test_truncated_weights(tmp_path):
    folder = saved(tmp_path)
    path = folder / "sae_weights.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="sae_weights.safetensors is truncated or corrupted"):
        load_sae(folder)


def test_corrupted_header(tmp_path):
    folder = saved(tmp_path)
    path = folder / "sae_weights.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:8] + b"\xff garbage \x00" * 4 + data[60:])
    with pytest.raises(ArtifactError, match="sae_weights.safetensors is truncated or corrupted"):
        load_sae(folder)


def rewrite_weights(folder: Path, edit) -> None:
    path = folder / "sae_weights.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def test_missing_tensor(tmp_path):
    folder = saved(tmp_path)
    rewrite_weights(folder, lambda t: t.pop("b_dec"))
    with pytest.raises(ArtifactError, match="missing tensors b_dec"):
        load_sae(folder)


def test_unexpected_tensor(tmp_path):
    folder = saved(tmp_path)
    rewrite_weights(folder, lambda t: t.update(finetuning_scaling_factor=torch.ones(D_SAE)))
    with pytest.raises(ArtifactError, match="unexpected tensors finetuning_scaling_factor"):
        load_sae(folder)


def test_wrong_shape(tmp_path):
    folder = saved(tmp_path)
    rewrite_weights(folder, lambda t: t.update(W_enc=torch.zeros(D_IN, D_SAE + 1)))
    with pytest.raises(ArtifactError, match=r"W_enc has shape \[12, 49\] but the config needs \[12, 48\]"):
        load_sae(folder)


def test_unknown_architecture(tmp_path):
    folder = saved(tmp_path)
    cfg = read_cfg(folder)
    cfg["saekit"]["architecture"] = "mystery"
    write_cfg(folder, cfg)
    with pytest.raises(UnknownArchitectureError, match=r"cfg.json: unknown architecture 'mystery'"):
        load_sae(folder)


def test_unknown_config_key(tmp_path):
    folder = saved(tmp_path)
    cfg = read_cfg(folder)
    cfg["saekit"]["config"]["warp_factor"] = 9
    write_cfg(folder, cfg)
    with pytest.raises(ArtifactError, match="warp_factor"):
        load_sae(folder)


# ---------------------------------------------------------------------------------------------
# Suites


def test_suite_round_trip_with_default_names(tmp_path):
    saes = [perturbed(name, seed=i) for i, name in enumerate(ARCHITECTURES)] + [perturbed("topk", seed=99)]
    saes[0].metadata = {}
    folder = save_suite(saes, tmp_path / "suite", provenance={"run": "r1"})
    index = json.loads((folder / "index.json").read_text())
    names = [e["name"] for e in index["saes"]]
    assert names[0] == f"00-{ARCHITECTURES[0]}-default"
    assert names[-1] == f"{len(saes) - 1:02d}-topk-layers.3.resid_post"
    assert index["saes"][-1]["hparams"] == saes[-1].hparams()
    assert index["saes"][-1]["d_sae"] == D_SAE
    loaded = load_suite(folder)
    assert list(loaded) == names
    for sae, back in zip(saes, loaded.values()):
        assert_same_sae(sae, back)
        assert back.provenance["run"] == "r1"


def test_suite_from_a_mapping_and_overwrite(tmp_path):
    save_suite({"a": perturbed("topk", seed=1)}, tmp_path / "suite")
    second = perturbed("topk", seed=2)
    save_suite({"b": second}, tmp_path / "suite")
    loaded = load_suite(tmp_path / "suite")
    assert list(loaded) == ["b"]
    assert_same_sae(second, loaded["b"])


@pytest.mark.parametrize("names, message", [(["x", "x"], "unique"), (["../evil", "y"], "suite name"), (["x"], "1 names for 2")])
def test_suite_names_are_checked(tmp_path, names, message):
    with pytest.raises(ValueError, match=message):
        save_suite([perturbed("topk", seed=1), perturbed("topk", seed=2)], tmp_path / "s", names=names)
    assert not (tmp_path / "s").exists()


def test_suite_refuses_to_overwrite_an_sae_folder(tmp_path):
    save_sae(perturbed("topk"), tmp_path / "sae")
    with pytest.raises(ArtifactError, match="not a suite folder"):
        save_suite([perturbed("topk")], tmp_path / "sae")


def test_load_suite_without_index(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(ArtifactError, match="has no index.json"):
        load_suite(tmp_path / "s")


def test_load_suite_refuses_names_leaving_the_folder(tmp_path):
    folder = save_suite([perturbed("topk")], tmp_path / "s", names=["a"])
    (folder / "index.json").write_text(json.dumps({"saes": [{"name": "../a"}]}))
    with pytest.raises(ArtifactError, match="suite name '../a'"):
        load_suite(folder)


def untrained(name: str, **hparams) -> SAE:
    sae = build_any(name, **hparams)
    sae.metadata = sites_of(sae)
    return sae


def probe_rows() -> torch.Tensor:
    return 2 * torch.randn(64, D_IN, generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("state", ["untrained", "perturbed"])
@pytest.mark.parametrize(("name", "hparams"), SAELENS_CASES)
def test_saved_folder_encodes_as_saelens_formulas_say(tmp_path, name, hparams, state):
    """For any values saekit saves (fresh ones: unset thresholds; random ones: negative thresholds),
    its encode equals what a SAELens reader computes from the folder's files."""
    sae = untrained(name, **hparams) if state == "untrained" else perturbed(name, **hparams)
    folder = save_sae(sae, tmp_path / "sae")
    x = probe_rows()
    expected = reference_encode(folder, x)
    # Norm-wise: equal up to float rounding (gated computes (x W) ⊙ exp(r) where SAELens computes
    # x (W ⊙ exp(r)), the same number rounded differently); a different rule would differ by O(1).
    with torch.no_grad():
        assert_close_normwise(sae.encode(x), expected)
        assert_close_normwise(load_sae(folder).encode(x), expected)
        assert_close_normwise(sae(x), reference_forward(folder, x))
    if state == "perturbed":
        assert expected.count_nonzero() > 0, "vacuous: nothing fires"


@pytest.mark.parametrize("state", ["untrained", "perturbed", "trained"])
@pytest.mark.parametrize(("name", "hparams"), SAELENS_CASES)
def test_saelens_itself_loads_the_folder(tmp_path, name, hparams, state):
    """SAELens builds its own class from the folder and computes what saekit does; a transcoder's
    output (skip term included) and output site too."""
    sae_lens = pytest.importorskip("sae_lens")
    sae = {"untrained": untrained, "perturbed": perturbed, "trained": briefly_trained}[state](name, **hparams)
    lens = sae_lens.SAE.load_from_disk(str(save_sae(sae, tmp_path / "sae")))
    x = probe_rows()
    with torch.no_grad():
        assert_close_normwise(lens.encode(x), sae.encode(x))
        assert_close_normwise(lens(x), sae(x))
    assert lens.cfg.metadata.hook_name == "layers.3.resid_post"
    assert lens.cfg.metadata.hook_name_out == sae.site_out


def briefly_trained(name: str, **hparams) -> SAE:
    """A briefly trained SAE: thresholds learned."""
    sae = untrained(name, **hparams)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(5)
    for step in range(10):
        ctx = StepCtx(step=step, total_steps=10)
        target = torch.randn(64, sae.d_out, generator=g) if sae.transcoder else None
        out = sae.loss(ActBatch(torch.randn(64, D_IN, generator=g), target=target), ctx)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sae.after_step(out, ctx)
    return sae


def test_every_registered_architecture_is_loadable_by_class(tmp_path):
    # The saekit block, not the SAELens name, decides the class: batch_topk and jumprelu share one.
    for name in ARCHITECTURES:
        assert type(load_sae(save_sae(perturbed(name), tmp_path / name))) is get(name)


def test_training_state_stays_out_of_the_saved_weights(tmp_path):
    sae = perturbed("p_anneal")
    assert sae.training_state
    save_sae(sae, tmp_path / "p")
    saved = load_file(tmp_path / "p" / "sae_weights.safetensors")
    assert set(saved) == {"W_enc", "W_dec", "b_enc", "b_dec"}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("W_dec", float("nan"), "W_dec holds 1 NaN or infinite value"),
        ("b_dec", float("inf"), "b_dec holds 1 NaN or infinite value"),
        ("threshold", float("-inf"), "threshold holds 1 NaN or infinite value"),
        ("W_enc", "int", "W_enc is stored as torch.int32, not floating point"),
        ("b_enc", "bool", "b_enc is stored as torch.bool, not floating point"),
    ],
)
def test_weights_with_nan_inf_or_integers_are_refused_by_name(tmp_path, name, value, message):
    folder = save_sae(build("jumprelu", d_in=4, d_sae=8, seed=0), tmp_path / "sae")
    weights = load_file(str(folder / "sae_weights.safetensors"))
    if value == "int":
        weights[name] = weights[name].round().to(torch.int32)
    elif value == "bool":
        weights[name] = weights[name] > 0
    else:
        weights[name] = weights[name].clone()
        weights[name].view(-1)[0] = value
    save_file(weights, str(folder / "sae_weights.safetensors"))
    with pytest.raises(ArtifactError, match=f"holds unusable weights: {message}"):
        load_sae(folder)


def test_an_unset_threshold_of_plus_infinity_loads(tmp_path):
    """BatchTopK's threshold is +inf until training sets it: a fresh SAE saves and loads."""
    sae = build("batch_topk", d_in=4, d_sae=8, k=2, seed=0)
    assert sae.threshold.isinf().all()
    assert load_sae(save_sae(sae, tmp_path / "sae")).threshold.isinf().all()


# ---------------------------------------------------------------------------------------------
# Crosscoders: their sites and factors under metadata.hook_names / normalization_factors


def _crosscoder(tmp_path):
    sae = perturbed("crosscoder")
    sae.metadata = {"sites": ["layers.1.resid_post", "layers.2.resid_post"], "normalization_factors": [0.5, 0.25]}
    return save_sae(sae, tmp_path / "cc"), sae


def test_a_crosscoder_round_trips_with_its_sites(tmp_path):
    folder, sae = _crosscoder(tmp_path)
    meta = read_cfg(folder)["metadata"]
    assert meta["hook_names"] == ["layers.1.resid_post", "layers.2.resid_post"] and meta["hook_name"] is None
    loaded = load_sae(folder)
    assert loaded.sites == ("layers.1.resid_post", "layers.2.resid_post") and loaded.crosscoder
    assert loaded.metadata["normalization_factors"] == [0.5, 0.25]
    x = torch.randn(5, D_IN)
    torch.testing.assert_close(loaded(x), sae(x))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"hook_names": "layers.1.resid_post"}, "hook_names must list two or more distinct"),
        ({"hook_names": ["a"]}, "hook_names must list two or more distinct"),
        ({"hook_names": ["a", 3]}, "hook_names must list two or more distinct"),
        ({"hook_names": list("abcde"), "normalization_factors": [1.0] * 5}, "equal widths side by side"),
        ({"normalization_factors": [1.0]}, "must be 2 positive numbers"),
        ({"normalization_factors": [1.0, -2.0]}, "must be 2 positive numbers"),
        ({"normalization_factors": [1.0, True]}, "must be 2 positive numbers"),
        ({"hook_names": None}, "belongs to an SAE over several sites"),
    ],
)
def test_a_hostile_crosscoder_folder_is_refused_by_name(tmp_path, change, words):
    """Every failure class of the sites of an SAE over several sites (also a cross-layer transcoder's
    hook_names_out, read by the same function)."""
    folder, _ = _crosscoder(tmp_path)
    cfg = read_cfg(folder)
    cfg["metadata"].update(change)
    if change.get("hook_names", "") is None:
        del cfg["metadata"]["hook_names"]
    write_cfg(folder, cfg)
    with pytest.raises(ArtifactError, match=words):
        load_sae(folder)
