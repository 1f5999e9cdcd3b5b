"""Arrays in files saekit did not write (.npy, .npz, .safetensors), opened at a cost bounded by what
the file really holds: every header is read and checked before any data is read, mapped or
decompressed.

* ``.npy``: the header (at most numpy's 10,000 bytes) must declare a shape whose data is exactly what
  follows it in the file, so a header claiming 2^40 floats in a small file is refused by its size.
* ``.npz``: each member must be a ``.npy`` whose header agrees with the size the zip declares for it;
  the caller checks the shapes (``check``) before anything is decompressed; a member whose declared
  size is far beyond its compressed size (a zip bomb: float weights barely compress) is refused;
  decompression never produces more than the declared size.
* ``.safetensors``: the header length is bounded, its JSON read with :mod:`saekit.bounded`, and every
  tensor's offsets must tile the data exactly as its dtype and shape say.

Byte order: ``.npz`` arrays are returned in native order (a big-endian array is converted exactly);
a memory-mapped ``.npy`` keeps its stored order, and :func:`native_order` gives the dtype to copy it
into. Refusals raise the caller's error class and name the file (and the member or tensor).
"""

from __future__ import annotations

import math
import os
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file

from saekit.bounded import decode_utf8, file_problem, parse_json
from saekit.errors import SaekitError

MAX_SAFETENSORS_HEADER = 16 << 20
"""Bytes of a safetensors header read at most (an SAE's header is a few hundred bytes)."""
MAX_NPZ_RATIO = 100
"""Largest ratio of a member's declared size to its compressed size: float weights barely compress,
while zeros deflate by up to deflate's limit of about 1000x..."""
NPZ_RATIO_FLOOR = 1 << 20
"""...applied to members declaring more than this many bytes (a small all-zero bias is fine)."""

SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
"""safetensors dtype codes saekit reads, and their bytes per element (sub-byte codes are not read)."""

Error = type[SaekitError]
_CHUNK = 16 << 20  # bytes decompressed per read, so a member is never held twice


class ArrayHeader(NamedTuple):
    """What a ``.npy`` header declares."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int
    """Bytes before the data."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class TensorHeader(NamedTuple):
    """One tensor of a safetensors header."""

    dtype: str
    """The safetensors code: "F32", "BF16", ..."""
    shape: tuple[int, ...]


def native_order(dtype: np.dtype) -> np.dtype:
    """``dtype`` in the machine's byte order (itself when it already is, or has no byte order)."""
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


# ---------------------------------------------------------------------------------------------------
# .npy


def npy_header(path: Path, error: Error) -> ArrayHeader:
    """The checked header of the ``.npy`` file ``path``: no pickled objects, and exactly as many data
    bytes in the file as the shape and dtype declare."""
    if problem := file_problem(path):
        raise error(f"{path} {problem}")
    try:
        with path.open("rb") as fh:
            header = _read_npy_header(fh, str(path), error)
            size = os.fstat(fh.fileno()).st_size
    except SaekitError:
        raise
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    _check_data_size(header, size - header.offset, str(path), error)
    return header


def map_npy(path: Path, error: Error) -> np.ndarray:
    """The ``.npy`` file ``path`` memory-mapped read-only, after :func:`npy_header` accepted it."""
    npy_header(path, error)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise error(f"{path} cannot be read: {exc}") from None


def _read_npy_header(fh: IO[bytes], where: str, error: Error) -> ArrayHeader:
    try:
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(fh)
    except (ValueError, SyntaxError, TypeError, RecursionError, EOFError, tokenize.TokenError) as exc:
        raise error(f"{where} is not a valid .npy file: {exc}") from None
    if dtype.hasobject:
        raise error(
            f"{where} holds pickled Python objects (dtype {dtype}), which saekit never loads; save a "
            "numeric array, e.g. np.save(path, acts.astype(np.float32))"
        )
    if any(n < 0 for n in shape):
        raise error(f"{where}: the header declares a negative shape {tuple(shape)}")
    return ArrayHeader(tuple(shape), dtype, bool(fortran_order), fh.tell())


def _check_data_size(header: ArrayHeader, available: int, where: str, error: Error) -> None:
    if header.nbytes != available:
        raise error(
            f"{where}: the header declares shape {header.shape} of {header.dtype} ({header.nbytes:,} bytes of data) "
            f"but {max(available, 0):,} bytes follow it; the file is truncated or corrupted"
        )


# ---------------------------------------------------------------------------------------------------
# .npz


def read_npz(path: Path, error: Error, check: Callable[[dict[str, ArrayHeader]], None]) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file ``path`` by name (".npy" dropped), in native byte order.

    ``check`` sees every member's header first and raises to refuse them (wrong names or shapes);
    only then is anything decompressed, and never more than each member declares.
    """
    if problem := file_problem(path):
        raise error(f"{path} {problem}")
    try:
        with zipfile.ZipFile(path) as zf:
            members = _npz_members(zf, path, error)
            check({name: header for name, (_, header) in members.items()})
            for info, _ in members.values():
                if info.file_size > NPZ_RATIO_FLOOR and info.file_size > MAX_NPZ_RATIO * max(info.compress_size, 1):
                    raise error(
                        f"{path}: member {info.filename} declares {info.file_size:,} bytes from {info.compress_size:,} "
                        "compressed, a ratio no float weights reach; refusing to decompress it (a zip bomb?)"
                    )
            return {name: _read_member(zf, info, header, f"{path}:{info.filename}", error) for name, (info, header) in members.items()}
    except SaekitError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise error(f"{path} is truncated or not an .npz file: {exc}") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None


def _npz_members(zf: zipfile.ZipFile, path: Path, error: Error) -> dict[str, tuple[zipfile.ZipInfo, ArrayHeader]]:
    members: dict[str, tuple[zipfile.ZipInfo, ArrayHeader]] = {}
    for info in zf.infolist():
        if info.is_dir():
            continue
        if not info.filename.endswith(".npy"):
            raise error(f"{path}: member {info.filename!r} is not a .npy array")
        name = info.filename.removesuffix(".npy")
        if name in members:
            raise error(f"{path}: member {info.filename!r} appears twice")
        where = f"{path}:{info.filename}"
        with zf.open(info) as fh:
            header = _read_npy_header(fh, where, error)
        _check_data_size(header, info.file_size - header.offset, where, error)
        members[name] = (info, header)
    return members


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, header: ArrayHeader, where: str, error: Error) -> np.ndarray:
    array = np.empty(header.shape, dtype=header.dtype, order="F" if header.fortran_order else "C")
    buffer = array.reshape(-1, order="A").view(np.uint8).data  # the array's bytes, in storage order
    with zf.open(info) as fh:
        fh.read(header.offset)
        filled = 0
        while filled < header.nbytes:
            chunk = fh.read(min(_CHUNK, header.nbytes - filled))
            if not chunk:
                raise error(f"{where} ends after {filled:,} of its {header.nbytes:,} data bytes")
            buffer[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        fh.read(1)  # reaching the end makes zipfile check the member's CRC
    return array.astype(native_order(array.dtype), copy=False)


# ---------------------------------------------------------------------------------------------------
# .safetensors


def safetensors_header(path: Path, error: Error) -> dict[str, TensorHeader]:
    """The tensors a ``.safetensors`` file declares, by name, once its header is known to describe
    the file exactly: a bounded header length, known dtypes, and offsets that tile the data."""
    if problem := file_problem(path):
        raise error(f"{path} {problem}")
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise error(f"{path} is truncated or corrupted: {size} bytes, too short for a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_SAFETENSORS_HEADER, size - 8):
                raise error(
                    f"{path} is truncated or corrupted: its header claims {length:,} bytes "
                    f"(the file has {size:,}; at most {MAX_SAFETENSORS_HEADER:,} are read)"
                )
            raw = fh.read(length)
    except SaekitError:
        raise
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    where = f"{path} is truncated or corrupted: its header"
    header = parse_json(decode_utf8(raw, where, error), where, error)
    if not isinstance(header, dict):
        raise error(f"{where} is not a JSON object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise error(f"{where}'s __metadata__ must map names to strings")
    tensors = {name: _tensor_entry(name, entry, where, error) for name, entry in header.items() if name != "__metadata__"}
    _check_tiling(header, size - 8 - length, where, error)
    return {name: TensorHeader(dtype, shape) for name, (dtype, shape, _) in tensors.items()}


def load_safetensors(path: Path, error: Error) -> dict[str, Any]:
    """Every tensor of ``path`` (torch tensors), after :func:`safetensors_header` accepted it."""
    safetensors_header(path, error)
    try:
        return load_file(path)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise error(f"{path} is truncated or corrupted: {exc}") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None


def _tensor_entry(name: str, entry: Any, where: str, error: Error) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise error(f"{where} gives tensor {name!r} more or less than dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_ITEMSIZE:
        raise error(f"{where} gives tensor {name!r} dtype {dtype!r}; saekit reads {', '.join(SAFETENSORS_ITEMSIZE)}")
    if not _ints(shape) or not _ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise error(f"{where} gives tensor {name!r} an invalid shape {shape!r} or data_offsets {offsets!r}")
    if math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype] != offsets[1] - offsets[0]:
        raise error(f"{where} gives tensor {name!r} of shape {shape} and dtype {dtype} data_offsets {offsets} that do not fit")
    return dtype, tuple(shape), (offsets[0], offsets[1])


def _check_tiling(header: Mapping[str, Any], data_bytes: int, where: str, error: Error) -> None:
    """The tensors' byte ranges must follow one another from 0 to the end of the file, as safetensors
    writes them: no gap, no overlap, nothing after."""
    spans = sorted(tuple(entry["data_offsets"]) for name, entry in header.items() if name != "__metadata__")
    end = 0
    for begin, stop in spans:
        if begin != end:
            raise error(f"{where} makes tensor data overlap or leave a gap at byte {min(begin, end):,}")
        end = stop
    if end != data_bytes:
        raise error(f"{where} declares {end:,} bytes of tensor data but the file holds {data_bytes:,}")


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
