import itertools
from collections.abc import Iterator, Mapping

import numpy as np
import pytest
import torch

from saekit.errors import DataError
from saekit.eval import metrics
from saekit.eval.evaluate import evaluate
from saekit.sae import build
from saekit.sources.synthetic import SyntheticSource
from saekit.types import ActBatch

D_IN, D_SAE = 8, 32


@pytest.fixture
def sae():
    model = build("topk", d_in=D_IN, d_sae=D_SAE, k=3, seed=0)
    with torch.no_grad():
        model.b_dec.fill_(4.0)  # a large common offset, where naive streamed variance would cancel
        model.b_enc[:8] = -100.0  # latents that never fire, so dead_fraction is tested
    return model


def activations(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) + 4.0


@torch.no_grad()
def one_shot(sae, x: torch.Tensor) -> dict[str, float]:
    codes = sae.encode(x)
    x_hat = sae.decode(codes)
    return {
        "l0": metrics.l0(codes),
        "fvu": metrics.fvu(x, x_hat),
        "mse": metrics.mse(x, x_hat),
        "nmse": metrics.nmse(x, x_hat),
        "cos": metrics.cosine(x, x_hat),
        "l2_ratio": metrics.l2_ratio(x, x_hat),
        "relative_reconstruction_bias": metrics.relative_reconstruction_bias(x, x_hat),
        "dead_fraction": metrics.dead_fraction(codes),
        "dense_fraction": metrics.dense_fraction(codes),
        "tokens": x.shape[0],
    }


def assert_matches(result: dict[str, float], expected: dict[str, float]) -> None:
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert result["explained_variance"] == pytest.approx(1 - expected["fvu"], rel=1e-5)


@pytest.mark.parametrize("batch_size", [7, 10, 1000])  # 103 rows: neither 7 nor 10 divides it
def test_streaming_equals_one_shot(sae, batch_size):
    x = activations(103)
    expected = one_shot(sae, x)
    # The comparison is not vacuous.
    assert expected["dead_fraction"] == 0.25 and 0 < expected["dense_fraction"] < 0.75 and expected["fvu"] > 0
    assert_matches(evaluate(sae, x, batch_size=batch_size), expected)


def test_reads_each_row_once_in_order_without_gradients(sae, monkeypatch):
    x = activations(25)
    seen: list[torch.Tensor] = []
    encode = sae.encode

    def recording_encode(rows):
        assert not torch.is_grad_enabled()
        seen.append(rows.clone())
        return encode(rows)

    monkeypatch.setattr(sae, "encode", recording_encode)
    result = evaluate(sae, x, batch_size=10)
    assert [r.shape[0] for r in seen] == [10, 10, 5]
    assert torch.equal(torch.cat(seen), x)
    assert result["tokens"] == 25


def test_max_tokens_reads_a_prefix(sae):
    x = activations(50)
    assert_matches(evaluate(sae, x, batch_size=8, max_tokens=21), one_shot(sae, x[:21]))


def test_npy_path_and_numpy_inputs(sae, tmp_path):
    x = activations(30)
    path = tmp_path / "acts.npy"
    np.save(path, x.numpy())
    expected = one_shot(sae, x)
    assert_matches(evaluate(sae, str(path), batch_size=9), expected)
    assert_matches(evaluate(sae, x.numpy(), batch_size=9), expected)


def test_multi_site_sources_use_the_sae_site(sae):
    a, b = activations(20, seed=1), activations(20, seed=2)
    with pytest.raises(DataError, match=r"several sites \['a', 'b'\]"):
        evaluate(sae, {"a": a, "b": b})
    sae.metadata["site"] = "b"
    assert_matches(evaluate(sae, {"a": a, "b": b}, batch_size=6), one_shot(sae, b))


def test_width_mismatch(sae):
    with pytest.raises(DataError, match="width 5 but the SAE expects d_in=8"):
        evaluate(sae, torch.randn(10, 5))


def test_synthetic_source_needs_max_tokens_and_reads_its_evaluation_stream(sae):
    source = SyntheticSource(d=D_IN, n_features=16, mean_active=3.0)
    with pytest.raises(ValueError, match="endless"):
        evaluate(sae, source)
    result = evaluate(sae, source, batch_size=64, max_tokens=300)
    assert_matches(result, one_shot(sae, source.sample(300)))


class BatchesOnly:
    """A source that can only produce shuffled batches (like a live language-model source)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    @property
    def sites(self) -> tuple[str, ...]:
        return ("live",)

    def d_in(self, site: str) -> int:
        return self.x.shape[1]

    def batches(self, batch_size: int, *, seed: int, start: int = 0) -> Iterator[Mapping[str, ActBatch]]:
        for i in itertools.count(start):
            yield {"live": ActBatch(self.x.roll(-i * batch_size, 0)[:batch_size])}

    def describe(self) -> dict:
        return {"kind": "test"}


def test_sources_without_in_order_reading_are_read_through_batches(sae):
    x = activations(40)
    with pytest.raises(ValueError, match="give max_tokens"):
        evaluate(sae, BatchesOnly(x))
    # Batches of 10 from a rolling window: the first 25 tokens are rows 0..24.
    assert_matches(evaluate(sae, BatchesOnly(x), batch_size=10, max_tokens=25), one_shot(sae, x[:25]))


def test_explicit_device_leaves_the_sae_where_it_was(sae):
    result = evaluate(sae, activations(12), device="cpu")
    assert result["tokens"] == 12
    assert next(sae.parameters()).device.type == "cpu"


def test_one_token_or_constant_activations_are_refused_instead_of_a_nan_fvu():
    sae = build("topk", d_in=8, d_sae=16, k=2, seed=0)
    with pytest.raises(DataError, match=r"FVU needs activations that vary: 1 token\(s\) read; evaluate on more tokens"):
        evaluate(sae, torch.randn(1, 8))
    with pytest.raises(DataError, match=r"4 token\(s\) read, all equal"):
        evaluate(sae, torch.ones(4, 8))


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_a_transcoder_is_scored_on_the_site_it_writes(batch_size):
    """The input and output sites are read in step, batch by batch, and every metric is the output's."""
    sae = build("topk_transcoder", d_in=D_IN, d_out=5, d_sae=D_SAE, k=3, skip=True, seed=0)
    with torch.no_grad():
        sae.W_skip.normal_(generator=torch.Generator().manual_seed(1))
    sae.metadata.update(site="in", site_out="out")
    x = activations(103)
    y = torch.randn(103, 5, generator=torch.Generator().manual_seed(2))
    got = evaluate(sae, {"in": x, "out": y}, batch_size=batch_size)
    with torch.no_grad():
        codes = sae.encode(x)
        assert got["fvu"] == pytest.approx(metrics.fvu(y, sae(x)), rel=1e-5)
        assert got["mse"] == pytest.approx(metrics.mse(y, sae(x)), rel=1e-5)
        assert got["l0"] == pytest.approx(metrics.l0(codes), rel=1e-6)
    with pytest.raises(DataError, match=r"the transcoder writes 'out'; give a source with both of its sites"):
        evaluate(sae, {"in": x, "other": y})
    with pytest.raises(DataError, match=r"site 'out' has width 8 but the transcoder writes d_out=5"):
        evaluate(sae, {"in": x, "out": x})
