"""SAEBench's core eval through a tiny Llama: its numbers against saekit's evaluation of the same pass
and a hand computation, its JSON against SAEBench's schema, transcoders, and bad inputs named."""

import json
import math

import pytest
import torch

from saekit.errors import ConfigError, DataError
from saekit.eval.bench.core import CoreConfig, core
from saekit.eval.bench.output import TOP_LEVEL_KEYS, saebench_number, write_output
from saekit.eval.evaluate import evaluate_on_model
from saekit.models.load import LoadedModel
from saekit.sae import build
from saekit.sources.hf import collect_activations
from tests.tiny_lm import tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

SITE = "layers.0.resid_post"
METRIC_KEYS = {  # SAEBench's CoreMetricCategories (sae_bench/evals/core/eval_output.py)
    "model_behavior_preservation": {"kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"},
    "model_performance_preservation": {"ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae"},
    "reconstruction_quality": {"explained_variance", "explained_variance_legacy", "mse", "cossim"},
    "shrinkage": {"l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"},
    "sparsity": {"l0", "l1"},
    "token_stats": {"total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"},
    "misc_metrics": {
        "freq_over_1_percent", "freq_over_10_percent", "normalized_freq_over_1_percent", "normalized_freq_over_10_percent",
        "average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim", "frac_alive",
    },
}  # fmt: skip
DETAIL_KEYS = {  # SAEBench's CoreFeatureMetric
    "index", "feature_density", "consistent_activation_heuristic", "encoder_bias", "encoder_norm",
    "encoder_decoder_cosine_sim", "max_decoder_cosine_sim", "max_encoder_cosine_sim",
}  # fmt: skip


@pytest.fixture(scope="module")
def lm():
    return LoadedModel(tiny_llama().double().eval(), tiny_tokenizer(), "tiny")


@pytest.fixture(scope="module")
def tokens():
    body = torch.randint(3, 15, (6, 9), generator=torch.Generator().manual_seed(0))
    return torch.cat([torch.ones(6, 1, dtype=torch.long), body], dim=1)  # BOS first


def sae_at(site: str = SITE, seed: int = 0):
    sae = build("relu", d_in=16, d_sae=24, seed=seed).double()
    sae.metadata["site"] = site
    return sae


def exact_sae():
    """relu(x) − relu(−x) = x: W_enc = [I, −I], W_dec = [I; −I] reconstructs exactly."""
    eye = torch.eye(16, dtype=torch.float64)
    sae = build("relu", d_in=16, d_sae=32, seed=0).double()
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.metadata["site"] = SITE
    return sae


def test_core_reuses_the_evaluation_and_matches_a_hand_computation(lm, tokens):
    saes = {"a": sae_at(), "b": sae_at("layers.1.resid_post", seed=1)}
    docs = core(saes, lm, tokens, CoreConfig(batch_size_prompts=4))
    plain = evaluate_on_model(saes, model=lm, tokens=tokens, context_batch_size=4)
    m, ev = docs["a"]["eval_result_metrics"], plain["a"]
    perf, behaviour = m["model_performance_preservation"], m["model_behavior_preservation"]
    assert perf["ce_loss_without_sae"] == ev["clean_ce"] and perf["ce_loss_with_sae"] == ev["spliced_ce"]
    assert perf["ce_loss_score"] == pytest.approx((ev["zero_ablation_ce"] - ev["spliced_ce"]) / (ev["zero_ablation_ce"] - ev["clean_ce"]))
    assert behaviour["kl_div_with_sae"] == ev["kl"]
    assert behaviour["kl_div_score"] == pytest.approx((behaviour["kl_div_with_ablation"] - ev["kl"]) / behaviour["kl_div_with_ablation"])
    x = collect_activations(lm, tokens, [SITE])[SITE][:, 1:].reshape(-1, 16)  # positions after BOS
    codes = saes["a"].encode(x).detach()
    assert m["sparsity"]["l0"] == pytest.approx(float((codes != 0).sum(-1).double().mean()))
    assert m["sparsity"]["l1"] == pytest.approx(float(codes.sum(-1).mean()))
    assert m["shrinkage"]["l2_norm_in"] == pytest.approx(float(x.norm(dim=-1).mean()))
    assert m["token_stats"]["total_tokens_eval_reconstruction"] == 60
    assert docs["a"]["eval_result_unstructured"]["saekit"]["fvu"] == pytest.approx(ev["fvu"])
    assert docs["a"]["eval_config"]["n_eval_reconstruction_batches"] == 2  # 6 contexts, 4 per batch


def test_the_written_json_has_saebenchs_keys_and_no_nan(lm, tokens, tmp_path):
    doc = core({"a": sae_at()}, lm, tokens)["a"]
    assert tuple(doc) == TOP_LEVEL_KEYS and doc["eval_type_id"] == "core"
    assert {group: set(values) for group, values in doc["eval_result_metrics"].items()} == METRIC_KEYS
    assert len(doc["eval_result_details"]) == 24 and set(doc["eval_result_details"][0]) == DETAIL_KEYS
    assert doc["eval_config"]["exclude_special_tokens_from_reconstruction"] is True and doc["eval_config"]["context_size"] == 10

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON")

    path = write_output(tmp_path, doc)
    assert path == tmp_path / "core" / "a_eval_results.json"
    json.loads(path.read_text(), parse_constant=refuse)
    assert saebench_number(math.nan) == -1 and saebench_number(-math.inf) == -1 and saebench_number(0.5) == 0.5


def test_an_exact_reconstruction_preserves_everything(lm, tokens):
    m = core({"x": exact_sae()}, lm, tokens)["x"]["eval_result_metrics"]
    assert m["model_performance_preservation"]["ce_loss_score"] == pytest.approx(1.0, abs=1e-6)
    assert m["model_behavior_preservation"]["kl_div_score"] == pytest.approx(1.0, abs=1e-6)
    for group, key in (("reconstruction_quality", "cossim"), ("reconstruction_quality", "explained_variance_legacy"), ("shrinkage", "l2_ratio")):
        assert m[group][key] == pytest.approx(1.0, abs=1e-9)
    assert m["reconstruction_quality"]["mse"] == pytest.approx(0.0, abs=1e-12)


def test_a_transcoder_is_scored_on_the_site_it_writes(lm, tokens):
    tc = build("relu_transcoder", d_in=16, d_sae=24, seed=0).double()
    tc.metadata.update(site="layers.0.mlp_in", site_out="layers.0.mlp_out")
    doc = core({"t": tc}, lm, tokens)["t"]
    plain = evaluate_on_model({"t": tc}, model=lm, tokens=tokens)["t"]
    assert doc["eval_result_metrics"]["model_performance_preservation"]["ce_loss_with_sae"] == plain["spliced_ce"]
    assert doc["eval_result_unstructured"]["saekit"]["site"] == "layers.0.mlp_in"
    assert doc["eval_result_metrics"]["misc_metrics"]["average_max_encoder_cosine_sim"] is None
    assert doc["eval_result_details"][0]["encoder_decoder_cosine_sim"] is None


def test_bad_inputs_are_named(lm, tokens):
    with pytest.raises(ConfigError, match="batch_size_prompts must be positive, got 0"):
        CoreConfig(batch_size_prompts=0)
    with pytest.raises(ConfigError, match="skip_positions must be >= 0, got -1"):
        CoreConfig(skip_positions=-1)
    with pytest.raises(ConfigError, match="the core eval needs the model as saekit.load_model returns it"):
        core({"a": sae_at()}, lm.model, tokens)
    nowhere = build("relu", d_in=16, d_sae=24, seed=0)
    with pytest.raises(ConfigError, match="SAE 'n' records no site"):
        core({"n": nowhere}, lm, tokens)
    with pytest.raises(DataError, match=r"tokens must be an integer tensor \[contexts, positions\], got \(10,\)"):
        core({"a": sae_at()}, lm, tokens[0])
