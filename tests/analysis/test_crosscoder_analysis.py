"""The crosscoder analysis: relative decoder norms by hand, the units of training, and planted shared
and exclusive features found by a trained crosscoder."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.analysis.crosscoder import CrosscoderResult, analyse, site_norms
from saekit.cli.main import main
from saekit.errors import DataError
from saekit.io import save_sae
from saekit.sae import build
from saekit.training import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _with_decoder(W_dec: torch.Tensor, sites: list[str], factors: list[float] | None = None):
    sae = build("crosscoder", d_in=W_dec.shape[1], d_sae=W_dec.shape[0])
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
    sae.metadata["sites"] = sites
    if factors is not None:
        sae.metadata["normalization_factors"] = factors
    return sae


def test_relative_norms_and_classes_by_hand() -> None:
    W = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # only at a: r = 0
            [0.0, 0.0, 0.0, 2.0],  # only at b: r = 1
            [3.0, 4.0, 3.0, 4.0],  # equal and parallel at both: r = 0.5, cosine 1
            [1.0, 0.0, 0.0, 3.0],  # r = 0.75, orthogonal
            [0.0, 0.0, 0.0, 0.0],  # never trained
        ]
    )
    result = analyse(_with_decoder(W, ["a", "b"]))
    expected = torch.tensor([0.0, 1.0, 0.5, 0.75, math.nan])
    torch.testing.assert_close(result.relative, expected, equal_nan=True)
    assert (result.alive, result.exclusive_a, result.exclusive_b, result.shared) == (4, 1, 1, 1)
    assert result.shared_cosine_median == pytest.approx(1.0)
    assert result.sites_written == [2, 2]


def test_norms_are_taken_in_the_units_of_training() -> None:
    """Saved weights are in raw units (block s divided by its factor); the analysis multiplies back."""
    W = torch.tensor([[1.0, 0.0, 0.1, 0.0]])  # raw: site b's block 10 times smaller ...
    sae = _with_decoder(W, ["a", "b"], factors=[1.0, 10.0])  # ... because site b was scaled up 10 times
    torch.testing.assert_close(site_norms(sae), torch.tensor([[1.0, 1.0]]))
    assert analyse(sae).shared == 1


def test_bad_requests_are_named() -> None:
    sae = _with_decoder(torch.eye(4), ["a", "b"])
    with pytest.raises(DataError, match="'c' is not one"):
        analyse(sae, pair=("a", "c"))
    with pytest.raises(DataError, match="twice"):
        analyse(sae, pair=("a", "a"))
    with pytest.raises(DataError, match="exclusive_below"):
        analyse(sae, exclusive_below=0.4)
    one = build("relu", d_in=4, d_sae=4)
    with pytest.raises(DataError, match="reads one site"):
        analyse(one)


def planted(n: int = 12288, d: int = 16, per_class: int = 10, seed: int = 0):
    """Two sites: features shared by both (a direction at each), and features of one site only; site b
    five times larger. Returns the data and the planted directions side by side [3·per_class, 2d]."""
    g = torch.Generator().manual_seed(seed)

    def directions(k: int) -> torch.Tensor:
        v = torch.randn(k, d, generator=g)
        return v / v.norm(dim=1, keepdim=True)

    def firing(k: int) -> torch.Tensor:
        return (torch.rand(n, k, generator=g) < 0.05).float() * (0.5 + torch.rand(n, k, generator=g))

    shared_a, shared_b, only_a, only_b = directions(per_class), directions(per_class), directions(per_class), directions(per_class)
    s, ea, eb = firing(per_class), firing(per_class), firing(per_class)
    data = {"a": s @ shared_a + ea @ only_a, "b": 5.0 * (s @ shared_b + eb @ only_b)}
    zero = torch.zeros(per_class, d)
    truth = torch.cat([torch.cat([shared_a, shared_b], 1), torch.cat([only_a, zero], 1), torch.cat([zero, only_b], 1)])
    return data, truth


@pytest.mark.parametrize(
    "arch,hparams,size",
    [
        ("crosscoder", {"l1_coef": 0.03}, {"n": 8192, "d": 8, "per_class": 6, "d_sae": 24, "steps": 600, "batch_size": 256}),
        pytest.param(
            "batch_topk", {"k": 2}, {"n": 16384, "d": 16, "per_class": 12, "d_sae": 64, "steps": 1500, "batch_size": 512},
            marks=pytest.mark.slow,
        ),
    ],
)  # fmt: skip
def test_a_trained_crosscoder_finds_planted_shared_and_exclusive_features(arch, hparams, size) -> None:
    d, per = size["d"], size["per_class"]
    data, truth = planted(n=size["n"], d=d, per_class=per)
    sae = build(arch, d_in=2 * d, d_sae=size["d_sae"], seed=0, **hparams)
    sae.metadata["sites"] = ["a", "b"]
    trained = train(sae, data, steps=size["steps"], batch_size=size["batch_size"], progress=False).sae
    result = analyse(trained)
    # The planted directions in the units of training, against the decoder in the same units.
    factors = torch.tensor(trained.metadata["normalization_factors"]).repeat_interleave(d)
    W = trained.W_dec.detach() * factors
    scale = torch.tensor([1.0] * d + [5.0] * d) * factors
    cos = torch.nn.functional.normalize(truth * scale, dim=1) @ torch.nn.functional.normalize(W, dim=1).T
    best, match = cos.max(1)
    assert float((best > 0.9).float().mean()) >= 0.75
    relative = result.relative[match]
    assert float(relative[:per].sub(0.5).abs().median()) < 0.1  # shared: half its norm at each site
    assert float(relative[per : 2 * per].median()) < 0.05  # only at a
    assert float(relative[2 * per :].median()) > 0.95  # only at b


def test_the_command_writes_the_result_and_its_plot(tmp_path, capsys) -> None:
    sae = _with_decoder(torch.eye(4), ["a", "b"], factors=[1.0, 1.0])
    save_sae(sae, tmp_path / "cc")
    assert main(["analyse", "crosscoder", str(tmp_path / "cc"), "--out", str(tmp_path / "out")]) == 0
    assert "| a vs b | 4 | 2 | 0 | 2 |" in capsys.readouterr().out
    loaded = CrosscoderResult.load(tmp_path / "out")
    assert loaded.exclusive_a == 2 and (tmp_path / "out" / "plot.png").is_file()
