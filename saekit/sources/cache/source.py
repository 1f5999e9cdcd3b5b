"""Reading an activation cache: :class:`CacheSource`, shuffled batches with exact resume."""

from __future__ import annotations

import bisect
import itertools
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeAlias

import numpy as np
import torch
from torch import Tensor

from saekit.errors import ArtifactError, DataError
from saekit.sources.cache.manifest import DTYPES, read_manifest
from saekit.sources.cache.shards import CacheProblem, checksum_problem, file_problem, map_shard
from saekit.sources.order import seeded_generator
from saekit.sources.tensor import _check_positive, check_stream_start
from saekit.types import ActBatch

DEFAULT_WINDOW_SHARDS = 16

Verify: TypeAlias = Literal["lazy", "full", "none"]


class _EpochPlan(NamedTuple):
    windows: list[list[int]]  # shard numbers of each window, in the epoch's order
    starts: list[int]  # epoch offset of each window's first row, then the epoch length


class CacheSource:
    """An :class:`~saekit.types.ActivationSource` over a cache folder written by :func:`write_cache`.

    ``sites`` selects some of the cached sites (all by default). Batches are float32. See the module
    docstring for the shuffle and for what ``verify`` checks.
    """

    reads_from_disk = True
    """Read by the training loop: batches are worth reading ahead in a thread (saekit.sources.prefetch)."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        sites: Iterable[str] | None = None,
        verify: Verify = "lazy",
        window_shards: int = DEFAULT_WINDOW_SHARDS,
    ) -> None:
        if verify not in ("lazy", "full", "none"):
            raise ValueError(f"verify must be 'lazy', 'full' or 'none', got {verify!r}")
        _check_positive(window_shards, "window_shards")
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.window_shards = window_shards
        self._sites: tuple[str, ...] = self.manifest.sites if sites is None else tuple(sites)
        for site in self._sites:
            self._check_site(site)
        if not self._sites:
            raise DataError(f"{self.folder}: no sites selected")
        if not self.manifest.complete:
            warnings.warn(
                f"{self.folder}: the cache is incomplete (its writer has not finished); reading the "
                f"{self.manifest.total_tokens} tokens of its {len(self.manifest.shards)} completed shards",
                stacklevel=2,
            )
        if self.manifest.total_tokens == 0:
            raise DataError(f"{self.folder}: the cache holds no tokens yet")
        shards = self.manifest.shards
        self._refuse([p for shard in shards if (p := file_problem(self.folder / shard.file, shard))])
        if verify == "full":
            self._refuse([p for shard in shards if (p := checksum_problem(self.folder / shard.file, shard))])
        self._verified: set[int] = set(range(len(shards))) if verify != "lazy" else set()
        self._starts = torch.tensor([0, *itertools.accumulate(s.rows for s in shards)], dtype=torch.int64)
        # Enough open shards for the current and the next window; each is one memory map.
        self._open: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._max_open = 2 * window_shards
        self._plans: dict[tuple[int, int], _EpochPlan] = {}
        self._windows: dict[tuple[int, int, int], Tensor] = {}

    # ------------------------------------------------------------------ ActivationSource protocol

    @property
    def sites(self) -> tuple[str, ...]:
        return self._sites

    def d_in(self, site: str) -> int:
        self._check_site(site)
        return self.manifest.d_in[site]

    @property
    def n_rows(self) -> int:
        """Number of tokens (rows) per site in the completed shards."""
        return self.manifest.total_tokens

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    def batches(self, batch_size: int, *, seed: int, start: int = 0) -> Iterator[Mapping[str, ActBatch]]:
        """Endless shuffled batches (module docstring); ``start`` skips batches exactly."""
        check_stream_start(batch_size, start)
        return self._batches(batch_size, seed, start)

    def describe(self) -> dict:
        return {
            "kind": "cache",
            "path": str(self.folder),
            "rows": self.n_rows,
            "complete": self.manifest.complete,
            "dtype": self.manifest.dtype,
            "shard_tokens": self.manifest.shard_tokens,
            "window_shards": self.window_shards,
            "sites": {site: {"d_in": self.manifest.d_in[site], "dtype": self.manifest.dtype} for site in self._sites},
            "info": self.manifest.info,
        }

    # ------------------------------------------------------------------ in-order reading

    def iter_rows(self, batch_size: int, *, site: str | None = None, max_rows: int | None = None) -> Iterator[Tensor]:
        """Rows of one site once, in stored order, in float32 chunks of ``batch_size`` (the last may be
        shorter), stopping after ``max_rows`` rows when given. ``site`` may be omitted for one site."""
        _check_positive(batch_size, "batch_size")
        if site is None:
            if len(self._sites) > 1:
                raise DataError(f"{self.folder}: several sites {list(self._sites)}; say which one to read")
            site = next(iter(self._sites))
        self._check_site(site)
        end = self.n_rows if max_rows is None else min(self.n_rows, max_rows)
        return (
            self._take(torch.arange(start, min(start + batch_size, end)), (site,))[site]
            for start in range(0, end, batch_size)
        )

    # ------------------------------------------------------------------ internals

    def _batches(self, batch_size: int, seed: int, start: int) -> Iterator[Mapping[str, ActBatch]]:
        for i in itertools.count(start):
            rows = self._take(self._batch_rows(i, batch_size, seed), self._sites)
            yield {site: ActBatch(x) for site, x in rows.items()}

    def _batch_rows(self, i: int, batch_size: int, seed: int) -> Tensor:
        """Global row numbers of batch ``i``: stream positions ``[i·B, (i+1)·B)``."""
        pos, end = i * batch_size, (i + 1) * batch_size
        pieces = []
        while pos < end:
            epoch, offset = divmod(pos, self.n_rows)
            plan = self._plan(seed, epoch)
            w = bisect.bisect_right(plan.starts, offset) - 1
            take = min(end - pos, plan.starts[w + 1] - offset)
            lo = offset - plan.starts[w]
            pieces.append(self._window(seed, epoch, w, plan)[lo : lo + take])
            pos += take
        return torch.cat(pieces)

    def _plan(self, seed: int, epoch: int) -> _EpochPlan:
        key = (seed, epoch)
        if key not in self._plans:
            # The tags (1: the shard order, 2: a window's row order) keep the two kinds of stream apart
            # (seeded_generator hashes the whole key, so every key is its own stream).
            order = torch.randperm(len(self.manifest.shards), generator=seeded_generator(seed, epoch, 1)).tolist()
            windows = [order[k : k + self.window_shards] for k in range(0, len(order), self.window_shards)]
            sizes = [sum(self.manifest.shards[s].rows for s in window) for window in windows]
            _put(self._plans, key, _EpochPlan(windows, [0, *itertools.accumulate(sizes)]))
        return self._plans[key]

    def _window(self, seed: int, epoch: int, w: int, plan: _EpochPlan) -> Tensor:
        key = (seed, epoch, w)
        if key not in self._windows:
            rows = torch.cat([torch.arange(int(self._starts[s]), int(self._starts[s + 1])) for s in plan.windows[w]])
            _put(self._windows, key, rows[torch.randperm(len(rows), generator=seeded_generator(seed, epoch, 2, w + 1))])
        return self._windows[key]

    def _take(self, rows: Tensor, sites: tuple[str, ...]) -> dict[str, Tensor]:
        """float32 ``[len(rows), d]`` per site; each shard's rows are read in file order."""
        order = torch.argsort(rows)
        ordered = rows[order]
        shard_of = torch.searchsorted(self._starts, ordered, right=True) - 1
        shards, counts = torch.unique_consecutive(shard_of, return_counts=True)
        dest = order.numpy()
        np_dtype = DTYPES[self.manifest.dtype][2]
        # Gathered in the storage dtype and converted once: half the bytes moved for 16-bit caches.
        stored = {site: np.empty((len(rows), self.manifest.d_in[site]), dtype=np_dtype) for site in sites}
        lo = 0
        for shard, count in zip(shards.tolist(), counts.tolist()):
            local = (ordered[lo : lo + count] - self._starts[shard]).numpy()
            arrays = self._shard(shard)
            for site in sites:
                stored[site][dest[lo : lo + count]] = arrays[site][local]
            lo += count
        served = {site: _as_float32(block) for site, block in stored.items()}
        for site, x in served.items():
            self._check_finite(x, rows, site)
        return served

    def _check_finite(self, x: Tensor, rows: Tensor, site: str) -> None:
        """DataError naming the shard file and row when a served row holds NaN or inf.

        The writer refuses such values, so they reach a shard only through another writer or an older
        saekit, and the shard's checksum then vouches for them. They are caught here, on the rows each
        batch serves, rather than by a scan of every shard at open: this covers every way of reading
        (batches, iter_rows) with every ``verify``, reads nothing that is not served anyway, and costs
        one vectorised pass over the float32 batch, small next to gathering its rows from the maps. A
        scan at open would read whole shards even with ``verify="none"``, which exists to avoid that.
        """
        finite = np.isfinite(x.numpy())
        if finite.all():
            return
        row = int(rows[int(np.argmin(finite.all(axis=1)))])  # the first bad row of the batch
        shard = int(torch.searchsorted(self._starts, torch.tensor(row), right=True)) - 1
        raise DataError(
            f"{self.folder / self.manifest.shards[shard].file}: row {row - int(self._starts[shard])} of site {site!r} "
            "holds NaN or inf, which training cannot use; saekit's writer refuses such values, so the shard comes "
            "from another writer or is damaged (verify_cache checks its checksum)"
        )

    def _shard(self, index: int) -> dict[str, np.ndarray]:
        if index in self._open:
            self._open.move_to_end(index)
            return self._open[index]
        shard = self.manifest.shards[index]
        path = self.folder / shard.file
        if index not in self._verified:
            if (problem := checksum_problem(path, shard)) is not None:
                self._refuse([problem])
            self._verified.add(index)
        # map_shard checks the file's size against the manifest before mapping it, on every (re)mapping.
        self._open[index] = map_shard(path, shard, self.manifest, self._sites)
        if len(self._open) > self._max_open:
            self._open.popitem(last=False)
        return self._open[index]

    def _refuse(self, problems: list[CacheProblem], shown: int = 3) -> None:
        """ArtifactError naming the first ``shown`` problems' shard files, if there are any."""
        if not problems:
            return
        more = f"; and {len(problems) - shown} more (saekit.sources.cache.verify_cache lists them)" if len(problems) > shown else ""
        raise ArtifactError("; ".join(f"{self.folder / p.file}: {p.problem}" for p in problems[:shown]) + more)

    def _check_site(self, site: str) -> None:
        if site not in self.manifest.d_in:
            raise DataError(f"{self.folder}: no site {site!r}; the cache holds {list(self.manifest.sites)}")

    def __repr__(self) -> str:
        return f"CacheSource({str(self.folder)!r}, rows={self.n_rows}, sites={list(self._sites)})"


def _as_float32(block: np.ndarray) -> Tensor:
    x = torch.from_numpy(block)
    return (x.view(torch.bfloat16) if x.dtype == torch.int16 else x).float()


def _put(cache: dict, key: Any, value: Any, size: int = 2) -> None:
    """Insert into a tiny FIFO cache: consecutive batches touch at most the current and the next entry."""
    if len(cache) >= size:
        cache.pop(next(iter(cache)))
    cache[key] = value
