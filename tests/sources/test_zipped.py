"""Several models side by side on the same tokens (kind = "models"): the rows of every model are the
same tokens, and a cross-model crosscoder trains on them end to end as a user runs it."""

from __future__ import annotations

import pytest
import torch
from tiny_lm import tiny_llama, tiny_tokenizer, write_tiny_corpus, write_tiny_model

from saekit.cli.main import main
from saekit.errors import ConfigError
from saekit.io import load_sae
from saekit.sources.model import ModelSource
from saekit.sources.spec import source_from_spec
from saekit.sources.zipped import ZippedSource

pytestmark = pytest.mark.usefixtures("one_thread")

SITE = "layers.1.resid_post"


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    """A base model, its "fine-tune" (layer 1's MLP changed) and a corpus."""
    root = tmp_path_factory.mktemp("lms")
    write_tiny_model(root / "base")
    tuned = tiny_llama()
    with torch.no_grad():
        tuned.model.layers[1].mlp.down_proj.weight.add_(torch.randn(16, 32, generator=torch.Generator().manual_seed(1)))
    tuned.save_pretrained(root / "chat")
    tiny_tokenizer().save_pretrained(root / "chat")
    write_tiny_corpus(root / "corpus")
    return root


def _spec(lms, **extra):
    return {"kind": "models", "models": {"base": str(lms / "base"), "chat": str(lms / "chat")}, "corpus": str(lms / "corpus"),
            "sites": [SITE], "context_size": 16, "n_tokens": 512, "split": "all", "chunk_seqs": 8, **extra}  # fmt: skip


def test_every_models_rows_are_the_same_tokens(lms) -> None:
    source = source_from_spec(_spec(lms))
    assert isinstance(source, ZippedSource)
    assert source.sites == (f"base/{SITE}", f"chat/{SITE}")
    assert source.d_in(f"chat/{SITE}") == 16
    base, chat = source.parts["base"], source.parts["chat"]
    batch = next(iter(source.batches(40, seed=3, start=2)))
    assert torch.equal(batch[f"base/{SITE}"].x, next(iter(base.batches(40, seed=3, start=2)))[SITE].x)
    assert torch.equal(batch[f"chat/{SITE}"].x, next(iter(chat.batches(40, seed=3, start=2)))[SITE].x)
    # Same tokens: layer 0 is the same in both models, so its rows are equal row for row.
    both = source_from_spec(_spec(lms, sites=["layers.0.resid_post"]))
    first = next(iter(both.batches(64, seed=0)))
    assert torch.equal(first["base/layers.0.resid_post"].x, first["chat/layers.0.resid_post"].x)
    assert not torch.equal(batch[f"base/{SITE}"].x, batch[f"chat/{SITE}"].x)
    assert source.describe()["models"]["chat"]["model"] == str(lms / "chat")


def test_models_that_do_not_read_the_same_tokens_are_refused(lms) -> None:
    model = tiny_llama()
    one = ModelSource(model, torch.randint(3, 15, (8, 10)), [SITE])
    other = ModelSource(model, torch.randint(3, 15, (8, 10)), [SITE])
    with pytest.raises(ConfigError, match="same tokens"):
        ZippedSource({"a": one, "b": other})
    with pytest.raises(ConfigError, match="free of '/'"):
        ZippedSource({"a/b": one, "c": one})
    with pytest.raises(ConfigError, match="two or more"):
        ZippedSource({"a": one})


@pytest.mark.parametrize(
    "change,words",
    [
        ({"models": {"base": "x"}}, "two or more"),
        ({"models": ["a", "b"]}, "two or more"),
        ({"model": "x"}, "not 'model'"),
        ({"layers": 3}, "unknown key 'layers'"),
    ],
)
def test_bad_models_tables_are_named(lms, change, words) -> None:
    with pytest.raises(ConfigError, match=words):
        source_from_spec(_spec(lms, **change))


def test_a_model_with_another_tokenizer_is_refused(lms, tmp_path) -> None:
    other = tmp_path / "other"
    tiny_llama().save_pretrained(other)
    tok = tiny_tokenizer()
    tok.add_tokens(["zebra"])
    tok.save_pretrained(other)
    with pytest.raises(ConfigError, match="another tokenizer"):
        source_from_spec(_spec(lms, models={"base": str(lms / "base"), "other": str(other)}))


RUN = """
out = "{out}"
[data]
kind = "models"
models = {{ base = "{base}", chat = "{chat}" }}
corpus = "{corpus}"
sites = ["{site}"]
context_size = 16
n_tokens = 512
split = "all"
chunk_seqs = 8
[train]
steps = 6
batch_size = 32
norm_estimation_tokens = 64
progress = false
[[sae]]
architecture = "crosscoder"
d_sae = 24
sites = ["base/{site}", "chat/{site}"]
"""


def test_a_cross_model_crosscoder_from_the_command(lms, tmp_path, capsys) -> None:
    config = tmp_path / "run.toml"
    config.write_text(RUN.format(out=tmp_path / "run", base=lms / "base", chat=lms / "chat", corpus=lms / "corpus", site=SITE))
    assert main(["train", str(config)]) == 0
    sae = load_sae(tmp_path / "run" / "saes" / "00-crosscoder")
    assert sae.sites == (f"base/{SITE}", f"chat/{SITE}") and sae.d_in == 32
    assert len(sae.metadata["normalization_factors"]) == 2
    assert main(["analyse", "crosscoder", str(tmp_path / "run" / "saes" / "00-crosscoder"), "--out", str(tmp_path / "cc")]) == 0
    assert f"base/{SITE} vs chat/{SITE}" in capsys.readouterr().out
