import math

import pytest
import torch

from saekit.errors import DataError
from saekit.eval.recovery import feature_recovery
from saekit.sae import build
from saekit.sources.synthetic import SyntheticSource


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    rows = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return rows / rows.norm(dim=1, keepdim=True)


def test_hand_computed_example():
    true = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    learned = torch.tensor([[1.0, 1.0], [2.0, 0.0]])  # not unit norm on purpose
    # Best cosines: [1,0] matches [2,0] exactly; [0,1] best matches [1,1] at 1/√2.
    result = feature_recovery(learned, true, threshold=0.9)
    torch.testing.assert_close(result.best_cos, torch.tensor([1.0, 1 / math.sqrt(2)]))
    assert result.mmcs == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    assert result.recovered == 0.5 and result.threshold == 0.9
    assert feature_recovery(learned, true, threshold=0.7).recovered == 1.0


def test_permuted_rescaled_copy_with_extra_rows_is_fully_recovered():
    true = unit_rows(40, 16, seed=0)
    scales = torch.rand(40, 1, generator=torch.Generator().manual_seed(1)) + 0.5
    learned = torch.cat([(true * scales)[torch.randperm(40)], unit_rows(25, 16, seed=2)])
    result = feature_recovery(learned, true)
    assert result.mmcs == pytest.approx(1.0, abs=1e-6)
    assert result.recovered == 1.0
    assert result.best_cos.shape == (40,)


def test_random_directions_are_not_recovered():
    result = feature_recovery(unit_rows(50, 64, seed=3), unit_rows(50, 64, seed=4))
    assert result.mmcs < 0.5
    assert result.recovered == 0.0


def test_cosine_is_signed():
    true = unit_rows(20, 32, seed=5)
    result = feature_recovery(-true, true)
    assert result.recovered == 0.0 and result.mmcs < 0.5


def test_accepts_an_sae_and_uses_its_decoder_rows():
    sae = build("topk", d_in=8, d_sae=24, k=4, seed=0)
    source = SyntheticSource(d=8, n_features=12, mean_active=2.0)
    with torch.no_grad():
        sae.W_dec[:12] = source.true_features
    result = feature_recovery(sae, source.true_features)
    assert result.recovered == 1.0 and result.mmcs == pytest.approx(1.0, abs=1e-6)


def test_mismatched_or_malformed_inputs():
    with pytest.raises(DataError, match="width 4 but true features have width 3"):
        feature_recovery(torch.randn(5, 4), torch.randn(5, 3))
    with pytest.raises(DataError, match="non-empty"):
        feature_recovery(torch.randn(0, 3), torch.randn(5, 3))
    with pytest.raises(TypeError, match="got list"):
        feature_recovery([[1.0]], torch.randn(1, 1))
    with pytest.raises(ValueError, match="threshold"):
        feature_recovery(torch.randn(2, 2), torch.randn(2, 2), threshold=1.5)
