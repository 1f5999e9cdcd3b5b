import pytest

from saekit.training.schedules import lr_factor, sparsity_factor


def test_lr_warmup_constant_and_decay_by_hand():
    # 100 steps, warm-up 10, decay over the last 20: steps 80..99 decay to 1/20 at the last step.
    assert lr_factor(0, 100, 10, 0.2) == pytest.approx(0.1)
    assert lr_factor(4, 100, 10, 0.2) == pytest.approx(0.5)
    assert lr_factor(9, 100, 10, 0.2) == pytest.approx(1.0)
    assert lr_factor(50, 100, 10, 0.2) == 1.0
    assert lr_factor(79, 100, 10, 0.2) == 1.0
    assert lr_factor(80, 100, 10, 0.2) == pytest.approx(20 / 20)
    assert lr_factor(90, 100, 10, 0.2) == pytest.approx(10 / 20)
    assert lr_factor(99, 100, 10, 0.2) == pytest.approx(1 / 20)


def test_lr_without_warmup_or_decay_is_constant():
    assert {lr_factor(s, 50, 0, 0.0) for s in range(50)} == {1.0}


def test_warmup_and_decay_overlap_take_the_smaller():
    # 10 steps, warm-up 10, decay over all 10: step 5 -> min(6/10, 5/10).
    assert lr_factor(5, 10, 10, 1.0) == pytest.approx(0.5)


def test_sparsity_warmup():
    assert sparsity_factor(0, 4) == pytest.approx(0.25)
    assert sparsity_factor(3, 4) == 1.0
    assert sparsity_factor(100, 4) == 1.0
    assert sparsity_factor(0, 0) == 1.0
