import math

import pytest
import torch

from saekit.errors import DataError
from saekit.sae import build
from saekit.sources.synthetic import SyntheticSource
from saekit.sources.tensor import TensorSource
from saekit.training import train
from saekit.training.normalise import OUTLIER_NORM, estimate_scales
from saekit.types import ActBatch

SOURCE = SyntheticSource(d=16, n_features=48, mean_active=3, seed=1)
FAST = dict(batch_size=64, norm_estimation_tokens=64, progress=False)


def _rows(n=512, seed=0):
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))


def test_the_factor_is_the_root_of_the_inverse_mean_squared_norm():
    x = _rows()
    scales = estimate_scales(TensorSource(x), {"default"}, batch_size=128, seed=0, n_tokens=512)
    assert scales["default"] == pytest.approx(math.sqrt(512 / float(x.double().pow(2).sum())), rel=1e-12)


@pytest.mark.parametrize("value", [1e6, 3e38])
def test_one_outlier_row_in_the_estimation_window_is_refused_by_name(value):
    """One finite row of 1e6 used to set the factor alone: every other row came out near zero and the
    SAE trained to an FVU of 6 to 1e67 without a word."""
    x = _rows()
    x[300, 5] = value
    with pytest.raises(DataError, match=r"site 'default': row \d+ of the stream has norm .* times the median norm .* remove rows with norm above"):
        estimate_scales(TensorSource(x), {"default"}, batch_size=128, seed=0, n_tokens=512)


def test_massive_activations_of_real_models_are_not_outliers():
    """SmolLM2's first token after BOS reaches about 150 times the median norm: normal data, kept."""
    x = _rows()
    x[7] *= 150.0 / float(x[7].norm() / x.norm(dim=1).median())
    scales = estimate_scales(TensorSource(x), {"default"}, batch_size=128, seed=0, n_tokens=512)
    assert scales["default"] == pytest.approx(math.sqrt(512 / float(x.double().pow(2).sum())), rel=1e-12)
    assert 150 < OUTLIER_NORM


class OutlierAfterWindow:
    """A one-site stream whose batch ``at`` carries one row of norm 1e6, past the estimation window."""

    sites = ("default",)

    def __init__(self, at):
        self.at = at

    def d_in(self, site):
        return 16

    def describe(self):
        return {"kind": "test", "at": self.at}

    def batches(self, batch_size, *, seed, start=0):
        for i in range(start, 10**6):
            x = _rows(batch_size, seed=i)
            if i == self.at:
                x[9, 0] = 1e6
            yield {"default": ActBatch(x=x)}


def test_an_outlier_met_in_training_is_named_not_blamed_on_the_learning_rate():
    sae = build("topk", d_in=16, d_sae=32, k=4, seed=0)
    with pytest.raises(DataError, match=r"row 9 of the batch at step 3 has norm 1e\+06, .* times the batch's median norm"):
        train(sae, OutlierAfterWindow(at=3), steps=6, **FAST)


def test_an_outlier_in_user_data_stops_training_before_it_starts():
    x = SOURCE.sample(512)
    x[100] = 1e6
    with pytest.raises(DataError, match="outlier this large"):
        train(build("relu", d_in=16, d_sae=32, seed=0), x, steps=4, **{**FAST, "norm_estimation_tokens": 512})
