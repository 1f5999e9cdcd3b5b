import pytest
import torch

import saekit
from saekit.analysis import seed_stability as ss
from saekit.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def permuted_copy(sae, perm, replace_rows, seed):
    """A copy of ``sae`` with latents permuted by ``perm`` and the latents at ``replace_rows`` (new
    positions) given fresh random encoder and decoder directions."""
    g = torch.Generator().manual_seed(seed)
    other = saekit.build_sae(sae.architecture, d_in=sae.d_in, d_sae=sae.d_sae, seed=seed)
    with torch.no_grad():
        other.W_dec.copy_(sae.W_dec[perm])
        other.W_enc.copy_(sae.W_enc[:, perm])
        other.W_dec[replace_rows] = torch.randn(len(replace_rows), sae.d_in, generator=g)
        other.W_enc[:, replace_rows] = torch.randn(sae.d_in, len(replace_rows), generator=g)
    return other


def test_shared_fraction_of_a_permuted_copy_with_replaced_latents():
    a = saekit.build_sae("topk", d_in=64, d_sae=100, k=4, seed=0)
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(1))
    b = permuted_copy(a, perm, list(range(30)), seed=2)  # 30 fresh random directions, 70 exact copies
    res = ss.run({"topk": [a, b]}, threshold=0.7)
    (group,) = res.groups
    assert group.shared_fraction == pytest.approx(0.70)
    assert group.pairs[0].orphans == 30
    assert group.pairs[0].encoder_shared_same_pairs == pytest.approx(0.70)
    assert group.pairs[0].both_shared == pytest.approx(0.70)
    assert group.encoder_shared_fraction == pytest.approx(0.70)
    assert sum(group.hist_counts) == 100
    assert group.hist_counts[-1] >= 70  # the copies sit in the last bin (cos = 1)
    # identical SAEs share everything; the statistic is symmetric in the pair
    assert ss.run({"x": [a, a]}).groups[0].shared_fraction == 1.0
    assert ss.run({"x": [b, a]}).groups[0].shared_fraction == pytest.approx(0.70)


def test_three_seeds_give_three_pairs_and_round_trip(tmp_path):
    saes = ss.seed_suite("relu", d_in=16, d_sae=32, seeds=[0, 1, 2])
    assert [s.metadata["init_seed"] for s in saes] == [0, 1, 2]
    assert not torch.equal(saes[0].W_dec, saes[1].W_dec)
    res = ss.run({"relu": saes})
    assert [p.seeds for p in res.groups[0].pairs] == [[0, 1], [0, 2], [1, 2]]
    assert res.groups[0].matched_cosines.shape == (96,)
    res.save(tmp_path / "s")
    back = ss.SeedStabilityResult.load(tmp_path / "s")
    assert back.groups[0].pairs == res.groups[0].pairs
    assert torch.equal(back.groups[0].matched_cosines, res.groups[0].matched_cosines)
    assert back.plot(tmp_path / "s.png") is not None


def test_bad_groups_are_refused():
    with pytest.raises(DataError, match="at least two"):
        ss.run({"a": [saekit.build_sae("relu", d_in=4, d_sae=8)]})
    with pytest.raises(DataError, match="distinct seeds"):
        ss.seed_suite("relu", d_in=4, d_sae=8, seeds=[1, 1])


def test_seeds_trained_on_planted_features_agree():
    """With as many latents as planted features, two seeds both find most features, so they share
    most latents (the paper's control), while the same SAEs before training share none."""
    data = saekit.SyntheticSource(d=32, n_features=32, mean_active=3, seed=0)
    saes = ss.seed_suite("topk", d_in=32, d_sae=32, seeds=[0, 1], k=3)
    assert ss.run({"init": saes}).groups[0].shared_fraction < 0.1
    saes = saekit.train(saes, data, steps=600, batch_size=512, seed=0, progress=False).saes
    group = ss.run({"topk": saes}).groups[0]
    recovered = [saekit.feature_recovery(s, data.true_features).recovered for s in saes]
    assert min(recovered) > 0.6
    assert group.shared_fraction > 0.6
