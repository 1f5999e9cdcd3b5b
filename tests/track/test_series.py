"""The series: warm starts in normalised units, latent identity, the baseline, resume, and the command."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import saekit
from saekit.cli.main import main
from saekit.errors import ConfigError
from saekit.sources.tensor import TensorSource
from saekit.track.config import load_track_config
from saekit.track.series import SERIES, run_series, warm_start_
from saekit.training.config import TrainConfig
from tests.track.tiny_checkpoints import SITE, track_toml, write_checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return write_checkpoints(tmp_path_factory.mktemp("ckpts"), steps=(0, 1, 4))


def _config(checkpoints, tmp_path, **kw):
    path = tmp_path / "track.toml"
    path.write_text(track_toml(checkpoints, tmp_path / "out", **kw))
    return path


def test_a_warm_start_enters_the_new_data_in_the_normalised_units_it_left():
    sae = saekit.build_sae("topk", d_in=4, d_sae=8, k=2, seed=0)
    with torch.no_grad():
        sae.b_dec.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    sae.metadata.update(site="s", normalization_factor=2.0)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)) * 7
    new_scale = math.sqrt(64 / float(x.double().pow(2).sum()))
    before = sae.b_dec.detach().clone()
    warm_start_(sae, TensorSource({"s": x}), TrainConfig(steps=1, batch_size=64, norm_estimation_tokens=64), lr=3e-5)
    assert sae.cfg.lr == 3e-5
    # the engine will multiply by new_scale on entry: the result is the old normalised b_dec, before * 2
    assert torch.allclose(sae.b_dec.detach() * new_scale, before * 2.0, rtol=1e-5)


def _decoders(out, which=SERIES):
    return [saekit.load_suite(f / "saes")["00-topk"].W_dec.detach() for f in sorted((out / which).iterdir())]


def test_the_series_keeps_latent_identity_and_independent_saes_do_not(checkpoints, tmp_path):
    tr = load_track_config(_config(checkpoints, tmp_path, extra="independent = true"))
    result = run_series(tr, tmp_path / "out")
    assert [(s.checkpoint.label, s.warm, s.steps) for s in result.series] == [("step-0", False, 12), ("step-1", True, 6), ("step-4", True, 6)]
    assert [s.checkpoint.label for s in result.independent] == ["step-1", "step-4"]
    series, independent = _decoders(tmp_path / "out"), _decoders(tmp_path / "out", "independent")
    by_index = torch.nn.functional.cosine_similarity(series[0], series[2], dim=1).mean()
    scratch = torch.nn.functional.cosine_similarity(independent[0], independent[1], dim=1).mean()
    assert by_index > 0.8 and abs(float(scratch)) < 0.3
    stage = json.loads((tmp_path / "out" / SERIES / "01-step-1" / "config.json").read_text())
    assert stage["warm_start"].endswith("00-step-0/saes")
    # the fine-tuning runs at lr_factor times the from-scratch learning rate, not compounded
    lrs = [saekit.load_suite(f / "saes")["00-topk"].cfg.lr for f in sorted((tmp_path / "out" / SERIES).iterdir())]
    assert lrs[1] == pytest.approx(lrs[2]) and lrs[1] > 0


def test_start_last_trains_backwards(checkpoints, tmp_path):
    tr = load_track_config(_config(checkpoints, tmp_path, extra='start = "last"'))
    result = run_series(tr, tmp_path / "out")
    assert [(s.checkpoint.label, s.warm) for s in result.series] == [("step-0", True), ("step-1", True), ("step-4", False)]
    stage = json.loads((tmp_path / "out" / SERIES / "00-step-0" / "config.json").read_text())
    assert stage["warm_start"].endswith("01-step-1/saes")


def test_a_resumed_series_ends_with_the_weights_of_an_uninterrupted_one(checkpoints, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = run_series(load_track_config(_config(checkpoints, tmp_path / "a")), tmp_path / "a" / "out")
    tr = load_track_config(_config(checkpoints, tmp_path / "b"))
    out = tmp_path / "b" / "out"
    run_series(tr, out)
    with pytest.raises(ConfigError, match="already holds a series"):
        run_series(tr, out)
    shutil.rmtree(out / SERIES / "02-step-4")  # killed before the last stage began
    shutil.rmtree(out / SERIES / "01-step-1" / "saes")  # killed after training, before saving
    resumed = run_series(tr, out, resume=True)
    assert [s.seconds == 0 for s in resumed.series] == [True, False, False]
    for i, (a, b) in enumerate(zip(_decoders(tmp_path / "a" / "out"), _decoders(out))):
        assert torch.equal(a, b), i
    assert len(whole.series) == 3
    changed = load_track_config(tmp_path / "b" / "track.toml", ["track.steps=5"])
    with pytest.raises(ConfigError, match="other settings"):
        run_series(changed, out, resume=True)


def test_saekit_track_writes_the_dynamics_the_plots_and_the_findings(checkpoints, tmp_path, capsys):
    path = _config(checkpoints, tmp_path, extra="independent = true")
    assert main(["track", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "| 00-topk |" in printed and "progress_vs_loss" in printed
    dynamics = tmp_path / "out" / "dynamics"
    summary = json.loads((dynamics / "summary.json").read_text())["00-topk"]
    assert summary["alive_latents"] > 0 and len(summary["fvu"]) == 3
    assert summary["cost"]["series_finetune_steps"] == 12 and summary["cost"]["independent_steps"] == 24
    assert len(summary["cost"]["independent_steps_to_reach_series_loss"]) == 2
    for name in ("drift.png", "formation.png", "trajectories.png", "result.json", "arrays.safetensors"):
        assert (dynamics / "00-topk" / name).is_file()
    from saekit.track.measure import SAEDynamics

    result = SAEDynamics.load(dynamics / "00-topk")
    assert result.site == SITE and result.drift_to_final.shape == (3, 32)
    assert torch.allclose(result.drift_to_final[-1][result.alive], torch.ones(int(result.alive.sum())))
    assert len(result.independent_by_index_to_final) == 3
    # by index the independent SAEs share nothing; matched, they share more
    assert result.independent_matched_to_final[0] > abs(result.independent_by_index_to_final[0])
