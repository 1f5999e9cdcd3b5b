"""`saekit eval` on a suite spliced into a tiny model: the report folder and its numbers."""

import json

import pytest

from saekit.cli.main import main
from saekit.eval.evaluate import evaluate
from saekit.io import save_suite
from saekit.models import load_model
from saekit.sae import build
from saekit.sources.text import TextConfig, tokens_from_config
from tests.tiny_lm import write_tiny_corpus, write_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def suite(tmp_path):
    write_tiny_model(tmp_path / "model")
    corpus = write_tiny_corpus(tmp_path / "corpus", repeats=40)
    saes = []
    for i, (arch, extra) in enumerate([("topk", {"k": 2}), ("relu", {}), ("topk", {"k": 4})]):
        sae = build(arch, d_in=16, d_sae=32, seed=i, **extra)
        sae.metadata.update(site=f"layers.{min(i, 1)}.resid_post", model=str(tmp_path / "model"))
        saes.append(sae)
    folder = save_suite(saes, tmp_path / "suite", names=["a", "b", "c"])
    return folder, corpus, tmp_path


def test_eval_writes_rows_table_and_plots(suite, capsys):
    folder, corpus, tmp_path = suite
    code = main(["eval", str(folder), "--corpus", str(corpus), "--tokens", "96", "--context-size", "8", "--batch-size", "3"])
    assert code == 0
    out = folder / "eval"
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(rows) == {"a", "b", "c"}
    assert rows["b"]["site"] == "layers.1.resid_post" and rows["b"]["architecture"] == "relu"

    loaded = load_model(tmp_path / "model")
    tokens = tokens_from_config(TextConfig(corpus=str(corpus), context_size=8, n_tokens=96, split="test"), loaded.tokenizer)
    from saekit.io import load_suite

    # The same batching as the command's, so that both run the very same float32 computation.
    direct = evaluate(load_suite(folder)["a"], model=loaded, tokens=tokens, skip_positions=1, context_batch_size=3)
    for key in ("l0", "fvu", "delta_ce", "kl", "loss_recovered_zero", "clean_ce"):
        assert rows["a"][key] == pytest.approx(direct[key], rel=1e-6), key
    assert rows["a"]["l0"] == pytest.approx(2.0)

    report = (out / "report.md").read_text()
    assert "| name | site | architecture |" in report and "loss_recovered_zero" in report
    for plot in ("frontier.png", "by_depth.png", "density.png"):
        assert (out / plot).stat().st_size > 1000
        assert f"]({plot})" in report
    assert "held-out tokens" in capsys.readouterr().out


def test_eval_on_an_activation_file_keeps_working(suite, tmp_path):
    import numpy as np

    folder, _, _ = suite
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).standard_normal((256, 16)).astype("float32"))
    assert main(["eval", str(folder / "a"), "--data", str(tmp_path / "acts.npy"), "--out", str(tmp_path / "r")]) == 0
    (row,) = json.loads((tmp_path / "r" / "results.json").read_text())
    assert row["tokens"] == 256 and "delta_ce" not in row


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "-3"], "argument --batch-size: expected a positive integer, got -3"),
        (["--tokens", "many"], "argument --tokens: expected a positive integer, got 'many'"),
        (["--skip-positions", "-1"], "argument --skip-positions: expected an integer of 0 or more, got -1"),
    ],
)
def test_impossible_numbers_are_refused_when_parsed(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(tmp_path), *extra])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_options_the_chosen_mode_ignores_are_refused(suite, tmp_path, capsys):
    """--batch-size or --device with --data used to be ignored without a word; so was --max-tokens
    on a model."""
    import numpy as np

    folder, _, _ = suite
    np.save(tmp_path / "acts.npy", np.ones((16, 16), "float32"))
    assert main(["eval", str(folder / "a"), "--data", str(tmp_path / "acts.npy"), "--batch-size", "3", "--device", "cpu"]) == 2
    assert "--batch-size, --device have no effect with --data (activation metrics only)" in capsys.readouterr().err
    assert main(["eval", str(folder / "a"), "--max-tokens", "5"]) == 2
    assert "--max-tokens has no effect without --data" in capsys.readouterr().err
    assert not (folder / "a" / "eval").exists()


def test_a_report_folder_that_cannot_be_written_is_named(suite, tmp_path, capsys):
    import numpy as np

    folder, _, _ = suite
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).standard_normal((64, 16)).astype("float32"))
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["eval", str(folder / "a"), "--data", str(tmp_path / "acts.npy"), "--out", str(tmp_path / "a-file" / "r")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'a-file' / 'r'}" in err and "(ENOTDIR)" in err
