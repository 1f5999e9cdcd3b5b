"""The streaming machinery under the board-game metrics: input checks, tiles of codes, and per-tile counts.

Codes are read only as tiles (a block of positions by a block of latents; a numpy memmap is read tile by
tile), and a latent is "on" at a position at threshold ``t_j`` when its activation exceeds ``t_j`` times
its maximum. Since the thresholds increase, a position's on-thresholds are the first ``k`` of them, and
``k`` (0..T) is all a tile keeps: the entries with ``k >= 1``, as (row, latent, k). Counts per threshold
are then cumulative sums over ``k``, so no thresholds x latents x positions tensor is ever formed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from saekit.boardgames.properties import PropertyTable
from saekit.errors import ConfigError, DataError

DEFAULT_THRESHOLDS = tuple(i / 10 for i in range(11))
DEFAULT_BLOCK_BYTES = 64 << 20


def as_codes(codes: object, what: str) -> np.ndarray:
    """A 2-D real array [positions, latents] (a torch tensor is copied to the CPU; a numpy array, memmaps
    included, is used as it is). Values are checked tile by tile as they are read (:func:`tiles`)."""
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().to("cpu", torch.float32 if codes.dtype in (torch.bfloat16, torch.float16) else None)
        codes = codes.numpy()
    array = codes if isinstance(codes, np.ndarray) else np.asarray(codes)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{what} must be a non-empty 2-D array [positions, latents], got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{what} must hold real numbers, got dtype {array.dtype}")
    return array


def as_properties(properties: object, rows: int, what: str) -> np.ndarray:
    """bool [rows, properties] (a ``PropertyTable`` gives its values); 0/1 integers are accepted, anything
    else is a DataError."""
    array = np.asarray(properties.values if isinstance(properties, PropertyTable) else properties)
    if array.ndim != 2 or array.shape[1] == 0:
        raise DataError(f"{what} must be a 2-D array [positions, properties], got shape {array.shape}")
    if array.shape[0] != rows:
        raise DataError(f"{what} has {array.shape[0]} positions but the codes have {rows}")
    if array.dtype != np.bool_:
        if not np.issubdtype(array.dtype, np.integer) or not np.isin(array, (0, 1)).all():
            raise DataError(f"{what} must be boolean (or 0/1 integers), got dtype {array.dtype}")
        array = array.astype(bool)
    return array


def check_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    """float64 [T]: finite fractions in [0, 1], strictly increasing (the counting needs nested on-sets)."""
    try:
        values = np.asarray(thresholds, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"thresholds must be numbers, got {thresholds!r}") from exc
    if values.ndim != 1 or len(values) == 0:
        raise ConfigError(f"thresholds must be a non-empty list of fractions, got {thresholds!r}")
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any() or (np.diff(values) <= 0).any():
        raise ConfigError(f"thresholds must be strictly increasing fractions in [0, 1], got {values.tolist()}")
    return values


@dataclass(frozen=True)
class Tiling:
    """Tile shape: ``rows`` positions by ``cols`` latents."""

    rows: int
    cols: int


def tiling(n_latents: int, n_thresholds: int, n_properties: int, block_bytes: int) -> Tiling:
    """A latent block whose count tensor (int64 [T, cols, properties]) fits ``block_bytes``, and a position
    block whose worst case of entries (every activation on, about 32 bytes each) and whose predicted
    boards (bool [T, rows, properties]) fit it too."""
    if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes < 1 << 16:
        raise ConfigError(f"block_bytes must be an integer of at least 65536, got {block_bytes!r}")
    cols = int(np.clip(block_bytes // (8 * n_thresholds * n_properties), 1, n_latents))
    rows = min(block_bytes // 32 // cols, block_bytes // (n_thresholds * n_properties), 1 << 24)
    return Tiling(rows=max(1, rows), cols=cols)


def tiles(
    codes: np.ndarray, tile: Tiling, what: str, *, rows_first: bool, offset: int = 0
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, first latent, float block) over the whole array, latents inside positions when
    ``rows_first`` and the other way round otherwise. A NaN or infinite value is a DataError naming its
    position (counted from ``offset``) and latent."""
    n, f = codes.shape
    dtype = np.float64 if codes.dtype == np.float64 else np.float32
    outer, inner = (range(0, n, tile.rows), range(0, f, tile.cols))
    pairs = ((r, c) for r in outer for c in inner) if rows_first else ((r, c) for c in inner for r in outer)
    for r0, c0 in pairs:
        block = np.asarray(codes[r0 : r0 + tile.rows, c0 : c0 + tile.cols], dtype=dtype)
        bad = ~np.isfinite(block)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise DataError(f"{what}: position {offset + r0 + r}, latent {c0 + c} is {block[r, c]}")
        yield r0, c0, block


def max_activations(codes: np.ndarray, tile: Tiling, what: str) -> np.ndarray:
    """float64 [latents]: each latent's largest activation over all positions."""
    out = np.full(codes.shape[1], -np.inf)
    for _, c0, block in tiles(codes, tile, what, rows_first=True):
        np.maximum(out[c0 : c0 + block.shape[1]], block.max(axis=0), out=out[c0 : c0 + block.shape[1]])
    return out


def on_limits(thresholds: np.ndarray, maxima: np.ndarray) -> np.ndarray:
    """float64 [T, latents]: the activation a latent must exceed to be on at each threshold. A latent
    whose largest activation is not positive is never on (its limits are infinite)."""
    limits = thresholds[:, None] * maxima[None, :]
    limits[:, maxima <= 0] = np.inf
    return limits


def entries(block: np.ndarray, limits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, latent, k) of the block's activations that are on at the lowest threshold, ``k`` the number of
    thresholds they are on at (``limits``: [T, the block's latents])."""
    rows, cols = np.nonzero(block > limits[0])
    values = block[rows, cols]
    k = np.zeros(len(rows), dtype=np.int64)
    for limit in limits:
        k += values > limit[cols]
    return rows, cols, k


@dataclass(frozen=True)
class LatentCounts:
    """Counts of latents ``first .. first + fires.shape[1] - 1`` over all positions: ``fires`` int64
    [T, latents] (how often each is on) and ``hits`` int64 [T, latents, properties] (how often it is on
    while the property holds: the true positives)."""

    first: int
    fires: np.ndarray
    hits: np.ndarray


def latent_counts(
    codes: np.ndarray, properties: np.ndarray, limits: np.ndarray, tile: Tiling, what: str
) -> Iterator[LatentCounts]:
    """:class:`LatentCounts` for one latent block after another."""
    n_t, n_props = limits.shape[0], properties.shape[1]
    current: LatentCounts | None = None
    for r0, c0, block in tiles(codes, tile, what, rows_first=False):
        width = block.shape[1]
        if current is None or current.first != c0:
            if current is not None:
                yield _cumulative(current)
            current = LatentCounts(c0, np.zeros((n_t, width), np.int64), np.zeros((n_t, width, n_props), np.int64))
        rows, cols, k = entries(block, limits[:, c0 : c0 + width])
        slot = (k - 1) * width + cols
        current.fires.reshape(-1)[:] += np.bincount(slot, minlength=n_t * width)
        on = sp.csr_matrix((np.ones(len(rows), np.float32), (slot, rows)), shape=(n_t * width, block.shape[0]))
        truth = properties[r0 : r0 + block.shape[0]].astype(np.float32)
        hits = current.hits.reshape(n_t * width, n_props)
        np.add(hits, on @ truth, out=hits, casting="unsafe")  # whole counts below 2**24: exact in float32
    if current is not None:
        yield _cumulative(current)


def _cumulative(counts: LatentCounts) -> LatentCounts:
    """Counts by exact ``k`` -> counts at each threshold (on at ``t_j`` means ``k > j``), in place."""
    for j in range(len(counts.fires) - 2, -1, -1):
        counts.fires[j] += counts.fires[j + 1]
        counts.hits[j] += counts.hits[j + 1]
    return counts
