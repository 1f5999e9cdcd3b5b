"""Board-state properties: named yes/no facts about a position, one row per position a model reads.

A ``PropertyTable`` holds ``values`` (bool [rows, properties]) with the property ``names``, and for each
row the ``game`` it comes from and the ``index`` of the token it sits on within that game's context, so
that a row lines up with the activation the model produced there. The games' own modules say which
rows they produce and what each property means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from saekit.errors import ConfigError


@dataclass(frozen=True)
class PropertyTable:
    """``values`` bool [rows, len(names)]; ``game`` and ``index`` int64 [rows]."""

    names: tuple[str, ...]
    values: np.ndarray
    game: np.ndarray
    index: np.ndarray

    def select(self, names: Sequence[str]) -> PropertyTable:
        """The columns ``names``, in that order; an unknown name is a ConfigError naming it."""
        where = {name: i for i, name in enumerate(self.names)}
        unknown = [name for name in names if name not in where]
        if unknown:
            raise ConfigError(f"unknown board-state properties: {', '.join(unknown[:5])} (of {len(unknown)})")
        columns = [where[name] for name in names]
        return PropertyTable(tuple(names), self.values[:, columns], self.game, self.index)

    def rows(self, keep: np.ndarray) -> PropertyTable:
        """The rows where ``keep`` (bool [rows]) holds, or the rows numbered by ``keep`` (int)."""
        return PropertyTable(self.names, self.values[keep], self.game[keep], self.index[keep])


def join(tables: Sequence[PropertyTable]) -> PropertyTable:
    """The tables' columns side by side; they must describe the same rows, and no name may repeat."""
    if not tables:
        raise ConfigError("join needs at least one property table")
    first = tables[0]
    for table in tables[1:]:
        if not (np.array_equal(table.game, first.game) and np.array_equal(table.index, first.index)):
            raise ConfigError("property tables of different positions cannot be joined")
    names = tuple(name for table in tables for name in table.names)
    if len(set(names)) != len(names):
        raise ConfigError("joined property tables repeat a property name")
    return PropertyTable(names, np.concatenate([t.values for t in tables], axis=1), first.game, first.index)


def square_groups(names: Sequence[str]) -> np.ndarray:
    """int64 [len(names)]: one group per board square for the names ``<square>_<class>`` (``e4_mine``,
    ``e4_white_knight``), and a group of its own for every other name. The per-square variant of board
    reconstruction reads these groups."""
    groups: dict[str, int] = {}
    out = np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        head, sep, _ = name.partition("_")
        key = head if sep and len(head) == 2 and head[0] in "abcdefgh" and head[1] in "12345678" else f"\0{name}"
        out[i] = groups.setdefault(key, len(groups))
    return out
