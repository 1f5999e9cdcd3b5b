"""The scores of detection and fuzzing, and the items they are over."""

import random

import pytest

from saekit.browser.explanations import Scores
from saekit.interpret.contexts import Example, LatentContexts
from saekit.interpret.scoring import Item, classification_scores, detection_items, fuzzing_items, score


def test_classification_scores_by_hand():
    # tp=2, fn=1, tn=3, fp=1
    s = classification_scores([1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 1], failed=2)
    assert (s.n, s.failed, s.accuracy, s.precision, s.recall) == (7, 2, 5 / 7, 2 / 3, 2 / 3)
    assert s.balanced_accuracy == pytest.approx((2 / 3 + 3 / 4) / 2) and s.f1 == pytest.approx(2 / 3)


def test_undefined_ratios_are_none():
    assert classification_scores([], []) == Scores(0, 0, None, None, None, None, None)
    only_positive = classification_scores([1, 1], [0, 0])
    assert only_positive.balanced_accuracy is None and only_positive.precision is None and only_positive.recall == 0.0


def test_a_batch_out_of_format_counts_its_items_as_failed():
    items = [Item(f"t{i}", i % 2) for i in range(7)]
    answers = iter(["[1, 1, 1]", "nonsense", "[0]"])
    s = score(items, lambda texts: next(answers), batch=3, rng=random.Random(0))
    assert s.n == 4 and s.failed == 3
    assert score([], lambda texts: "", 3, random.Random(0)) is None


def test_fuzzing_marks_active_contexts_where_they_fire_and_inactive_ones_at_random():
    active = [Example(("a", "b", "c"), (0.0, 1.0, 2.0))]
    inactive = [Example(("x", "y", "z", "w"), (0.0,) * 4)]
    items = fuzzing_items(LatentContexts([], active, inactive), random.Random(0))
    assert items[0] == Item("a<<bc>>", 1) and items[1].label == 0
    assert items[1].text.count("<<") >= 1 and items[1].text.replace("<<", "").replace(">>", "") == "xyzw"
    assert sum(c in "xyzw" for c in items[1].text.split("<<")[1].split(">>")[0]) <= 2  # as many marks as a true one
    assert detection_items(LatentContexts([], active, inactive)) == [Item("abc", 1), Item("xyzw", 0)]
