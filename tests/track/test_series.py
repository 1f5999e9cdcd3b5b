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
    first = json.loads((out / SERIES / "00-step-0" / "stage.json").read_text())
    resumed = run_series(tr, out, resume=True)
    # the done stage is skipped and reports the time of the call that trained it
    assert resumed.series[0].seconds == first["seconds"] > 0 and first["steps"] == 12
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
    summary = json.loads((dynamics / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))["00-topk"]
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


def test_a_text_series_over_listed_checkpoints_with_two_sites_and_architectures(tmp_path):
    from tiny_lm import TINY_CORPUS, tiny_llama, tiny_tokenizer

    from saekit.track.measure import measure_series

    folders = []
    for step in (0, 50):
        model = tiny_llama()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + step / 25)
        model.save_pretrained(tmp_path / f"run/step{step}")
        tiny_tokenizer().save_pretrained(tmp_path / f"run/step{step}")
        folders.append(str(tmp_path / f"run/step{step}"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(TINY_CORPUS * 4):
        (corpus / f"{i}.txt").write_text(text)
    path = tmp_path / "t.toml"
    path.write_text(f"""
[track]
checkpoints = {folders!r}
steps = 4
analysis_contexts = 6
top_k = 3
random_tokens = 10
[data]
kind = "model"
sites = ["layers.0.resid_post", "layers.1.mlp_out"]
corpus = "{corpus}"
context_size = 6
split = "all"
[train]
steps = 8
batch_size = 16
norm_estimation_tokens = 32
progress = false
device = "cpu"
[[sae]]
architecture = "topk"
site = "layers.0.resid_post"
d_sae = 24
k = 3
[[sae]]
architecture = "relu"
site = "layers.1.mlp_out"
d_sae = 24
""")
    tr = load_track_config(path)
    assert [(c.label, c.step) for c in tr.checkpoints] == [("step0", 0), ("step50", 50)]
    series = run_series(tr, tmp_path / "out")
    results = measure_series(tr, series)
    assert [(r.name, r.site) for r in results] == [("00-topk", "layers.0.resid_post"), ("01-relu", "layers.1.mlp_out")]
    for r in results:
        assert r.progress_cosine.shape == (2, 24) and len(r.model_loss) == 2 and all(v >= 0 for v in r.fvu)


def test_a_config_refused_on_its_way_in_leaves_no_trace(checkpoints, tmp_path):
    tr = load_track_config(_config(checkpoints, tmp_path, sae='architecture = "topk"\nd_sae = 32\nk = 4\nbogus = 1'))
    with pytest.raises(ConfigError, match="bogus"):
        run_series(tr, tmp_path / "out")
    assert not (tmp_path / "out" / "track.json").exists()
    fixed = load_track_config(_config(checkpoints, tmp_path))
    assert len(run_series(fixed, tmp_path / "out").series) == 3  # no --resume needed after the refusal


def test_a_transcoder_series_warm_starts_with_both_sites_factors(checkpoints, tmp_path):
    from saekit.track.measure import measure_series

    path = tmp_path / "t.toml"
    text = track_toml(checkpoints, tmp_path / "out", sae='architecture = "topk_transcoder"\nsite = "layers.0.mlp_in"\nsite_out = "layers.0.mlp_out"\nd_sae = 32\nk = 4')
    path.write_text(text.replace(f'sites = ["{SITE}"]', 'sites = ["layers.0.mlp_in", "layers.0.mlp_out"]'))
    tr = load_track_config(path)
    series = run_series(tr, tmp_path / "out")
    first = saekit.load_suite(series.series[0].folder / "saes")["00-topk_transcoder"]
    assert first.metadata["normalization_factor"] != first.metadata["normalization_factor_out"]
    (result,) = measure_series(tr, series)
    assert result.site == "layers.0.mlp_in" and all(0 <= v < 1.5 for v in result.fvu)
    assert float(result.drift_to_final[0][result.alive].mean()) > 0.5


def test_a_transcoder_warm_start_rescales_by_its_input_and_output_factors():
    sae = saekit.build_sae("topk_transcoder", d_in=4, d_out=3, d_sae=8, k=2, seed=0)
    sae.metadata.update(site="a", site_out="b", normalization_factor=2.0, normalization_factor_out=5.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g) * 7, torch.randn(64, 3, generator=g) * 0.5
    new_in, new_out = (math.sqrt(64 / float(t.double().pow(2).sum())) for t in (x, y))
    before = {n: t.detach().clone() for n, t in sae.state_dict().items()}
    warm_start_(sae, TensorSource({"a": x, "b": y}), TrainConfig(steps=1, batch_size=64, norm_estimation_tokens=64), lr=1e-4)
    out_ratio = 5.0 / new_out
    for name in sae.scaled_params:
        assert torch.allclose(sae.state_dict()[name], before[name] * out_ratio, rtol=1e-5), name
    ratio = [name for name in sae.ratio_params if name in before]  # W_skip only with skip = true
    for name in ratio:
        assert torch.allclose(sae.state_dict()[name], before[name] * out_ratio / (2.0 / new_in), rtol=1e-5), name
    assert ratio and sae.scaled_params


def test_a_crosscoder_warm_start_rescales_each_site_by_its_own_ratio():
    """Each site's block of the encoder rows, decoder columns and b_dec moves by that site's old / new
    factor: the crosscoder enters the new data's normalised units as it left the old data's."""
    sae = saekit.build_sae("crosscoder", d_in=6, d_sae=8, seed=0)
    sae.metadata.update(sites=["a", "b"], normalization_factors=[2.0, 0.5])
    g = torch.Generator().manual_seed(0)
    data = {"a": torch.randn(64, 3, generator=g) * 7, "b": torch.randn(64, 3, generator=g) * 0.1}
    new = {site: math.sqrt(64 / float(x.double().pow(2).sum())) for site, x in data.items()}
    before = {n: t.detach().clone() for n, t in sae.state_dict().items()}
    warm_start_(sae, TensorSource(data), TrainConfig(steps=1, batch_size=64, norm_estimation_tokens=64), lr=1e-4)
    ratio = torch.tensor([2.0 / new["a"]] * 3 + [0.5 / new["b"]] * 3)
    assert torch.allclose(sae.W_dec.detach(), before["W_dec"] * ratio, rtol=1e-5)
    assert torch.allclose(sae.b_dec.detach(), before["b_dec"] * ratio, rtol=1e-5)
    assert torch.allclose(sae.W_enc.detach(), before["W_enc"] / ratio[:, None], rtol=1e-5)
    assert torch.equal(sae.b_enc.detach(), before["b_enc"])
