"""Activations already in memory or on disk, served as shuffled, exactly resumable batches.

Input forms (all become ``[tokens, d]`` rows; 3-D ``[batch, pos, d]`` arrays are flattened):

* a ``torch.Tensor`` or ``numpy.ndarray``: one site, named ``site`` or ``"default"``;
* a mapping ``{site: tensor or array}``: one site per key (``site`` then selects a single key);
* a ``.npy`` path: its header checked first (:mod:`saekit.tensorfile`: no pickle, exactly the data it
  declares), then opened with ``mmap_mode="r"``, so files larger than memory work; a big-endian file is
  converted batch by batch;
* a ``.safetensors`` path: one tensor is one site named ``site`` or ``"default"``; several tensors are
  one site per key (``site`` then selects a single key).

Every site must have the same number of rows: row ``r`` of every site is the same token, and a batch
takes the same rows from every site.

Batching rule. The data are read as an endless stream of epochs
(:class:`saekit.sources.order.EpochOrder` over the rows, untagged); epoch ``e`` is the permutation of
all ``N`` rows drawn from a generator seeded by ``(seed, e)``. Batch ``i`` is positions
``[i·B, (i+1)·B)`` of that stream, so it starts in epoch ``(i·B) // N``. When ``B`` divides ``N`` every
epoch is exactly ``N / B`` batches; otherwise the batch that crosses an epoch boundary takes the end of one
permutation and the start of the next (no row is dropped, every epoch visits every row once). A data set
with fewer rows than ``B`` is allowed: each batch then spans several epochs. Because batch ``i`` depends
only on ``(seed, i)``, ``batches(..., start=n)`` yields exactly what a ``start=0`` iteration yields
after ``n`` batches.

Finiteness. In-memory data are checked once at construction; a memory-mapped ``.npy`` is checked batch
by batch as it is read (checking up front would read the whole file).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

import numpy as np
import torch
from torch import Tensor

from saekit.bounded import file_problem
from saekit.devices import COMPUTE_DTYPES
from saekit.errors import DataError
from saekit.sources.order import EpochOrder
from saekit.tensorfile import load_safetensors, map_npy, native_order, npy_header
from saekit.types import ActBatch, ActivationSource

Array: TypeAlias = Tensor | np.ndarray
SourceInput: TypeAlias = Tensor | np.ndarray | str | os.PathLike | Mapping[str, Array]

DEFAULT_SITE = "default"
SUPPORTED_SUFFIXES = (".npy", ".safetensors")
_NUMPY_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_CHECK_ROWS = 1 << 16  # rows per chunk of the finiteness scan, so the scan never doubles memory use


class TensorSource:
    """An :class:`~saekit.types.ActivationSource` over tensors, arrays, ``.npy`` or ``.safetensors``.

    Returned activations are always float32; storage may be float16, bfloat16, float32 or float64.
    """

    def __init__(self, data: SourceInput, *, site: str | None = None) -> None:
        self.path: Path | None = Path(data) if isinstance(data, (str, os.PathLike)) else None
        arrays = _load_path(self.path, site) if self.path is not None else _from_memory(data, site)
        self._rows: dict[str, Array] = {name: _as_rows(arr, self._where(name)) for name, arr in arrays.items()}
        counts = {name: rows.shape[0] for name, rows in self._rows.items()}
        if len(set(counts.values())) > 1:
            raise DataError(
                f"{self._where()}: every site must have the same number of rows (one per token), got "
                + ", ".join(f"{name}: {n}" for name, n in counts.items())
            )
        for name, rows in self._rows.items():
            if isinstance(rows, Tensor):
                _check_finite(rows, self._where(name))
        self._order = EpochOrder(self.n_rows)

    # ------------------------------------------------------------------ ActivationSource protocol

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self._rows)

    def d_in(self, site: str) -> int:
        return int(self._storage(site).shape[1])

    @property
    def n_rows(self) -> int:
        """Number of tokens (rows) per site."""
        return int(next(iter(self._rows.values())).shape[0])

    def batches(self, batch_size: int, *, seed: int, start: int = 0) -> Iterator[Mapping[str, ActBatch]]:
        """Endless shuffled batches following the module's batching rule; ``start`` skips batches exactly."""
        check_stream_start(batch_size, start)
        return self._batches(batch_size, seed, start)

    def describe(self) -> dict:
        return {
            "kind": "tensor",
            "path": str(self.path) if self.path is not None else None,
            "rows": self.n_rows,
            "sites": {
                name: {"d_in": int(rows.shape[1]), "dtype": str(rows.dtype).removeprefix("torch.")}
                for name, rows in self._rows.items()
            },
        }

    # ------------------------------------------------------------------ in-order reading

    def iter_rows(self, batch_size: int, *, site: str | None = None, max_rows: int | None = None) -> Iterator[Tensor]:
        """Rows of one site once, in stored order, in float32 chunks of ``batch_size`` (the last may be
        shorter), stopping after ``max_rows`` rows when given. ``site`` may be omitted for one site."""
        _check_positive(batch_size, "batch_size")
        if site is None:
            if len(self._rows) > 1:
                raise DataError(f"{self._where()}: several sites {list(self._rows)}; say which one to read")
            site = self.sites[0]
        self._storage(site)  # an unknown site is a DataError now, not at the first next()
        end = self.n_rows if max_rows is None else min(self.n_rows, max_rows)
        return (
            self._take(site, torch.arange(start, min(start + batch_size, end)))
            for start in range(0, end, batch_size)
        )

    # ------------------------------------------------------------------ internals

    def _batches(self, batch_size: int, seed: int, start: int) -> Iterator[Mapping[str, ActBatch]]:
        for i in itertools.count(start):
            indices = self._order.take(seed, i * batch_size, batch_size)
            yield {name: ActBatch(self._take(name, indices)) for name in self._rows}

    def _take(self, site: str, indices: Tensor) -> Tensor:
        rows = self._rows[site]
        if isinstance(rows, Tensor):
            return rows[indices.to(rows.device)].float()
        # Memory-mapped: read in file order (far fewer page faults on disk), then restore batch order.
        idx = indices.numpy()
        order = np.argsort(idx, kind="stable")
        block = np.empty((len(idx), rows.shape[1]), dtype=native_order(rows.dtype))  # a big-endian file converts here
        block[order] = rows[idx[order]]
        x = torch.from_numpy(block).float()
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            first = int(idx[int(bad.any(dim=1).nonzero()[0])])
            raise DataError(
                f"{self._where(site)}: {int(bad.sum())} NaN or inf value(s) in a batch, first in row {first}; "
                "activations must be finite"
            )
        return x

    def _storage(self, site: str) -> Array:
        try:
            return self._rows[site]
        except KeyError:
            raise DataError(f"{self._where()}: no site {site!r}; sites are {list(self._rows)}") from None

    def _where(self, site: str | None = None) -> str:
        base = str(self.path) if self.path is not None else "activations"
        return f"{base} [site {site!r}]" if site not in (None, DEFAULT_SITE) else base

    def __repr__(self) -> str:
        return f"TensorSource(rows={self.n_rows}, sites={ {s: self.d_in(s) for s in self.sites} })"


def as_source(activations: SourceInput | ActivationSource, *, site: str | None = None) -> ActivationSource:
    """``activations`` as an ActivationSource: sources pass through; tensors, arrays, mappings of them
    and paths (``str`` or ``os.PathLike``) to ``.npy`` / ``.safetensors`` are wrapped in TensorSource."""
    if isinstance(activations, (Tensor, np.ndarray, str, os.PathLike, Mapping)):
        return TensorSource(activations, site=site)
    if isinstance(activations, ActivationSource):
        if site is not None and site not in activations.sites:
            raise DataError(f"source has no site {site!r}; its sites are {list(activations.sites)}")
        return activations
    raise TypeError(
        f"cannot read activations from a {type(activations).__name__}; pass a torch.Tensor, a numpy array, "
        "a path to a .npy or .safetensors file, or an ActivationSource"
    )


# ---------------------------------------------------------------------------------------------------
# Loading and validation


def _from_memory(data: object, site: str | None) -> dict[str, Array]:
    if isinstance(data, (Tensor, np.ndarray)):
        return {site or DEFAULT_SITE: data}
    if isinstance(data, Mapping):
        if not data:
            raise DataError("activations: empty mapping, expected {site: tensor}")
        return _select(dict(data), site, "activations")
    raise DataError(f"activations: cannot read a {type(data).__name__}; pass a tensor, an array, a mapping of them, or a file path")


def _load_path(path: Path, site: str | None) -> dict[str, Array]:
    if problem := file_problem(path):
        raise DataError(f"activation file {path} {problem}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return {site or DEFAULT_SITE: _load_npy(path)}
    if suffix == ".safetensors":
        tensors = load_safetensors(path, DataError)
        if not tensors:
            raise DataError(f"{path} holds no tensors")
        if len(tensors) == 1:
            return {site or DEFAULT_SITE: next(iter(tensors.values()))}
        return _select(tensors, site, str(path))
    raise DataError(
        f"{path}: unsupported file type {suffix or '(no extension)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
    )


def _load_npy(path: Path) -> np.ndarray:
    """The file memory-mapped, once its header (tensorfile.npy_header: no pickle, data size as declared)
    has the shape and dtype of activations."""
    header = npy_header(path, DataError)
    _check_shape(header.shape, str(path))
    _check_dtype(header.dtype, str(path))
    return map_npy(path, DataError)


def _select(arrays: Mapping[str, Array], site: str | None, where: str) -> dict[str, Array]:
    if site is None:
        return dict(arrays)
    if site not in arrays:
        raise DataError(f"{where}: no tensor named {site!r}; keys are {list(arrays)}")
    return {site: arrays[site]}


def _check_shape(shape: tuple[int, ...], where: str) -> None:
    if len(shape) not in (2, 3):
        raise DataError(
            f"{where}: activations must be 2-D [tokens, d] or 3-D [batch, pos, d], got shape {tuple(shape)}"
        )
    if shape[-1] == 0:
        raise DataError(f"{where}: activations have width 0 (shape {tuple(shape)})")
    if int(np.prod(shape[:-1])) == 0:
        raise DataError(f"{where}: no rows (shape {tuple(shape)})")


def _check_dtype(dtype: np.dtype | torch.dtype, where: str) -> None:
    if (dtype not in COMPUTE_DTYPES) if isinstance(dtype, torch.dtype) else (native_order(dtype) not in _NUMPY_FLOATS):
        raise DataError(f"{where}: activations must be floating point, got dtype {dtype} (saekit reads float16, bfloat16, float32, float64)")


def _as_rows(arr: Array, where: str) -> Array:
    """Validated [tokens, d] view: a torch tensor for in-memory data, the memmap itself for .npy files."""
    if not isinstance(arr, (Tensor, np.ndarray)):
        raise DataError(f"{where}: expected a tensor or array, got {type(arr).__name__}")
    _check_shape(tuple(arr.shape), where)
    _check_dtype(arr.dtype, where)
    if isinstance(arr, np.memmap):
        return arr.reshape(-1, arr.shape[-1])
    if isinstance(arr, np.ndarray):
        # torch takes neither a read-only numpy buffer nor a non-native byte order: copy those (they are
        # in memory already; the byte order is converted exactly).
        native = arr.astype(native_order(arr.dtype), copy=False)
        arr = torch.from_numpy(native if native.flags.writeable else native.copy())
    return arr.detach().reshape(-1, arr.shape[-1])


def _check_finite(rows: Tensor, where: str) -> None:
    n_nan = n_inf = 0
    first_bad: int | None = None
    for start in range(0, rows.shape[0], _CHECK_ROWS):
        chunk = rows[start : start + _CHECK_ROWS]
        nan, inf = torch.isnan(chunk), torch.isinf(chunk)
        n_nan, n_inf = n_nan + int(nan.sum()), n_inf + int(inf.sum())
        if first_bad is None and (n_nan or n_inf):
            first_bad = start + int((nan | inf).any(dim=1).nonzero()[0])
    if first_bad is not None:
        raise DataError(
            f"{where}: {n_nan} NaN and {n_inf} inf value(s), first in row {first_bad}; activations must be finite"
        )


def site_to_read(claimed: str | None, sites: Sequence[str]) -> str | None:
    """The site of ``sites`` an SAE that claims site ``claimed`` (None: no claim) reads, or None when
    the data does not provide it. A one-site source feeds an SAE without a claim, and any SAE when
    that site is an anonymous tensor's (``DEFAULT_SITE``: the data cannot contradict the claim)."""
    if claimed is not None and claimed in sites:
        return claimed
    if len(sites) == 1 and (claimed is None or sites[0] == DEFAULT_SITE):
        return sites[0]
    return None


def check_stream_start(batch_size: int, start: int) -> None:
    """The arguments of a source's ``batches``: a positive batch size and a batch index from 0."""
    _check_positive(batch_size, "batch_size")
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be >= 0, got {start}")


def _check_positive(value: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
