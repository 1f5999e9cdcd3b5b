"""The suite index and the SAEs' cfg.json, as the browser reads them: every name is one folder
inside the suite, every file is bounded and a malformed one is an ArtifactError naming it."""

import json
import re

import pytest
import torch
from browser_helpers import tiny_config, write_corpus, write_model

import saekit
from saekit.browser import build, build_browser
from saekit.browser.build import model_of, sae_folders
from saekit.errors import ArtifactError


@pytest.fixture
def suite(tmp_path):
    sae = saekit.build_sae("relu", d_in=4, d_sae=8, seed=0)
    sae.metadata["site"] = "layers.0.resid_post"
    return saekit.save_suite({"a": sae, "b": sae}, tmp_path / "suite")


def write_index(suite, names):
    (suite / "index.json").write_text(json.dumps({"saes": [{"name": n} for n in names]}))


def test_the_names_of_the_index(suite):
    assert list(sae_folders(suite)) == ["a", "b"]


@pytest.mark.parametrize("name", ["a/../b", "../suite/a", "a/", ".", "", "a\\b", 5, None])
def test_a_name_that_is_not_one_folder_inside_is_refused(suite, name):
    write_index(suite, [name])  # "a/../b" and "a/" resolve to SAE folders of the suite, but are not their names
    with pytest.raises(ArtifactError, match=re.escape(f"names {name!r}, which is not an SAE folder inside")):
        sae_folders(suite)


@pytest.mark.parametrize(
    "text, words",
    [("[]", "is not a suite index"), ('{"saes": {"a": 1}}', "is not a suite index"), ('{"saes": ["a"]}', "is not a suite index"), ("{", "not valid JSON")],
)  # fmt: skip
def test_a_malformed_index_is_refused_by_name(suite, text, words):
    (suite / "index.json").write_text(text)
    with pytest.raises(ArtifactError, match=words) as caught:
        sae_folders(suite)
    assert str(suite / "index.json") in str(caught.value)


def test_a_huge_index_is_refused_before_it_is_parsed(suite, monkeypatch):
    monkeypatch.setattr(build, "MAX_JSON_BYTES", 10)
    with pytest.raises(ArtifactError, match="larger than 10 bytes"):
        sae_folders(suite)


def test_the_model_named_by_cfg_json_whatever_its_shape(suite):
    folders = sae_folders(suite)
    for cfg in ([], {"metadata": []}, {"metadata": {"model_name": ["x"]}}, {"metadata": {"model_name": 3}}):
        for folder in folders.values():
            (folder / "cfg.json").write_text(json.dumps(cfg))
        assert model_of(folders) == "smollm2-135m"
    (folders["a"] / "cfg.json").write_text(json.dumps({"metadata": {"model_name": "m1"}}))
    assert model_of(folders) == "m1"


def test_a_transcoder_is_browsed_by_the_site_it_reads_and_the_rows_it_writes(tmp_path):
    """A transcoder's latents fire on its input site and its decoder rows (d_out wide) write the
    residual stream: the browser computes its statistics there and its rows' logit effects, here for
    one that reads the MLP's 32-wide hidden activations and writes its 16-wide output."""
    model_dir = write_model(tmp_path / "model")
    sae = saekit.build_sae("topk_transcoder", d_in=32, d_out=16, d_sae=24, k=4, skip=True, seed=3)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    sae.metadata.update(site="model.layers.0.mlp.act_fn", site_out="layers.0.mlp_out", model=str(model_dir))
    suite = saekit.save_suite({"T": sae}, tmp_path / "suite")
    data = build_browser(suite, tiny_config(model_dir, write_corpus(tmp_path / "corpus")), progress=False).saes["T"]
    assert data.info.site == "model.layers.0.mlp.act_fn" and data.info.logit_effects is not None
    assert data.effects is not None and data.effects.promoted_ids.shape[0] == 24
    assert int(data.stats.fire_count.sum()) > 0


def test_a_crosscoder_is_browsed_on_its_sites_side_by_side(tmp_path):
    """A crosscoder's latents fire on its sites' rows side by side: its statistics equal its codes of
    the two layers' activations put together by hand; an SAE over several models is refused by name."""
    from saekit.sources.hf import site_rows

    model_dir = write_model(tmp_path / "model")
    sites = ["layers.0.resid_post", "layers.1.resid_post"]
    sae = saekit.build_sae("crosscoder", d_in=32, d_sae=24, seed=3)
    with torch.no_grad():
        sae.b_enc.fill_(0.05)
    sae.metadata.update(sites=sites, model=str(model_dir))
    suite = saekit.save_suite({"C": sae}, tmp_path / "suite")
    cfg = tiny_config(model_dir, write_corpus(tmp_path / "corpus"))
    data = build_browser(suite, cfg, progress=False).saes["C"]
    assert data.info.site == "layers.0.resid_post+layers.1.resid_post" and data.info.d_in == 32
    acts = site_rows(saekit.load_model(model_dir).model, data.tokens, sites, skip_positions=cfg.skip_positions)
    codes = sae.encode(torch.cat([acts[s] for s in sites], -1))
    assert torch.equal(data.stats.fire_count, (codes != 0).sum(0).to(data.stats.fire_count.dtype))
    other = saekit.build_sae("crosscoder", d_in=32, d_sae=8, seed=0)
    other.metadata.update(sites=["base/layers.0.resid_post", "chat/layers.0.resid_post"], model=str(model_dir))
    with pytest.raises(ArtifactError, match="several models"):
        build_browser(saekit.save_suite({"X": other}, tmp_path / "other"), cfg, progress=False)
