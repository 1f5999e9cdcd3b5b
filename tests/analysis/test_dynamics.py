"""The maths of SAE-Track's analyses against hand computation and scipy."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import spearmanr

from saekit.analysis import dynamics as D
from saekit.errors import DataError

R2 = 1 / math.sqrt(2)


def test_mean_pairwise_cosine_by_hand():
    # pairs of (1,0), (0,1), (1,1): cosines 0, 1/sqrt2, 1/sqrt2 -> mean sqrt2/3
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    assert D.mean_pairwise_cosine(v, torch.ones(1, 3, dtype=torch.bool)).item() == pytest.approx(2 * R2 / 3)
    # the third masked out: one pair, cosine 0; a zero vector counts as cosine 0 with anything
    assert D.mean_pairwise_cosine(v, torch.tensor([[True, True, False]])).item() == pytest.approx(0.0)
    zero = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]]])
    assert D.mean_pairwise_cosine(zero, torch.ones(1, 3, dtype=torch.bool)).item() == pytest.approx(1 / 3)
    assert math.isnan(D.mean_pairwise_cosine(v, torch.tensor([[True, False, False]])).item())


def test_mean_pairwise_cosine_equals_the_explicit_double_loop():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5, 7, 4, generator=g)
    valid = torch.rand(5, 7, generator=g) > 0.3
    got = D.mean_pairwise_cosine(v, valid)
    for s in range(5):
        idx = valid[s].nonzero().flatten().tolist()
        pairs = [torch.nn.functional.cosine_similarity(v[s, i], v[s, j], dim=0) for i in idx for j in idx if i != j]
        want = torch.stack(pairs).mean() if pairs else torch.tensor(float("nan"))
        assert got[s].item() == pytest.approx(want.item(), abs=1e-6, nan_ok=True)


def test_weighted_jaccard_by_hand():
    # (1,2) vs (2,1): sum min 2, sum max 4 -> 0.5; with (0,0): 0 both ways
    v = torch.tensor([[[1.0, 2.0], [2.0, 1.0], [0.0, 0.0]]])
    assert D.mean_pairwise_wjaccard(v, torch.tensor([[True, True, False]])).item() == pytest.approx(0.5)
    assert D.mean_pairwise_wjaccard(v, torch.ones(1, 3, dtype=torch.bool)).item() == pytest.approx(1 / 6)
    with pytest.raises(DataError, match="non-negative"):
        D.mean_pairwise_wjaccard(-v, torch.ones(1, 3, dtype=torch.bool))


def test_progress_is_the_top_tokens_similarity_minus_the_random_tokens():
    codes = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.5, 1.0]])
    top = D.top_tokens(codes, 2)
    assert top.index[0].tolist() == [1, 0] and sorted(top.index[1].tolist()) == [2, 3] and top.valid.all()
    p = D.progress(codes, top, torch.tensor([0, 2]))
    # random rows (1,0),(0,1): cosine 0, Jaccard 0; latent 0's top rows are parallel (cos 1, WJ 1/2),
    # latent 1's are (0,1),(0.5,1): cos 1/sqrt(1.25), WJ 1/1.5
    assert p.cosine_baseline == pytest.approx(0.0) and p.wjaccard_baseline == pytest.approx(0.0)
    assert p.cosine.tolist() == pytest.approx([1.0, 1 / math.sqrt(1.25)])
    assert p.wjaccard.tolist() == pytest.approx([0.5, 2 / 3])
    acts = D.progress(codes - 5, top, torch.tensor([0, 2]), jaccard=False)  # activations may be negative
    assert torch.isnan(acts.wjaccard).all()


def test_top_tokens_marks_rows_where_the_latent_is_silent():
    codes = torch.tensor([[0.0, 3.0], [1.0, 2.0], [0.0, 1.0]])
    top = D.top_tokens(codes, 3)
    assert top.valid.tolist() == [[True, False, False], [True, True, True]]
    with pytest.raises(DataError, match="k >= 2"):
        D.top_tokens(codes, 4)


def test_drift_to_final_and_previous():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    decoders = torch.stack([torch.stack([e1, e2]), torch.stack([(e1 + e2) * 3, e2]), torch.stack([e2, e2 * 2])])
    drift = D.drift(decoders)
    assert drift.to_final[:, 0].tolist() == pytest.approx([0.0, R2, 1.0])
    assert drift.to_previous[:, 0].tolist() == pytest.approx([1.0, R2, R2])
    assert drift.to_final[:, 1].tolist() == pytest.approx([1.0, 1.0, 1.0])
    with pytest.raises(DataError, match="checkpoints >= 2"):
        D.drift(decoders[:1])


def test_formation_is_the_first_checkpoint_at_half_the_final_progress():
    curve = torch.tensor([[0.0, 0.3, -0.1], [0.2, 0.3, -0.2], [0.6, 0.1, 0.0], [1.0, 0.4, -0.1]])
    assert D.formation(curve).tolist() == [2, 0, -1]


def test_token_purity():
    top = D.TopTokens(torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]), torch.tensor([[True] * 4, [True, True, False, False]]))
    ids = torch.tensor([7, 7, 7, 9])
    assert D.token_purity(top, ids).tolist() == pytest.approx([0.75, 1.0])


def test_trajectory_keeps_distances_of_a_planar_path():
    # unit directions in the plane of e1, e2 (inside R^4): the projection is an isometry of the centred path
    angles = torch.tensor([0.0, 0.3, 0.9, 1.2])
    directions = torch.zeros(4, 4)
    directions[:, 0], directions[:, 1] = angles.cos(), angles.sin()
    path = D.trajectory_2d(directions * 5)
    assert torch.cdist(path, path) == pytest.approx(torch.cdist(directions, directions), abs=1e-5)


def test_spearman_matches_scipy_with_ties_and_ignores_nan():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 5, (30,), generator=g).float()
    b = a + torch.randn(30, generator=g)
    assert D.spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-9)
    a[3] = float("nan")
    keep = torch.arange(30) != 3
    assert D.spearman(a, b) == pytest.approx(spearmanr(a[keep].numpy(), b[keep].numpy()).statistic, abs=1e-9)
    assert math.isnan(D.spearman(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])))
