"""The board-game paper's supervised SAE metrics: coverage and board reconstruction.

A latent ``f`` is *on* at position ``x`` at threshold ``t`` when ``a_f(x) > t * max_x a_f(x)``, the maximum
taken over the positions given (for reconstruction: over the fit split, and the same limits serve the
test split). A latent whose maximum is not positive is never on. For a property ``g`` (a boolean column),
``TP = #(on and g)``, ``FP = #(on and not g)``, ``FN = #(not on and g)``; precision, recall and F1 as usual
(0 when undefined).

* **Coverage**: per threshold, the mean over properties of the best F1 over latents; the coverage is the
  best of these over thresholds. Every column given counts (a property that never holds scores 0):
  drop masked classes, such as the paper's blank class, by leaving their columns out.
* **Board reconstruction**: on the fit split, latent ``f`` at threshold ``t`` is labelled with every property
  whose precision is at least ``min_precision`` (0.95) and which it is on for at least ``min_firings`` (10)
  positions. On the test split, the predicted properties of a position are the union of the labels of
  the latents on there; TP, FP and FN are summed over all test positions and properties, and F1 is
  taken per threshold; the result is the best over thresholds. With ``groups`` (the square of each
  property, :func:`saekit.boardgames.properties.square_groups`), the paper's per-square variant is also
  given: a square with both a true and a false positive at a position loses its true positive.

Both stream over tiles of the codes (see :mod:`saekit.boardgames.board_metrics_stream`) and hold at most a
thresholds x latent-block x properties count tensor sized by ``block_bytes``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from saekit.boardgames.board_metrics_stream import (
    DEFAULT_BLOCK_BYTES,
    DEFAULT_THRESHOLDS,
    Tiling,
    as_codes,
    as_properties,
    check_thresholds,
    entries,
    latent_counts,
    max_activations,
    on_limits,
    tiles,
    tiling,
)
from saekit.errors import ConfigError, DataError


@dataclass(frozen=True)
class Coverage:
    """``per_threshold`` [T] (the mean best F1 at each threshold) and its maximum ``best`` at
    ``best_threshold``; ``f1`` [T, properties] the best F1 of each property and ``latent`` [T, properties]
    the latent reaching it (-1 where no latent ever fires with the property)."""

    thresholds: np.ndarray
    per_threshold: np.ndarray
    best: float
    best_threshold: float
    f1: np.ndarray
    latent: np.ndarray


@dataclass(frozen=True)
class Reconstruction:
    """Per threshold [T]: ``tp``, ``fp``, ``fn`` (summed over test positions and properties),
    ``precision``, ``recall``, ``f1``, ``labels`` ((latent, property) labels made on the fit split) and
    ``labelled_latents``; ``best`` / ``best_threshold`` the best F1. ``f1_per_square`` and
    ``best_per_square``: the per-square variant, None without ``groups``."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    best: float
    best_threshold: float
    labels: np.ndarray
    labelled_latents: np.ndarray
    f1_per_square: np.ndarray | None
    best_per_square: float | None


def coverage(
    codes: object,
    properties: object,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Coverage:
    """Coverage of ``properties`` (bool [positions, properties]) by the latents of ``codes``
    ([positions, latents]); see the module docstring."""
    scored = _f1_tiles(codes, properties, thresholds, block_bytes)
    best = np.zeros((len(scored.levels), scored.n_properties))
    latent = np.full((len(scored.levels), scored.n_properties), -1, dtype=np.int64)
    columns = np.arange(scored.n_properties)
    for first, j, f1 in scored.tiles:
        arg = f1.argmax(axis=0)
        value = f1[arg, columns]
        better = value > best[j]
        best[j, better] = value[better]
        latent[j, better] = first + arg[better]
    per_threshold = best.mean(axis=1)
    top = int(per_threshold.argmax())
    return Coverage(scored.levels, per_threshold, float(per_threshold[top]), float(scored.levels[top]), best, latent)


class _Scored(NamedTuple):
    """The F1 of every (latent, property) at every threshold, a tile of latents at a time: ``tiles``
    yields (first latent of the tile, threshold index, F1 [tile's latents, properties])."""

    levels: np.ndarray
    n_latents: int
    n_properties: int
    tiles: Iterator[tuple[int, int, np.ndarray]]


def _f1_tiles(codes: object, properties: object, thresholds: Sequence[float], block_bytes: int) -> _Scored:
    """The inputs checked, and the F1 tables of :class:`_Scored`, counted as the module docstring says."""
    codes = as_codes(codes, "codes")
    props = as_properties(properties, codes.shape[0], "properties")
    levels = check_thresholds(thresholds)
    tile = tiling(codes.shape[1], len(levels), props.shape[1], block_bytes)
    limits = on_limits(levels, max_activations(codes, tile, "codes"))
    positives = props.sum(axis=0)

    def tiles() -> Iterator[tuple[int, int, np.ndarray]]:
        for counts in latent_counts(codes, props, limits, tile, "codes"):
            for j in range(len(levels)):
                yield counts.first, j, 2 * counts.hits[j] / np.maximum(counts.fires[j][:, None] + positives[None, :], 1)

    return _Scored(levels, codes.shape[1], props.shape[1], tiles())


@dataclass(frozen=True)
class LatentBest:
    """Per latent [latents]: the ``property`` (column index, -1 for a latent never on) on which its F1 is
    highest over every threshold and property, that ``f1`` and the ``threshold`` reaching it (the lowest
    on a tie)."""

    property: np.ndarray
    f1: np.ndarray
    threshold: np.ndarray


def latent_best(
    codes: object,
    properties: object,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> LatentBest:
    """Each latent's best property: the (threshold, property) of its highest F1, counted as for
    :func:`coverage` (which gives each property's best latent; this is the other direction)."""
    scored = _f1_tiles(codes, properties, thresholds, block_bytes)
    best = np.full(scored.n_latents, -1, dtype=np.int64)
    f1_best, at = np.zeros(scored.n_latents), np.zeros(scored.n_latents)
    for first, j, f1 in scored.tiles:
        span = slice(first, first + f1.shape[0])
        arg = f1.argmax(axis=1)
        value = f1[np.arange(len(arg)), arg]
        better = value > f1_best[span]
        f1_best[span][better], best[span][better], at[span][better] = value[better], arg[better], scored.levels[j]
    return LatentBest(best, f1_best, at)


def board_reconstruction(
    codes_fit: object,
    properties_fit: object,
    codes_test: object,
    properties_test: object,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_precision: float = 0.95,
    min_firings: int = 10,
    groups: object = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> Reconstruction:
    """Board reconstruction: latents labelled on the fit split, boards predicted on the test split; see
    the module docstring."""
    fit = as_codes(codes_fit, "codes_fit")
    test = as_codes(codes_test, "codes_test")
    props_fit = as_properties(properties_fit, fit.shape[0], "properties_fit")
    props_test = as_properties(properties_test, test.shape[0], "properties_test")
    if test.shape[1] != fit.shape[1] or props_test.shape[1] != props_fit.shape[1]:
        raise DataError(
            f"fit and test splits differ: {fit.shape[1]} vs {test.shape[1]} latents, "
            f"{props_fit.shape[1]} vs {props_test.shape[1]} properties"
        )
    _check_label_rule(min_precision, min_firings)
    levels = check_thresholds(thresholds)
    square = _checked_groups(groups, props_fit.shape[1])
    tile = tiling(fit.shape[1], len(levels), props_fit.shape[1], block_bytes)
    limits = on_limits(levels, max_activations(fit, tile, "codes_fit"))
    labels = _labels(fit, props_fit, limits, tile, min_precision, min_firings)
    counts = _predict(test, props_test, limits, labels, tile, square)
    return _reconstruction(levels, counts, labels, per_square=square is not None)


def _check_label_rule(min_precision: float, min_firings: int) -> None:
    if isinstance(min_precision, bool) or not isinstance(min_precision, (int, float)) or not 0 < min_precision <= 1:
        raise ConfigError(f"min_precision must be in (0, 1], got {min_precision!r}")
    if isinstance(min_firings, bool) or not isinstance(min_firings, int) or min_firings < 1:
        raise ConfigError(f"min_firings must be a positive integer, got {min_firings!r}")


def _checked_groups(groups: object, n_properties: int) -> sp.csr_matrix | None:
    """The one-hot matrix [properties, groups] of ``groups``, or None."""
    if groups is None:
        return None
    array = np.asarray(groups)
    if array.shape != (n_properties,) or not np.issubdtype(array.dtype, np.integer) or (array < 0).any():
        raise DataError(
            f"groups must be {n_properties} non-negative integers (one per property), got {array.dtype} {array.shape}"
        )
    _, dense = np.unique(array, return_inverse=True)
    return sp.csr_matrix((np.ones(n_properties, np.float32), (np.arange(n_properties), dense)))


def _labels(
    codes: np.ndarray, props: np.ndarray, limits: np.ndarray, tile: Tiling, min_precision: float, min_firings: int
) -> list[sp.csr_matrix]:
    """Per threshold, the labels as a 0/1 matrix [latents, properties]."""
    n_t, n_latents, n_props = limits.shape[0], codes.shape[1], props.shape[1]
    found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n_t)]
    for counts in latent_counts(codes, props, limits, tile, "codes_fit"):
        fires = counts.fires[:, :, None]
        precise = counts.hits / np.maximum(fires, 1) >= min_precision
        j, f, g = np.nonzero(precise & (fires >= min_firings))
        for level in range(n_t):
            mine = j == level
            found[level].append((counts.first + f[mine], g[mine]))
    labels = []
    for level in range(n_t):
        f = np.concatenate([pair[0] for pair in found[level]])
        g = np.concatenate([pair[1] for pair in found[level]])
        labels.append(sp.csr_matrix((np.ones(len(f), np.float32), (f, g)), shape=(n_latents, n_props)))
    return labels


def _predict(
    codes: np.ndarray,
    props: np.ndarray,
    limits: np.ndarray,
    labels: list[sp.csr_matrix],
    tile: Tiling,
    square: sp.csr_matrix | None,
) -> np.ndarray:
    """int64 [T, 4]: TP, FP, FN and the per-square loss (positions x squares with both a TP and an FP)."""
    n_t = len(labels)
    totals = np.zeros((n_t, 4), dtype=np.int64)
    for r0 in range(0, codes.shape[0], tile.rows):
        part = codes[r0 : r0 + tile.rows]  # a view: tiles() reads it
        predicted = np.zeros((n_t, part.shape[0], props.shape[1]), dtype=bool)
        for _, c0, block in tiles(part, tile, "codes_test", rows_first=True, offset=r0):
            rows, cols, k = entries(block, limits[:, c0 : c0 + block.shape[1]])
            for j in range(n_t):
                on = k > j
                fired = sp.csr_matrix((np.ones(int(on.sum()), np.float32), (rows[on], cols[on])), shape=block.shape)
                predicted[j] |= (fired @ labels[j][c0 : c0 + block.shape[1]]).toarray() > 0
        totals += _score(predicted, props[r0 : r0 + part.shape[0]], square)
    return totals


def _score(predicted: np.ndarray, truth: np.ndarray, square: sp.csr_matrix | None) -> np.ndarray:
    out = np.zeros((len(predicted), 4), dtype=np.int64)
    for j, guess in enumerate(predicted):
        hit, miss = guess & truth, guess & ~truth
        out[j, :3] = hit.sum(), miss.sum(), (truth & ~guess).sum()
        if square is not None:
            both = ((hit.astype(np.float32) @ square) > 0) & ((miss.astype(np.float32) @ square) > 0)
            out[j, 3] = both.sum()
    return out


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / np.maximum(tp + fn, 1)
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return precision, recall, f1


def _reconstruction(levels: np.ndarray, counts: np.ndarray, labels: list[sp.csr_matrix], *, per_square: bool) -> Reconstruction:
    tp, fp, fn, both = counts.T
    precision, recall, f1 = _f1(tp, fp, fn)
    top = int(f1.argmax())
    n_labels = np.array([m.nnz for m in labels], dtype=np.int64)
    labelled = np.array([int((m.getnnz(axis=1) > 0).sum()) for m in labels], dtype=np.int64)
    square_f1 = _f1(tp - both, fp, fn)[2] if per_square else None
    return Reconstruction(
        thresholds=levels,
        tp=tp,
        fp=fp,
        fn=fn,
        precision=precision,
        recall=recall,
        f1=f1,
        best=float(f1[top]),
        best_threshold=float(levels[top]),
        labels=n_labels,
        labelled_latents=labelled,
        f1_per_square=square_f1,
        best_per_square=None if square_f1 is None else float(square_f1.max()),
    )
