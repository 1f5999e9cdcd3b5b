"""`saekit eval --bench sparse_probing` on a suite read through a tiny model: the SAEBench files, the
table and plot, and the options that do not apply refused."""

import importlib.util
import json

import pytest

from saekit.cli.main import main
from saekit.io import save_suite
from saekit.sae import build
from tests.tiny_lm import letter_llama, write_tiny_corpus, write_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def suite(tmp_path):
    write_tiny_model(tmp_path / "model")
    saes = []
    for i, site in enumerate(["layers.0.resid_post", "layers.1.resid_post"]):
        sae = build("topk", d_in=16, d_sae=32, k=4, seed=i)
        sae.metadata.update(site=site, model=str(tmp_path / "model"))
        saes.append(sae)
    return save_suite(saes, tmp_path / "suite", names=["a", "b"])


def test_bench_writes_saebench_json_table_and_plot(suite, capsys):
    if importlib.util.find_spec("sae_probes") is None or importlib.util.find_spec("zstandard") is None:
        pytest.skip("sae-probes or zstandard is not installed (make test installs both: saekit[bench] + --no-deps sae-probes)")
    argv = ["eval", str(suite), "--bench", "sparse_probing", "--tasks", "117_us_state_FL", "--k", "1,2,5"]
    assert main([*argv, "--seeds", "2", "--train-size", "16", "--test-size", "8", "--context-size", "8", "--batch-size", "8"]) == 0
    out = suite / "bench"
    doc = json.loads((out / "sparse_probing" / "b_eval_results.json").read_text())
    assert doc["eval_type_id"] == "sparse_probing" and doc["sae_lens_release_id"] == "suite"
    assert doc["eval_config"]["dataset_names"] == ["117_us_state_FL"] and doc["eval_config"]["dataset_source"][0].startswith("sae-probes")
    assert len(doc["eval_result_unstructured"]["metrics_per_seed"]["sae_top_5_test_accuracy"]) == 2
    assert (out / "sparse_probing.png").is_file() and "| 117_us_state_FL | a |" in (out / "report.md").read_text()
    assert "saekit eval --bench sparse_probing: 2 SAE(s)" in capsys.readouterr().out


def test_absorption_writes_its_json_and_plot(tmp_path, capsys):
    model, tok, _ = letter_llama()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    sae = build("relu", d_in=32, d_sae=40, seed=0)
    sae.metadata.update(site="layers.0.resid_post", model=str(tmp_path / "model"))
    suite = save_suite([sae], tmp_path / "suite", names=["r"])
    assert main(["eval", str(suite), "--bench", "absorption", "--seeds", "2", "--words", "120", "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "absorption_first_letter" / "r_eval_results.json").read_text())
    assert doc["eval_type_id"] == "absorption_first_letter" and doc["eval_config"]["max_words"] == 120
    assert doc["eval_config"]["seed_list"] == [42, 43]
    assert (tmp_path / "out" / "absorption.png").is_file() and "| absorption |" in (tmp_path / "out" / "report.md").read_text()
    assert "absorption" in json.loads((tmp_path / "out" / "results.json").read_text())[0]


def test_core_and_meta_structure_write_their_json_into_one_table(suite, tmp_path, capsys):
    corpus = write_tiny_corpus(tmp_path / "corpus", repeats=30)
    argv = ["eval", str(suite), "--bench", "core,meta_structure", "--corpus", str(corpus), "--tokens", "64", "--context-size", "16"]
    assert main([*argv, "--batch-size", "2", "--seeds", "2", "--meta-steps", "20", "--device", "cpu"]) == 0
    out = suite / "bench"
    doc = json.loads((out / "core" / "a_eval_results.json").read_text())
    assert doc["eval_type_id"] == "core" and doc["eval_config"]["dataset"] == str(corpus)
    assert doc["eval_result_metrics"]["token_stats"]["total_tokens_eval_reconstruction"] == 64
    meta = json.loads((out / "meta_structure_decoder_variance" / "b_eval_results.json").read_text())
    assert meta["eval_config"]["train_steps"] == 20 and meta["eval_config"]["seed_list"] == [42, 43]
    rows = json.loads((out / "results.json").read_text())
    assert {"ce_score", "kl_score", "ev", "ev_centred", "meta_fve"} <= set(rows[0])
    assert (out / "core.png").is_file() and (out / "meta_structure.png").is_file()
    assert "saekit eval --bench core,meta_structure: 2 SAE(s) through" in capsys.readouterr().out


def test_options_of_the_other_mode_are_refused(suite, capsys):
    assert main(["eval", str(suite), "--bench", "sparse_probing", "--data", "x.npy"]) == 2
    assert "--data has no effect with --bench" in capsys.readouterr().err
    assert main(["eval", str(suite), "--bench", "absorption", "--k", "3", "--skip-positions", "2"]) == 2
    assert "--k, --skip-positions have no effect with --bench absorption" in capsys.readouterr().err
    assert main(["eval", str(suite), "--bench", "sparse_probing", "--words", "30"]) == 2
    assert "--words has no effect with --bench sparse_probing" in capsys.readouterr().err
    assert main(["eval", str(suite), "--bench", "meta_structure", "--tokens", "100", "--batch-size", "2"]) == 2
    assert "--tokens, --batch-size have no effect with --bench meta_structure" in capsys.readouterr().err
    assert main(["eval", str(suite), "--bench", "core", "--seeds", "3", "--meta-steps", "10"]) == 2
    assert "--meta-steps, --seeds have no effect with --bench core" in capsys.readouterr().err
    assert main(["eval", str(suite), "--bench", "sparse_probing", "--corpus", "x"]) == 2
    assert "--corpus has no effect with --bench sparse_probing" in capsys.readouterr().err
    assert main(["eval", str(suite), "--seeds", "3"]) == 2
    assert "--seeds has no effect without --bench" in capsys.readouterr().err
    assert not (suite / "bench").exists() and not (suite / "eval").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bench", "scr"], "argument --bench: unknown benchmark scr; choose from sparse_probing, absorption, core, meta_structure"),
        (["--bench", "sparse_probing", "--k", "1,x"], "argument --k: expected a positive integer, got 'x'"),
    ],
)
def test_unknown_benchmarks_and_bad_k_are_refused_when_parsed(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(tmp_path), *extra])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_k_larger_than_the_saes_is_named(suite, capsys):
    assert main(["eval", str(suite), "--bench", "sparse_probing", "--k", "1,64"]) == 2
    assert "k=64 is larger than SAE 'a''s d_sae=32" in capsys.readouterr().err
