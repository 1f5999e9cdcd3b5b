"""Coverage and board reconstruction: hand-computed examples, the perfect dictionary, chance, streaming."""

import numpy as np
import pytest
import torch

from saekit.boardgames import board_reconstruction, coverage, latent_best
from saekit.boardgames.properties import PropertyTable, square_groups
from saekit.errors import ConfigError, DataError

# Coverage by hand, thresholds (0, 0.5), 8 positions, 2 latents, 2 properties:
#   latent 0 = [1, .8, .4, 0, .6, 0, .2, 0] (max 1), latent 1 = 3 at position 3 only (max 3)
#   A = positions 0-3, B = position 3
#   t=0:   latent 0 on {0,1,2,4,6}: A TP 3 FP 2 FN 1 -> F1 6/9;  B TP 0 -> 0
#          latent 1 on {3}:         A TP 1 FP 0 FN 3 -> F1 2/5;  B TP 1 FP 0 FN 0 -> 1
#   t=0.5: latent 0 on {0,1,4}:     A TP 2 FP 1 FN 2 -> F1 4/7;  latent 1 as before
#   coverage(0) = (2/3 + 1)/2 = 5/6, coverage(0.5) = (4/7 + 1)/2 = 11/14; best 5/6 at t=0
HAND_CODES = np.array(
    [[1.0, 0], [0.8, 0], [0.4, 0], [0, 3.0], [0.6, 0], [0, 0], [0.2, 0], [0, 0]],
    dtype=np.float32,
)
HAND_PROPS = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0], [0, 0], [0, 0], [0, 0]], dtype=bool)


def test_coverage_of_the_hand_example():
    result = coverage(HAND_CODES, HAND_PROPS, thresholds=(0.0, 0.5))
    assert result.f1 == pytest.approx(np.array([[2 / 3, 1.0], [4 / 7, 1.0]]))
    assert result.latent.tolist() == [[0, 1], [0, 1]]
    assert result.per_threshold == pytest.approx([5 / 6, 11 / 14])
    assert result.best == pytest.approx(5 / 6) and result.best_threshold == 0.0


def test_each_latents_best_property_of_the_hand_example():
    # latent 0: A at t=0 (2/3) beats A at t=0.5 (4/7) and B (0); latent 1: B at t=0 and t=0.5 (1.0, the
    # lowest threshold kept); latent 2 never fires: no property.
    codes = np.concatenate([HAND_CODES, np.zeros((8, 1), np.float32)], axis=1)
    result = latent_best(codes, HAND_PROPS, thresholds=(0.0, 0.5))
    assert result.property.tolist() == [0, 1, -1]
    assert result.f1 == pytest.approx([2 / 3, 1.0, 0.0])
    assert result.threshold.tolist() == [0.0, 0.0, 0.0]


def test_each_latents_best_property_streams_as_coverage_does():
    rng = np.random.default_rng(0)
    codes = np.maximum(rng.normal(size=(300, 40)), 0).astype(np.float32)
    props = rng.random((300, 7)) < 0.3
    whole = latent_best(codes, props)
    tiled = latent_best(codes, props, block_bytes=1 << 16)
    assert np.array_equal(whole.property, tiled.property) and np.allclose(whole.f1, tiled.f1)
    best = coverage(codes, props)  # each property's best latent names it as its own best or a better one
    for t, g in zip(*np.nonzero(best.latent >= 0)):
        assert whole.f1[best.latent[t, g]] >= best.f1[t, g] - 1e-12


# Reconstruction by hand, thresholds (0, 0.5), min_firings 3:
#   fit: latent 0 = [1, .8, .7, .2, 0, 0] with A = positions 0-2: t=0 on {0..3}, precision 3/4 -> no label;
#        t=0.5 on {0,1,2}, precision 1, 3 firings -> label A.
#        latent 1 = 2 at positions 4, 5 with B there: precision 1 but 2 firings < 3 -> no label.
#   test: latent 0 = [.9, .6, .4, 0], latent 1 = 5 at position 3; A at 0 and 2, B at 3.
#        t=0: no labels: TP 0, FP 0, FN 3 -> F1 0
#        t=0.5: latent 0 on {0, 1} -> A predicted at 0 (TP) and 1 (FP); A at 2 and B at 3 missed:
#        TP 1, FP 1, FN 2 -> precision 1/2, recall 1/3, F1 2/5
FIT_CODES = np.array([[1.0, 0], [0.8, 0], [0.7, 0], [0.2, 0], [0, 2.0], [0, 2.0]], dtype=np.float32)
FIT_PROPS = np.array([[1, 0], [1, 0], [1, 0], [0, 0], [0, 1], [0, 1]], dtype=bool)
TEST_CODES = np.array([[0.9, 0], [0.6, 0], [0.4, 0], [0, 5.0]], dtype=np.float32)
TEST_PROPS = np.array([[1, 0], [0, 0], [1, 0], [0, 1]], dtype=bool)


def test_board_reconstruction_of_the_hand_example():
    r = board_reconstruction(FIT_CODES, FIT_PROPS, TEST_CODES, TEST_PROPS, thresholds=(0.0, 0.5), min_firings=3)
    assert r.labels.tolist() == [0, 1] and r.labelled_latents.tolist() == [0, 1]
    assert r.tp.tolist() == [0, 1] and r.fp.tolist() == [0, 1] and r.fn.tolist() == [3, 2]
    assert r.precision == pytest.approx([0, 1 / 2]) and r.recall == pytest.approx([0, 1 / 3])
    assert r.f1 == pytest.approx([0, 2 / 5]) and r.best == pytest.approx(2 / 5) and r.best_threshold == 0.5
    assert r.f1_per_square is None and r.best_per_square is None
    # with 2 firings enough, latent 1 is labelled B too and finds B at test position 3
    r2 = board_reconstruction(FIT_CODES, FIT_PROPS, TEST_CODES, TEST_PROPS, thresholds=(0.0, 0.5), min_firings=2)
    assert r2.tp.tolist() == [1, 2] and r2.fp.tolist() == [0, 1] and r2.fn.tolist() == [2, 1]


def test_the_per_square_variant_drops_a_true_positive_beside_a_false_one():
    # properties e4_mine, e4_theirs (square e4), d4_mine; the dictionary is the identity on the fit split
    names = ("e4_mine", "e4_theirs", "d4_mine")
    fit_props = np.repeat(np.eye(3, dtype=bool), 10, axis=0)
    fit_codes = fit_props.astype(np.float32)
    # test position 0: e4_mine true, latents e4_mine and e4_theirs on -> TP and FP on e4;
    # position 1: d4_mine true and on -> TP
    test_codes = np.array([[1, 1, 0], [0, 0, 1]], dtype=np.float32)
    test_props = np.array([[1, 0, 0], [0, 0, 1]], dtype=bool)
    r = board_reconstruction(fit_codes, fit_props, test_codes, test_props, thresholds=(0.0,), groups=square_groups(names))
    assert r.tp.tolist() == [2] and r.fp.tolist() == [1] and r.fn.tolist() == [0]
    assert r.f1 == pytest.approx([4 / 5])  # 2TP / (2TP + FP + FN)
    assert r.f1_per_square == pytest.approx([2 / 3])  # TP 2 - 1 = 1: 2 / (2 + 1 + 0)
    assert r.best_per_square == pytest.approx(2 / 3)


def planted(rng, positions=3000, properties=24, rate=0.3):
    return rng.random((positions, properties)) < rate


def test_a_dictionary_of_exactly_the_properties_scores_one_on_both():
    props = planted(np.random.default_rng(0))
    codes = props * np.random.default_rng(1).uniform(0.5, 2.0, props.shape).astype(np.float32)
    result = coverage(codes, props)
    assert result.best == 1.0 and result.best_threshold == 0.0
    assert result.latent[0].tolist() == list(range(props.shape[1]))
    r = board_reconstruction(codes[:1500], props[:1500], codes[1500:], props[1500:])
    assert r.best == 1.0 and r.f1[0] == 1.0 and r.fp[0] == 0 and r.fn[0] == 0
    assert r.labels[0] == props.shape[1]


def test_shuffled_labels_score_near_chance():
    rng = np.random.default_rng(2)
    props = planted(rng)
    codes = props.astype(np.float32)
    shuffled = props[rng.permutation(len(props))]
    result = coverage(codes, shuffled)
    # independent latent (on-rate q) and property (rate p): F1 ~ 2pq / (p + q) ~ 0.3 here
    p, q = shuffled.mean(axis=0), codes.astype(bool).mean(axis=0)
    chance = np.mean([np.max(2 * pg * q / (pg + q)) for pg in p])
    assert abs(result.best - chance) < 0.05 and result.best < 0.4
    r = board_reconstruction(codes[:1500], shuffled[:1500], codes[1500:], shuffled[1500:])
    assert r.labels.sum() == 0 and r.best == 0.0  # no latent is 95% precise for an unrelated property


def sparse_codes(rng, positions, latents, live=0.05):
    values = rng.exponential(1.0, (positions, latents)).astype(np.float32)
    return np.where(rng.random((positions, latents)) < live, values, 0).astype(np.float32)


def test_streaming_in_small_tiles_changes_nothing(tmp_path):
    rng = np.random.default_rng(3)
    codes = sparse_codes(rng, 900, 70)
    props = (codes[:, :20] > 0.3) ^ (rng.random((900, 20)) < 0.05)
    codes[:, 60] = -1.0  # a latent never above zero is never on
    big = coverage(codes, props)
    small = coverage(codes, props, block_bytes=1 << 16)
    assert np.array_equal(big.f1, small.f1) and np.array_equal(big.latent, small.latent)
    assert not (big.latent == 60).any()
    np.save(tmp_path / "codes.npy", codes)
    mapped = np.load(tmp_path / "codes.npy", mmap_mode="r")
    assert np.array_equal(coverage(mapped, props, block_bytes=1 << 16).f1, big.f1)
    groups = np.arange(20) // 2
    kw = {"groups": groups}
    r_big = board_reconstruction(codes[:500], props[:500], codes[500:], props[500:], **kw)
    r_small = board_reconstruction(mapped[:500], props[:500], mapped[500:], props[500:], block_bytes=1 << 16, **kw)
    for field in ("tp", "fp", "fn", "labels", "f1", "f1_per_square"):
        assert np.array_equal(getattr(r_big, field), getattr(r_small, field)), field
    assert r_big.labels.sum() > 0 and r_big.tp.sum() > 0


def test_a_property_table_may_be_given_as_it_is():
    table = PropertyTable(("a1_mine", "in_check"), HAND_PROPS, np.zeros(8, np.int64), np.arange(8, dtype=np.int64))
    assert coverage(HAND_CODES, table, thresholds=(0.0, 0.5)).best == pytest.approx(5 / 6)


def test_torch_codes_in_half_precision_are_read():
    codes = torch.tensor(HAND_CODES, dtype=torch.bfloat16)
    assert coverage(codes, HAND_PROPS, thresholds=(0.0, 0.5)).best == pytest.approx(5 / 6)


def test_bad_inputs_are_refused_by_name():
    nan = HAND_CODES.copy()
    nan[5, 1] = np.nan
    cases = [
        (lambda: coverage(nan, HAND_PROPS), DataError, "codes: position 5, latent 1 is nan"),
        (lambda: coverage(HAND_CODES, HAND_PROPS[:7]), DataError, "7 positions but the codes have 8"),
        (lambda: coverage(HAND_CODES, HAND_PROPS * 0.5), DataError, "must be boolean"),
        (lambda: coverage(HAND_CODES[:, :0], HAND_PROPS), DataError, "non-empty 2-D"),
        (lambda: coverage(HAND_CODES.astype(str), HAND_PROPS), DataError, "real numbers"),
        (lambda: coverage(HAND_CODES, HAND_PROPS, thresholds=(0.5, 0.0)), ConfigError, "strictly increasing"),
        (lambda: coverage(HAND_CODES, HAND_PROPS, thresholds=(0.0, 1.5)), ConfigError, "in \\[0, 1\\]"),
        (lambda: coverage(HAND_CODES, HAND_PROPS, thresholds=()), ConfigError, "non-empty"),
        (lambda: coverage(HAND_CODES, HAND_PROPS, block_bytes=10), ConfigError, "block_bytes"),
        (lambda: _recon(min_precision=0.0), ConfigError, "min_precision"),
        (lambda: _recon(min_precision=True), ConfigError, "min_precision"),
        (lambda: _recon(min_firings=0), ConfigError, "min_firings"),
        (lambda: _recon(groups=[0]), DataError, "groups must be 2"),
        (lambda: board_reconstruction(FIT_CODES, FIT_PROPS, TEST_CODES[:, :1], TEST_PROPS), DataError, "2 vs 1 latents"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def _recon(**kwargs):
    return board_reconstruction(FIT_CODES, FIT_PROPS, TEST_CODES, TEST_PROPS, **kwargs)
