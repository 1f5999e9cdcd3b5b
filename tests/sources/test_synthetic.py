import itertools
import json

import pytest
import torch

from saekit.errors import ConfigError, DataError
from saekit.sources.synthetic import EVAL_BLOCK, SyntheticConfig, SyntheticSource, zipf_probabilities
from saekit.types import ActivationSource


def small(**overrides) -> SyntheticSource:
    return SyntheticSource(SyntheticConfig(d=16, n_features=64, mean_active=4.0), **overrides)


def test_implements_the_source_protocol():
    source = small()
    assert isinstance(source, ActivationSource)
    assert source.sites == ("synthetic",)
    assert source.d_in("synthetic") == 16
    with pytest.raises(DataError, match="no site 'other'"):
        source.d_in("other")
    assert small(site="layer3").sites == ("layer3",)


def test_true_features_are_unit_rows_fixed_by_the_config_seed():
    a, b, c = small(), small(), small(seed=1)
    features = a.true_features
    assert features.shape == (64, 16)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(64))
    assert torch.equal(features, b.true_features)
    assert not torch.allclose(features, c.true_features)


def test_zipf_probabilities_sum_to_mean_active_in_zipf_ratio():
    p = zipf_probabilities(100, 1.0, 5.0)
    assert float(p.sum()) == pytest.approx(5.0)
    # Uncapped, p_i / p_j = ((j+1)/(i+1))^exponent.
    assert float(p[0] / p[1]) == pytest.approx(2.0)
    assert float(p[0] / p[9]) == pytest.approx(10.0)
    assert bool((p[:-1] >= p[1:]).all())
    uniform = zipf_probabilities(8, 0.0, 2.0)
    torch.testing.assert_close(uniform, torch.full((8,), 0.25, dtype=torch.float64))


def test_zipf_probabilities_cap_the_head_at_one_and_keep_the_expectation():
    # Weights 1, 1/4, 1/9, ... sum to ~1.64 < 3, so a plain rescale would give p_0 > 1.
    p = zipf_probabilities(10, 2.0, 3.0)
    assert float(p.sum()) == pytest.approx(3.0)
    assert float(p.max()) == 1.0
    assert bool((p[:-1] >= p[1:]).all())
    # Below the cap the Zipf ratio still holds.
    uncapped = p < 1
    first = int(uncapped.nonzero()[0])
    assert float(p[first] / p[first + 1]) == pytest.approx(((first + 2) / (first + 1)) ** 2)
    assert float(zipf_probabilities(4, 1.0, 4.0).sum()) == pytest.approx(4.0)


def test_empirical_activity_matches_mean_active_and_zipf_order():
    source = small(zipf_exponent=1.0)
    codes = source.sample_with_codes(20_000, seed=3).codes
    active_per_token = (codes != 0).sum(1).float()
    assert float(active_per_token.mean()) == pytest.approx(4.0, abs=0.08)
    frequency = (codes != 0).float().mean(0)
    expected = source.firing_probabilities.float()
    assert float((frequency - expected).abs().max()) < 0.02
    # The most frequent features come out in rank order.
    assert frequency[0] > frequency[1] > frequency[3] > frequency[10] > frequency[40]


def test_codes_magnitudes_and_reconstruction():
    source = small(magnitude_min=0.25, magnitude_max=0.75)
    x, codes = source.sample_with_codes(2_000, seed=0)
    values = codes[codes != 0]
    assert float(values.min()) >= 0.25 and float(values.max()) <= 0.75
    assert float(values.mean()) == pytest.approx(0.5, abs=0.02)
    torch.testing.assert_close(x, codes @ source.true_features)


def test_noise_is_added_with_the_requested_std():
    source = small(noise_std=0.3)
    x, codes = source.sample_with_codes(4_000, seed=0)
    residual = x - codes @ source.true_features
    assert float(residual.std()) == pytest.approx(0.3, rel=0.05)


def test_batches_are_deterministic_and_resume_exactly():
    source = small()
    first = [b["synthetic"].x for b in itertools.islice(source.batches(32, seed=7), 6)]
    again = [b["synthetic"].x for b in itertools.islice(small().batches(32, seed=7), 6)]
    resumed = [b["synthetic"].x for b in itertools.islice(source.batches(32, seed=7, start=4), 2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert torch.equal(resumed[0], first[4]) and torch.equal(resumed[1], first[5])
    assert not torch.equal(first[0], first[1])
    other_seed = next(source.batches(32, seed=8))["synthetic"].x
    assert not torch.equal(other_seed, first[0])
    batch = source.batch(4, 32, seed=7)
    assert torch.equal(batch.x, first[4])
    assert batch.codes.shape == (32, 64)
    assert next(source.batches(32, seed=7))["synthetic"].grad is None


def test_evaluation_stream_is_chunk_invariant_and_separate_from_training():
    source = small()
    n = EVAL_BLOCK + 5  # crosses a block boundary
    sample = source.sample(n, seed=0)
    chunks = list(source.iter_rows(1000, max_rows=n))
    assert [c.shape[0] for c in chunks] == [1000] * 4 + [n - 4000]
    assert torch.equal(torch.cat(chunks), sample)
    assert torch.equal(source.sample(10, seed=0), sample[:10])
    # Disjoint random streams: not even the firing pattern of training batch 0 reappears.
    train_codes = source.batch(0, 32, seed=0).codes
    assert not torch.equal(source.sample_with_codes(32, seed=0).codes != 0, train_codes != 0)
    assert not torch.equal(source.sample(10, seed=1), sample[:10])


def test_iter_rows_needs_a_row_count():
    with pytest.raises(ValueError, match="endless"):
        small().iter_rows(16)


def test_grouped_features_fire_together_with_the_requested_correlation():
    # Equal firing probabilities (zipf 0) make the indicator correlation exactly group_correlation.
    source = SyntheticSource(
        d=8, n_features=16, mean_active=4.0, zipf_exponent=0.0, n_groups=2, group_size=4, group_correlation=0.5
    )
    fired = (source.sample_with_codes(30_000, seed=0).codes != 0).float()
    assert fired.mean(0).sub(0.25).abs().max() < 0.02  # marginals unchanged
    corr = torch.corrcoef(fired.T)
    within = torch.stack([corr[0, 1], corr[1, 3], corr[4, 7], corr[5, 6]])
    across = torch.stack([corr[0, 4], corr[3, 7], corr[0, 8], corr[8, 9]])  # features 8+ are ungrouped
    assert float((within - 0.5).abs().max()) < 0.04
    assert float(across.abs().max()) < 0.04


def test_describe_is_json_and_records_the_config():
    described = json.loads(json.dumps(small(noise_std=0.1).describe()))
    assert described["kind"] == "synthetic"
    assert described["n_features"] == 64 and described["noise_std"] == 0.1 and described["site"] == "synthetic"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mean_active": 100.0}, "mean_active"),
        ({"n_groups": 10, "group_size": 10}, "exceeds n_features"),
        ({"group_correlation": 0.5}, "needs n_groups"),
        ({"magnitude_min": 2.0, "magnitude_max": 1.0}, "magnitude_min"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"colour": "red"}, "unknown key 'colour'"),
    ],
)
def test_invalid_configs_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        small(**overrides)
