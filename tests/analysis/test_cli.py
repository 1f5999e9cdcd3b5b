import json

import pytest

import saekit
from saekit.analysis.cross_layer import CrossLayerResult
from saekit.analysis.dark_matter import DarkMatterResult
from saekit.analysis.seed_stability import SeedStabilityResult
from saekit.analysis.steering import Decomposition
from saekit.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import tiny_lm

    root = tmp_path_factory.mktemp("tiny")
    tiny_lm.write_tiny_model(root / "model")
    tiny_lm.write_tiny_corpus(root / "corpus")
    for layer in (0, 1):
        sae = saekit.build_sae("topk", d_in=16, d_sae=24, k=4, seed=layer)
        sae.metadata["site"] = f"layers.{layer}.resid_post"
        saekit.save_sae(sae, root / f"sae{layer}")
    return root


def common(tiny, tokens=256):
    return ["--model", str(tiny / "model"), "--corpus", str(tiny / "corpus"), "--split", "all", "--context-size", "16", "--tokens", str(tokens)]


def test_dark_matter_command(tiny, tmp_path, capsys):
    rc = main(["analyse", "dark-matter", str(tiny / "sae1"), "--previous", str(tiny / "sae0"), "--ce-contexts", "2", *common(tiny), "--out", str(tmp_path / "dm")])
    assert rc == 0
    res = DarkMatterResult.load(tmp_path / "dm")
    assert res.tokens_train + res.tokens_test == 16 * 14  # 16 contexts of 16 tokens, BOS and position 1 dropped
    assert res.previous is not None and "delta_ce_sae" in res.downstream
    assert "r2_vector" in capsys.readouterr().out


def test_seeds_command_on_saved_saes_and_with_training(tiny, tmp_path):
    assert main(["analyse", "seeds", str(tiny / "sae0"), str(tiny / "sae0"), "--out", str(tmp_path / "s")]) == 0
    assert SeedStabilityResult.load(tmp_path / "s").groups[0].shared_fraction == 1.0
    rc = main(["analyse", "seeds", "--train", "--site", "layers.0.resid_post", "--arch", "relu", "--d-sae", "32", "--batch-size", "64", *common(tiny), "--out", str(tmp_path / "t")])
    assert rc == 0
    res = SeedStabilityResult.load(tmp_path / "t")
    assert [g.name for g in res.groups] == ["relu"] and res.groups[0].pairs[0].seeds == [0, 1]
    assert json.loads((tmp_path / "t" / "saes" / "index.json").read_text())["saes"][1]["name"] == "relu-seed1"


def test_sae_match_command(tiny, tmp_path):
    rc = main(["analyse", "sae-match", str(tiny / "sae0"), str(tiny / "sae1"), "--ce-contexts", "2", *common(tiny, 128), "--out", str(tmp_path / "m")])
    assert rc == 0
    (pair,) = CrossLayerResult.load(tmp_path / "m").pairs
    assert pair.site == "layers.0.resid_post" and pair.delta_ce_match is not None


def test_steer_command(tiny, tmp_path, capsys):
    out = tmp_path / "st"
    rc = main(["analyse", "steer", "--model", str(tiny / "model"), "--corpus", str(tiny / "corpus"), "--split", "all", "--context-size", "16",
               "--sae", str(tiny / "sae0"), "--pos", "the cat sat", "--neg", "the dog sat", "--prompt", "a mat", "b", "--scale", "1", "2",
               "--max-new-tokens", "3", "--reference-tokens", "64", "--out", str(out)])  # fmt: skip
    assert rc == 0
    dec = Decomposition.load(out)
    assert [(e["prompt"], e["scale"]) for e in dec.steering] == [("a mat", 1.0), ("b", 1.0), ("a mat", 2.0), ("b", 2.0)]
    assert dec.norm_percentile is not None
    assert "KL(clean" in capsys.readouterr().out
    assert main(["analyse", "steer", "--model", str(tiny / "model"), "--sae", str(tiny / "sae0"), "--feature", "3", "--prompt", "a mat",
                 "--max-new-tokens", "2", "--reference-tokens", "0", "--out", str(tmp_path / "f")]) == 0  # fmt: skip
    assert main(["analyse", "steer", "--model", str(tiny / "model"), "--site", "layers.0.resid_post", "--out", str(tmp_path / "x")]) == 2


def test_seeds_options_that_only_training_uses_are_refused_without_train(tiny, tmp_path, capsys):
    saes = [str(tiny / "sae0"), str(tiny / "sae1")]
    assert main(["analyse", "seeds", *saes, "--d-sae", "64", "--model", "other", "--out", str(tmp_path / "s")]) == 2
    assert "--d-sae, --model have no effect without --train" in capsys.readouterr().err
    assert main(["analyse", "seeds", "--train", *saes, "--site", "layers.0.resid_post", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "--train trains new SAEs; the SAE folders given" in err and "would be ignored" in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()
