"""The new run-config tables ([[objective]], [e2e], init_from, with_grads) through `saekit train`,
on synthetic data and a tiny local model folder."""

import json
from pathlib import Path

import pytest
import torch
from tiny_lm import write_tiny_corpus, write_tiny_model

from saekit.cli.main import main
from saekit.cli.run_config import build_objectives, parse_run_config, read_config_file
from saekit.errors import ConfigError
from saekit.io import load_suite
from saekit.objectives.e2e import E2EConfig
from saekit.strict import from_dict

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("name", ["mfr-synthetic.toml", "e2e-smollm2.toml", "gsae-smollm2.toml"])
def test_example_configs_parse_with_their_new_tables(name):
    rc = parse_run_config(read_config_file(CONFIGS / name))
    objectives = build_objectives(rc.objectives, len(rc.saes))
    if rc.e2e is not None:
        from_dict(E2EConfig, rc.e2e, where="e2e")
    if name.startswith("mfr"):
        assert [o.members for o in objectives] == [(0, 1)]


def test_unknown_objective_and_e2e_keys_are_named():
    with pytest.raises(ConfigError, match="'kind' must be 'mfr'"):
        build_objectives([{"kind": "mrf"}], 2)
    with pytest.raises(ConfigError, match="strength"):
        build_objectives([{"kind": "mfr", "strength": 1}], 2)
    with pytest.raises(ConfigError, match="kl_weight"):
        from_dict(E2EConfig, {"kl_weight": 1}, where="e2e")


def test_mfr_config_trains_from_the_cli(tmp_path):
    out = tmp_path / "run"
    args = ["train", str(CONFIGS / "mfr-synthetic.toml"), "--out", str(out), "--set", "train.steps=6",
            "--set", "train.batch_size=64", "--set", "train.norm_estimation_tokens=64", "--set", "train.progress=false"]  # fmt: skip
    assert main(args) == 0
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "mfr_mmcs" in json.loads((out / "metrics.jsonl").read_text().splitlines()[-4])  # SAE 0 of the last step
    assert "mfr" not in line  # SAE 3 is not a member
    assert set(load_suite(out / "saes")) == {"mfr-a", "mfr-b", "apart-a", "apart-b"}


TINY = """
out = "{out}"
[data]
kind = "model"
model = "{model}"
corpus = "{corpus}"
sites = ["layers.0.resid_post"]
context_size = 12
n_tokens = 600
split = "all"
{extra_data}
[train]
steps = 3
batch_size = 22
norm_estimation_tokens = 22
progress = false
{extra}
[[sae]]
architecture = "{architecture}"
d_sae = 32
k = 4
{sae_extra}
"""


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    write_tiny_model(root / "model")
    write_tiny_corpus(root / "corpus")
    return root


def _write(tmp_path, lm, name, **fields):
    values = {"extra_data": "", "extra": "", "sae_extra": "", "architecture": "topk"} | fields
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(out=tmp_path / name, model=lm / "model", corpus=lm / "corpus", **values))
    return path


def test_e2e_config_trains_and_fine_tunes_a_saved_sae(lm, tmp_path):
    assert main(["train", str(_write(tmp_path, lm, "local"))]) == 0
    local = tmp_path / "local/saes/00-topk"
    # The tiny model has 2 blocks: after layers.0.resid_post the paper's "later" hooks are empty.
    e2e = _write(tmp_path, lm, "e2e", extra='[e2e]\ndownstream_sites = ["layers.1.resid_post"]', sae_extra=f'init_from = "{local}"')
    e2e.write_text(e2e.read_text().replace("d_sae = 32\nk = 4\n", ""))
    assert main(["train", str(e2e)]) == 0
    lines = [json.loads(line) for line in (tmp_path / "e2e/metrics.jsonl").read_text().splitlines()]
    assert {"kl", "downstream_mse"} <= lines[-1].keys()
    assert json.loads((tmp_path / "e2e/saes/00-topk/provenance.json").read_text())["objective"] == "e2e"


def test_gsae_config_trains_with_gradients(lm, tmp_path, recwarn):
    path = _write(tmp_path, lm, "gsae", architecture="gradient_topk", extra_data="with_grads = true", sae_extra="beta = 2.0")
    assert main(["train", str(path)]) == 0
    assert not [w for w in recwarn if "downstream gradient" in str(w.message)]
    sae = load_suite(tmp_path / "gsae/saes")["00-gradient_topk"]
    assert sae.cfg.beta == 2.0 and torch.isfinite(sae.W_dec).all()
