"""The Neuronpedia export writes SAEDashboard's NeuronpediaDashboardBatch JSON: every key of a
feature and of an activation, the values of the browser data, batches of BATCH latents; it refuses a
folder that is not new."""

import dataclasses
import json

import pytest
from browser_helpers import EVIL, tiny_data

from saekit.browser import Browser, export_neuronpedia
from saekit.browser.neuronpedia import BATCH
from saekit.errors import ConfigError

FEATURE_KEYS = {
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson", "correlated_features_indices",
    "correlated_features_l1", "correlated_features_pearson", "neg_str", "neg_values", "pos_str", "pos_values",
    "frac_nonzero", "freq_hist_data_bar_values", "freq_hist_data_bar_heights", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "n_prompts_total", "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "activations",
}  # fmt: skip
"""The keys of SAEDashboard's NeuronpediaDashboardFeature.to_dict()."""
ACTIVATION_KEYS = {"bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"}


def read_batches(folder):
    return [json.loads((folder / f"batch-{k}.json").read_text()) for k in range(len(list(folder.iterdir())))]


def test_every_latent_is_a_feature_with_the_dashboard_schema(tmp_path):
    d = tiny_data()
    out = export_neuronpedia(Browser(tmp_path, "t", {"tiny": d}), tmp_path / "np", model_id="tiny-lm")
    batches = read_batches(out / "tiny")
    assert len(batches) == 1 and set(batches[0]) == {"model_id", "layer", "sae_set", "features"}
    assert (batches[0]["model_id"], batches[0]["layer"], batches[0]["sae_set"]) == ("tiny-lm", 0, "tiny")
    features = batches[0]["features"]
    assert [f["feature_index"] for f in features] == list(range(d.info.d_sae))
    for f in features:
        assert set(f) == FEATURE_KEYS and all(set(a) == ACTIVATION_KEYS for a in f["activations"])
        i = f["feature_index"]
        assert f["frac_nonzero"] == pytest.approx(float(d.stats.density[i]))
        assert f["freq_hist_data_bar_heights"] == d.stats.histogram[i].tolist()
        assert f["pos_str"] == [d.vocab[int(t)] for t in d.effects.promoted_ids[i]]
        assert f["n_prompts_total"] == 4 and f["n_tokens_in_prompt"] == 8 and f["dataset"] == "corpus"
        tops = f["activations"][: int((d.stats.top_rows[i] >= 0).sum())]
        found = [a["values"][a["qualifying_token_index"]] for a in tops]  # the example's own token
        assert found == pytest.approx(d.stats.top_values[i][d.stats.top_rows[i] >= 0].tolist())
        for a in f["activations"]:
            assert a["bin_min"] <= a["values"][a["qualifying_token_index"]] <= a["bin_max"]
            assert len(a["tokens"]) == len(a["values"]) and 0 < a["bin_contains"] <= 1
    assert EVIL in json.dumps(features)


def test_batches_split_the_latents_and_the_layer_comes_from_the_site(tmp_path):
    d = tiny_data(d_sae=BATCH + 3)
    d = dataclasses.replace(d, info=dataclasses.replace(d.info, site="blocks.9.hook_resid_post", model="/x/smollm2-135m"), effects=None)
    export_neuronpedia(Browser(tmp_path, "t", {"s": d}), tmp_path / "np", sae_set="my-set")
    batches = read_batches(tmp_path / "np" / "s")
    assert [len(b["features"]) for b in batches] == [BATCH, 3]
    assert batches[1]["features"][0]["feature_index"] == BATCH
    assert {(b["model_id"], b["layer"], b["sae_set"]) for b in batches} == {("smollm2-135m", 9, "my-set")}
    assert batches[0]["features"][0]["pos_str"] == [] and batches[0]["features"][0]["neg_values"] == []


def test_a_folder_that_is_not_new_is_refused_untouched(tmp_path):
    browser = Browser(tmp_path, "t", {"tiny": tiny_data()})
    (tmp_path / "np").mkdir()
    (tmp_path / "np" / "mine.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "np", tmp_path / "file"):
        with pytest.raises(ConfigError, match=f"Neuronpedia export folder {out} exists and is not an empty folder"):
            export_neuronpedia(browser, out)
    assert (tmp_path / "np" / "mine.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="'../x' cannot name a folder"):
        export_neuronpedia(Browser(tmp_path, "t", {"../x": tiny_data()}), tmp_path / "new")
