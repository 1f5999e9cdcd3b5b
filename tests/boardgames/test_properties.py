"""Property tables: selecting, joining, and the square groups of the per-square reconstruction."""

import numpy as np
import pytest

from saekit.boardgames.properties import PropertyTable, join, square_groups
from saekit.errors import ConfigError


def table(names, rows=3, game=None):
    values = np.arange(rows * len(names)).reshape(rows, len(names)) % 2 == 0
    game = np.zeros(rows, np.int64) if game is None else game
    return PropertyTable(tuple(names), values, game, np.arange(rows, dtype=np.int64))


def test_select_keeps_the_order_asked_and_refuses_unknown_names():
    t = table(["a1_mine", "a1_theirs", "in_check"])
    picked = t.select(["in_check", "a1_mine"])
    assert picked.names == ("in_check", "a1_mine")
    assert np.array_equal(picked.values, t.values[:, [2, 0]])
    with pytest.raises(ConfigError, match="unknown board-state properties: nope"):
        t.select(["nope"])
    assert np.array_equal(t.rows(np.array([True, False, True])).index, [0, 2])


def test_join_needs_the_same_rows_and_distinct_names():
    a, b = table(["x"]), table(["y"])
    assert join([a, b]).names == ("x", "y")
    with pytest.raises(ConfigError, match="different positions"):
        join([a, table(["y"], game=np.ones(3, np.int64))])
    with pytest.raises(ConfigError, match="repeat a property name"):
        join([a, a])
    with pytest.raises(ConfigError, match="at least one"):
        join([])


def test_square_groups_group_by_square_and_give_other_names_their_own():
    names = ["e4_mine", "d4_mine", "e4_theirs", "in_check", "any_pin", "e4_white_knight"]
    groups = square_groups(names)
    assert groups[0] == groups[2] == groups[5] and len({groups[0], groups[1], groups[3], groups[4]}) == 4
