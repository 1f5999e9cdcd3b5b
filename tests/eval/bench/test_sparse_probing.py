"""k-sparse probing: latent choice by class means, the splits, per-text pooling through a tiny LLaMA,
the whole path with a task made here, SAEBench's output schema, and the refusals of bad settings."""

import importlib.util
import json
import random

import pytest
import torch

from saekit.errors import ConfigError, DataError
from saekit.eval.bench import SparseProbingConfig, make_task, sparse_probing, write_bench_report
from saekit.eval.bench.output import TOP_LEVEL_KEYS
from saekit.eval.bench.pooling import pooled_means, tokenize_texts
from saekit.eval.bench.sparse_probing import balanced_pool, stratified_split, top_k_by_mean_diff
from saekit.models.load import LoadedModel
from saekit.sae import build
from saekit.sources.hf import collect_activations
from tests.tiny_lm import WORDS, tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_top_k_ranks_columns_by_the_absolute_difference_of_class_means():
    # Class means differ by 0 (col 0), -3 (col 1), 1 (col 2), 2 (col 3).
    x = torch.tensor([[1.0, 0.0, 1.0, 2.0], [1.0, 0.0, 1.0, 2.0], [1.0, 3.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0]])
    y = torch.tensor([1, 1, 0, 0])
    assert top_k_by_mean_diff(x, y, 3).tolist() == [1, 3, 2]
    assert top_k_by_mean_diff(x, y, 1).tolist() == [1]


def test_top_k_refuses_k_beyond_the_width_and_a_single_class():
    with pytest.raises(ConfigError, match="k=5 is larger than the 4 columns"):
        top_k_by_mean_diff(torch.zeros(2, 4), torch.tensor([0, 1]), 5)
    with pytest.raises(DataError, match="both classes"):
        top_k_by_mean_diff(torch.zeros(2, 4), torch.tensor([1, 1]), 1)


def test_pool_is_balanced_and_splits_are_stratified_partitions():
    labels = torch.tensor([0] * 30 + [1] * 10 + [-1] * 5)
    pool = balanced_pool(labels, 100, seed=3)
    assert (labels[pool] == 0).sum() == 10 and (labels[pool] == 1).sum() == 10
    y = labels[pool]
    split = stratified_split(y, 0.75, seed=1)
    assert sorted(split.train.tolist() + split.test.tolist()) == list(range(20))
    assert (y[split.train] == 1).sum() == 8 and (y[split.test] == 1).sum() == 2
    assert stratified_split(y, 0.75, seed=1).train.tolist() == split.train.tolist()
    assert stratified_split(y, 0.75, seed=2).train.tolist() != split.train.tolist()


@pytest.fixture(scope="module")
def lm():
    return LoadedModel(model=tiny_llama().eval(), tokenizer=tiny_tokenizer(), name="tiny")


def _sae(site, seed=0, d_sae=32):
    sae = build("relu", d_in=16, d_sae=d_sae, seed=seed)
    sae.metadata.update(site=site, model="tiny")
    return sae


def test_pooled_means_average_the_unpadded_positions_after_the_skipped_ones(lm):
    texts = ["the cat sat on a mat", "dog", "a dog ran to see the cat and it sat"]
    sae = _sae("layers.1.resid_post")
    ids = tokenize_texts(lm, texts, context_length=8)
    assert ids[0][0] == 1 and len(ids[2]) == 8  # BOS first; cut to the context length
    pooled = pooled_means(lm, ids, {"s": sae}, skip_positions=1, batch_size=2)
    for i, t in enumerate(ids):
        acts = collect_activations(lm, torch.tensor([t]), "layers.1.resid_post")["layers.1.resid_post"][0, 1:]
        assert torch.allclose(pooled.llm["layers.1.resid_post"][i], acts.mean(0), atol=1e-5)
        assert torch.allclose(pooled.sae["s"][i], sae.encode(acts).mean(0), atol=1e-5)


def _task(n=60, seed=0):
    """Texts of the tiny vocabulary; class "dog" holds the word dog, class "mat" the word mat."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        word = "dog" if i % 2 else "mat"
        words = [rng.choice(WORDS[:6]) for _ in range(4)] + [word]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(word)
    return make_task("dog_or_mat", texts, labels)


CFG = SparseProbingConfig(k_values=(1, 2, 5), train_size=40, test_size=20, seeds=3, context_length=16)


def test_the_whole_path_writes_saebench_outputs(lm, tmp_path):
    saes = {"early": _sae("layers.0.resid_post"), "late": _sae("layers.1.resid_post", seed=1)}
    outputs = sparse_probing(saes, lm, CFG, tasks=[_task()], release="tiny-suite")
    assert set(outputs) == {"early", "late"}
    doc = outputs["late"]
    assert set(TOP_LEVEL_KEYS) <= set(doc)
    assert doc["eval_type_id"] == "sparse_probing" and doc["sae_lens_id"] == "late" and doc["sae_lens_release_id"] == "tiny-suite"
    assert isinstance(doc["datetime_epoch_millis"], int) and len(doc["eval_id"]) == 36
    config = doc["eval_config"]
    assert config["dataset_names"] == ["dog_or_mat"] and config["k_values"] == [1, 2, 5] and config["model_name"] == "tiny"
    assert config["probe_train_set_size"] == 40 and config["probe_test_set_size"] == 20
    metrics = doc["eval_result_metrics"]
    assert set(metrics) == {"llm", "sae"}
    assert set(metrics["sae"]) == {"sae_test_accuracy", "sae_top_1_test_accuracy", "sae_top_2_test_accuracy", "sae_top_5_test_accuracy"}
    assert 0.5 < metrics["llm"]["llm_test_accuracy"] <= 1.0
    detail = doc["eval_result_details"][0]
    assert detail["dataset_name"] == "dog_or_mat" and detail["sae_top_5_test_accuracy"] == metrics["sae"]["sae_top_5_test_accuracy"]
    spread = doc["eval_result_unstructured"]
    assert spread["seeds"] == [42, 43, 44] and len(spread["metrics_per_seed"]["sae_top_1_test_accuracy"]) == 3
    assert spread["tasks"]["dog_or_mat"]["n_train"] == 40 and spread["tasks"]["dog_or_mat"]["classes"] == ["dog", "mat"]
    assert doc["sae_cfg_dict"]["hook_name"] == "layers.1.resid_post" and doc["sae_cfg_dict"]["d_sae"] == 32
    # Both SAEs of the run share its id; the raw probe of a site is the same for every SAE there.
    assert outputs["early"]["eval_id"] == doc["eval_id"]

    files = write_bench_report(tmp_path / "bench", {"sparse_probing": outputs}, title="t", intro="i")
    assert [f.relative_to(tmp_path / "bench").as_posix() for f in files] == [
        "sparse_probing/early_eval_results.json",
        "sparse_probing/late_eval_results.json",
    ]
    assert json.loads(files[1].read_text()) == json.loads(json.dumps(doc))
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "| dog_or_mat | early |" in report and "±" in report
    assert (tmp_path / "bench" / "sparse_probing.png").stat().st_size > 1000


def test_results_do_not_depend_on_the_batch_size(lm):
    saes = {"s": _sae("layers.1.resid_post")}
    a = sparse_probing(saes, lm, CFG, tasks=[_task()])["s"]
    b = sparse_probing(saes, lm, SparseProbingConfig(**{**CFG.__dict__, "batch_size": 3}), tasks=[_task()])["s"]
    assert a["eval_result_unstructured"]["metrics_per_seed"] == b["eval_result_unstructured"]["metrics_per_seed"]


def test_texts_with_nothing_left_after_the_skipped_positions_are_counted_out(lm):
    base = _task()
    task = make_task("short", [*base.texts, "dog", "mat"], [base.classes[i] for i in base.labels] + ["dog", "mat"])
    doc = sparse_probing({"s": _sae("layers.1.resid_post")}, lm, SparseProbingConfig(**{**CFG.__dict__, "skip_positions": 2}), tasks=[task])["s"]
    assert doc["eval_result_unstructured"]["tasks"]["short"]["n_too_short"] == 2


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"k_values": (0, 1)}, "distinct positive integers"),
        ({"k_values": (2, 2)}, "distinct positive integers"),
        ({"tasks": ()}, "at least one task"),
        ({"train_size": 1}, "train_size must be at least 2"),
        ({"seeds": 0}, "seeds must be positive"),
        ({"skip_positions": 16, "context_length": 16}, "skip_positions must be in"),
        ({"C": -1.0}, "C must be positive"),
    ],
)
def test_impossible_settings_are_config_errors(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        SparseProbingConfig(**kwargs)


def test_k_larger_than_d_sae_is_refused_before_any_forward_pass(lm):
    with pytest.raises(ConfigError, match=r"k=50 is larger than SAE 'small''s d_sae=8"):
        sparse_probing({"small": _sae("layers.1.resid_post", d_sae=8)}, lm, SparseProbingConfig(k_values=(1, 50)), tasks=[_task()])


def test_unknown_task_is_named_before_any_forward_pass(lm):
    if importlib.util.find_spec("sae_probes") is None or importlib.util.find_spec("zstandard") is None:
        pytest.skip("sae-probes or zstandard is not installed (make test installs both): task names are checked against its table")
    with pytest.raises(ConfigError, match="unknown sparse-probing task 'no_such_task'"):
        sparse_probing({"s": _sae("layers.1.resid_post")}, lm, SparseProbingConfig(tasks=("no_such_task",), k_values=(1,)))


def test_a_model_without_its_tokenizer_and_a_siteless_sae_are_named(lm):
    with pytest.raises(ConfigError, match="with its tokenizer"):
        sparse_probing({"s": _sae("layers.1.resid_post")}, lm.model, CFG, tasks=[_task()])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs at least one SAE"):
        sparse_probing({}, lm, CFG, tasks=[_task()])
    with pytest.raises(ConfigError, match="'bare' records no site"):
        sparse_probing({"bare": build("relu", d_in=16, d_sae=32)}, lm, CFG, tasks=[_task()])
    crosscoder = build("crosscoder", d_in=32, d_sae=32)
    crosscoder.metadata["sites"] = ["layers.0.resid_post", "layers.1.resid_post"]
    with pytest.raises(ConfigError, match="'cc' reads several sites .*take SAEs of one site"):
        sparse_probing({"cc": crosscoder}, lm, CFG, tasks=[_task()])


def test_a_task_with_too_few_texts_of_a_class_is_named(lm):
    task = make_task("tiny", ["the cat", "a dog", "the mat", "a cat"], ["x", "y", "x", "x"])
    with pytest.raises(DataError, match=r"task 'tiny': needs at least 2 texts of each class"):
        sparse_probing({"s": _sae("layers.1.resid_post")}, lm, CFG, tasks=[task])


def test_a_task_named_twice_is_refused(lm):
    with pytest.raises(ConfigError, match="task 'dog_or_mat' is named twice"):
        sparse_probing({"s": _sae("layers.1.resid_post")}, lm, CFG, tasks=[_task(), _task(seed=1)])
    with pytest.raises(ConfigError, match="task '5_hist_fig_ismale' is named twice"):
        SparseProbingConfig(tasks=("5_hist_fig_ismale", "5_hist_fig_ismale"))


def test_an_sae_whose_codes_are_not_finite_is_named(lm):
    broken = _sae("layers.1.resid_post")
    with torch.no_grad():
        broken.W_enc[0, 3] = float("nan")
    with pytest.raises(DataError, match=r"task 'dog_or_mat': the codes of SAE 'broken' hold NaN or infinite values"):
        sparse_probing({"ok": _sae("layers.1.resid_post"), "broken": broken}, lm, CFG, tasks=[_task()])
