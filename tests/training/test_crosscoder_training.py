"""Training a crosscoder (an SAE over several sites side by side) in the one engine: each site
normalised by its own factor, the factors folded back into the saved weights, and the refusals."""

from __future__ import annotations

import pytest
import torch

from saekit.errors import ConfigError, DataError
from saekit.sae import build
from saekit.training import train
from saekit.training.normalise import enter_normalised_units_, leave_normalised_units_
from saekit.types import ActBatch


def _sites(n: int = 2048, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two sites of one width whose scales differ 200-fold, correlated as a model's layers are."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 8, generator=g) * 3.0
    b = (torch.randn(n, 8, generator=g) * 0.1 + a @ torch.randn(8, 8, generator=g) * 0.02) * 0.05
    return {"a": a, "b": b}


def _crosscoder(arch: str = "crosscoder", **kw):
    sae = build(arch, d_in=16, d_sae=32, seed=3, **kw)
    sae.metadata["sites"] = ["a", "b"]
    return sae


@pytest.mark.parametrize("arch,kw", [("crosscoder", {}), ("batch_topk", {"k": 4}), ("topk", {"k": 4})])
def test_training_on_raw_sites_equals_training_on_sites_already_normalised(arch, kw) -> None:
    """Each site is scaled by its own factor; the trained crosscoder takes raw rows and gives what the
    same crosscoder trained on the normalised rows gives, each site's block divided by its factor."""
    data = _sites()
    raw = train(_crosscoder(arch, **kw), data, steps=30, batch_size=128, progress=False).sae
    factors = raw.metadata["normalization_factors"]
    for site, factor in zip(["a", "b"], factors):
        assert factor == pytest.approx(float(data[site].pow(2).sum(-1).mean().rsqrt()), rel=1e-6)
    normalised = {site: x * f for (site, x), f in zip(data.items(), factors)}
    ref = train(_crosscoder(arch, **kw), normalised, steps=30, batch_size=128, normalize_activations=False, progress=False).sae
    assert raw.metadata["sites"] == ["a", "b"]
    x = torch.cat([data["a"][:64], data["b"][:64]], -1)
    x_norm = torch.cat([normalised["a"][:64], normalised["b"][:64]], -1)
    per_position = torch.tensor(factors).repeat_interleave(8)
    torch.testing.assert_close(raw.encode(x), ref.encode(x_norm), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(raw(x), ref(x_norm) / per_position, rtol=1e-4, atol=1e-5)


def test_entering_and_leaving_normalised_units_is_exact_per_site() -> None:
    torch.manual_seed(0)
    sae = _crosscoder()
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(16))
    scales = {"a": 0.25, "b": 8.0}
    x = torch.randn(10, 16)
    before = sae(x).detach()
    leave_normalised_units_(sae, ("a", "b"), None, scales)  # now takes raw rows: x_raw = x / s
    assert sae.metadata["normalization_factors"] == [0.25, 8.0]
    s = torch.tensor([0.25] * 8 + [8.0] * 8)
    torch.testing.assert_close(sae(x / s).detach(), before / s, rtol=1e-5, atol=1e-6)
    enter_normalised_units_(sae, ActBatch(x), ("a", "b"), ("a", "b"), scales)  # a trained SAE goes back
    torch.testing.assert_close(sae(x).detach(), before, rtol=1e-5, atol=1e-6)


def test_a_crosscoder_keeps_training_from_its_saved_units() -> None:
    """A trained crosscoder fine-tuned again starts where it ended (its factors re-entered per site)."""
    data = _sites()
    first = train(_crosscoder(), data, steps=20, batch_size=128, progress=False)
    x = torch.cat([data["a"][:256], data["b"][:256]], -1)
    err_before = float((first.sae(x) - x).detach().pow(2).sum())
    again = train(first.sae, data, steps=1, batch_size=128, lr_warmup_steps=10**6, progress=False).sae
    assert float((again(x) - x).detach().pow(2).sum()) == pytest.approx(err_before, rel=1e-3)


@pytest.mark.parametrize(
    "sites,data_sites,error,words",
    [
        (["a", "c"], ["a", "b"], ConfigError, "not ['c']"),
        (["a", "a"], ["a", "b"], ConfigError, "named twice"),
        (["a", "wide"], ["a", "wide"], DataError, "widths"),
    ],
)
def test_bad_crosscoder_sites_are_refused_by_name(sites, data_sites, error, words) -> None:
    data = {"a": torch.randn(64, 8), "b": torch.randn(64, 8), "wide": torch.randn(64, 10)}
    sae = build("crosscoder", d_in=16, d_sae=8)
    sae.metadata["sites"] = sites
    with pytest.raises(error, match="crosscoder") as info:
        train(sae, {s: data[s] for s in data_sites}, steps=1, batch_size=32, progress=False)
    assert words in str(info.value)


def test_a_transcoder_over_several_sites_is_refused() -> None:
    sae = build("topk_transcoder", d_in=16, d_sae=8, k=2, d_out=8)
    sae.metadata["sites"] = ["a", "b"]
    with pytest.raises(ConfigError, match="transcoder of one output site reads one site"):
        train(sae, {"a": torch.randn(64, 8), "b": torch.randn(64, 8)}, steps=1, batch_size=32, progress=False)


def test_the_log_names_a_crosscoders_sites() -> None:
    result = train(_crosscoder(), _sites(256), steps=2, batch_size=64, progress=False)
    assert result.final_metrics[0]["site"] == "a+b"


def test_a_cross_layer_transcoder_trained_on_raw_sites_equals_one_trained_on_normalised_sites() -> None:
    """Input and output sites each get their own factor; folded back, the CLT takes raw rows and gives
    each output site's block divided by that site's factor."""
    g = torch.Generator().manual_seed(5)
    data = {"in0": torch.randn(1024, 8, generator=g) * 4.0, "in1": torch.randn(1024, 8, generator=g) * 0.2}
    data |= {"out0": data["in0"] @ torch.randn(8, 6, generator=g) * 0.1, "out1": torch.randn(1024, 6, generator=g) * 30.0}

    def clt():
        sae = build("topk_clt", d_in=16, d_out=12, d_sae=32, k=4, n_layers=2, skip=True, seed=1)
        sae.metadata |= {"sites": ["in0", "in1"], "sites_out": ["out0", "out1"]}
        return sae

    raw = train(clt(), data, steps=25, batch_size=128, progress=False).sae
    f_in, f_out = raw.metadata["normalization_factors"], raw.metadata["normalization_factors_out"]
    factors = dict(zip(["in0", "in1", "out0", "out1"], f_in + f_out))
    normalised = {site: x * factors[site] for site, x in data.items()}
    ref = train(clt(), normalised, steps=25, batch_size=128, normalize_activations=False, progress=False).sae
    x = torch.cat([data["in0"][:64], data["in1"][:64]], -1)
    x_norm = torch.cat([normalised["in0"][:64], normalised["in1"][:64]], -1)
    out_factor = torch.tensor(f_out).repeat_interleave(6)
    torch.testing.assert_close(raw(x), ref(x_norm) / out_factor, rtol=1e-4, atol=1e-5)
