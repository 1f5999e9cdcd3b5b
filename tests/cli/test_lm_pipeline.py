"""The language-model path end to end, as a user runs it, on a tiny local model folder and corpus:
`saekit cache`, then `saekit train` from the cache and from the live model."""

import json

import pytest
import torch
from tiny_lm import write_tiny_corpus, write_tiny_model

from saekit.cli.main import main
from saekit.io import load_sae
from saekit.sources.cache import CacheSource, verify_cache

TRAIN = """
out = "{out}"
[data]
{data}
[train]
steps = 4
batch_size = 32
norm_estimation_tokens = 32
progress = false
[[sae]]
architecture = "topk"
d_sae = 32
k = 4
site = "layers.1.resid_post"
[[sae]]
architecture = "relu"
d_sae = 32
site = "layers.0.resid_post"
"""


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    write_tiny_model(root / "model")
    write_tiny_corpus(root / "corpus")
    return root


def test_cache_then_train_from_it(lm, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["cache", "--out", str(cache), "--model", str(lm / "model"), "--corpus", str(lm / "corpus"),
            "--sites", "layers.*.resid_post", "--tokens", "512", "--context-size", "16", "--split", "all",
            "--shard-tokens", "200", "--dtype", "float32"]  # fmt: skip
    assert main(args) == 0
    assert verify_cache(cache) == []
    source = CacheSource(cache)
    assert source.sites == ("layers.0.resid_post", "layers.1.resid_post")
    assert source.n_rows == 32 * 15  # 512 tokens = 32 contexts of 16, BOS left out
    assert json.loads((cache / "manifest.json").read_text())["info"]["model"] == str(lm / "model")
    # The cache holds exactly what the live model computes, context by context, in token order.
    from saekit.sources.spec import model_source

    live = model_source({"model": str(lm / "model"), "corpus": str(lm / "corpus"), "sites": ["layers.*.resid_post"],
                         "n_tokens": 512, "context_size": 16, "split": "all"})  # fmt: skip
    cached = torch.cat(list(source.iter_rows(100, site="layers.1.resid_post")))
    assert torch.equal(cached, torch.cat([c["layers.1.resid_post"] for c in live.chunks_in_order()]))
    # Running the same command again finds the complete cache and leaves it as it is.
    before = (cache / "manifest.json").read_bytes()
    assert main(args) == 0
    assert (cache / "manifest.json").read_bytes() == before

    config = tmp_path / "run.toml"
    config.write_text(TRAIN.format(out=tmp_path / "run", data=f'kind = "cache"\npath = "{cache}"'))
    assert main(["train", str(config)]) == 0
    sae = load_sae(tmp_path / "run" / "saes" / "00-topk")
    assert sae.site == "layers.1.resid_post" and sae.d_in == 16


def test_cache_leaves_out_the_leading_positions_a_run_config_leaves_out(lm, tmp_path):
    """A run config whose data skips the token after BOS too (skip_positions = 2, SmolLM2's massive
    activations) can be cached with the same rows."""
    cache = tmp_path / "cache"
    args = ["cache", "--out", str(cache), "--model", str(lm / "model"), "--corpus", str(lm / "corpus"),
            "--tokens", "512", "--context-size", "16", "--split", "all", "--dtype", "float32", "--skip-positions", "2"]  # fmt: skip
    assert main(args) == 0
    source = CacheSource(cache)
    assert source.n_rows == 32 * 14 and source.describe()["info"]["skip_positions"] == 2
    from saekit.sources.spec import model_source

    live = model_source({"model": str(lm / "model"), "corpus": str(lm / "corpus"), "n_tokens": 512, "context_size": 16,
                         "split": "all", "skip_positions": 2})  # fmt: skip
    cached = torch.cat(list(source.iter_rows(100, site="layers.1.resid_post")))
    assert torch.equal(cached, torch.cat([c["layers.1.resid_post"] for c in live.chunks_in_order()]))


def test_a_skip_as_long_as_the_context_is_named(lm, tmp_path, capsys):
    args = ["cache", "--out", str(tmp_path / "c"), "--model", str(lm / "model"), "--corpus", str(lm / "corpus"),
            "--tokens", "512", "--context-size", "16", "--split", "all", "--skip-positions", "16"]  # fmt: skip
    assert main(args) == 2
    assert "skip_positions must be in 0..15, got 16" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_train_from_the_live_model(lm, tmp_path):
    data = f'kind = "model"\nmodel = "{lm / "model"}"\ncorpus = "{lm / "corpus"}"\nsites = ["layers.0.resid_post", "layers.1.resid_post"]\ncontext_size = 16\nn_tokens = 512\nsplit = "all"\nchunk_seqs = 8'
    config = tmp_path / "run.toml"
    config.write_text(TRAIN.format(out=tmp_path / "run", data=data))
    assert main(["train", str(config)]) == 0
    relu = load_sae(tmp_path / "run" / "saes" / "01-relu")
    assert relu.site == "layers.0.resid_post"
    provenance = json.loads((tmp_path / "run" / "saes" / "01-relu" / "provenance.json").read_text())
    assert provenance["data"]["kind"] == "model" and provenance["data"]["context"] == 16


def test_unknown_model_data_key_is_named(lm, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(TRAIN.format(out=tmp_path / "run", data='kind = "model"\nlayers = 3'))
    assert main(["train", str(config)]) == 2
    assert "unknown key 'layers' for kind 'model'" in capsys.readouterr().err
