"""Array files are checked from their headers before any data is read, mapped or decompressed: a
header may not claim more (or less) than the file holds, and an .npz member is not inflated past a
plausible size."""

from __future__ import annotations

import io
import json
import re
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saekit.errors import ArtifactError, DataError
from saekit.tensorfile import NPZ_RATIO_FLOOR, load_safetensors, map_npy, npy_header, read_npz, safetensors_header


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def header_only_npy(path: Path, shape: tuple[int, ...], descr: str = "<f4") -> Path:
    with path.open("wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": descr, "fortran_order": False, "shape": shape})
    return path


# ---------------------------------------------------------------------------------------------------
# .npy


def test_an_npy_header_claiming_more_than_the_file_holds_is_refused(tmp_path: Path):
    path = header_only_npy(tmp_path / "claims.npy", (2**20, 2**20))  # 4 TiB of float32 in a 128-byte file
    with pytest.raises(DataError, match=r"claims.npy: the header declares shape \(1048576, 1048576\) of float32 .* but 0 bytes follow"):
        npy_header(path, DataError)


def test_trailing_bytes_after_the_data_are_refused(tmp_path: Path):
    path = tmp_path / "a.npy"
    path.write_bytes(npy_bytes(np.zeros((2, 3), np.float32)) + b"junk")
    with pytest.raises(DataError, match=r"\(24 bytes of data\) but 28 bytes follow"):
        map_npy(path, DataError)


def test_negative_shapes_and_hostile_headers_are_refused(tmp_path: Path):
    path = header_only_npy(tmp_path / "neg.npy", (-1, 4))
    with pytest.raises(DataError, match="negative shape"):
        npy_header(path, DataError)
    nested = tmp_path / "nested.npy"
    nested.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 5000) + b"(" * 4999 + b"\n")
    with pytest.raises(DataError, match="nested.npy is not a valid .npy file"):
        npy_header(nested, DataError)


def test_a_big_endian_npy_maps_with_its_byte_order(tmp_path: Path):
    path = tmp_path / "be.npy"
    np.save(path, np.arange(6, dtype=">f4").reshape(2, 3))
    array = map_npy(path, DataError)
    assert array.dtype == np.dtype(">f4") and array.tolist() == [[0, 1, 2], [3, 4, 5]]


# ---------------------------------------------------------------------------------------------------
# .npz


def no_check(headers):
    return None


def test_npz_arrays_come_back_exactly_in_native_order(tmp_path: Path):
    path = tmp_path / "p.npz"
    arrays = {"a": np.arange(6, dtype=">f4").reshape(2, 3), "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "s": np.float32(2.5)}
    np.savez_compressed(path, **arrays)
    loaded = read_npz(path, ArtifactError, no_check)
    for name, array in arrays.items():
        assert loaded[name].dtype.isnative and np.array_equal(loaded[name], array)


def test_headers_are_checked_before_anything_is_decompressed(tmp_path: Path):
    path = tmp_path / "p.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("W.npy", npy_bytes(np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)))
    data = bytearray(path.read_bytes())
    data[data.index(b"PK\x01\x02") - 5] ^= 0xFF  # corrupt the end of the compressed data: inflating W would fail

    def refuse(headers):
        raise ArtifactError(f"refused by check: W is {headers['W'].shape}")

    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"refused by check: W is \(128, 128\)"):
        read_npz(path, ArtifactError, refuse)
    with pytest.raises(ArtifactError, match="p.npz is truncated or not an .npz file"):
        read_npz(path, ArtifactError, no_check)


def zip_bomb(path: Path, n_floats: int) -> None:
    """A deflated member of zeros: a few KB on disk for ``4 n_floats`` bytes declared."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("W.npy", "w", force_zip64=True) as member:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (n_floats,)})
        member.write(buffer.getvalue())
        for _ in range(n_floats // 2**18):
            member.write(bytes(2**20))


def test_a_zip_bomb_member_is_refused_without_inflating_it(tmp_path: Path):
    path = tmp_path / "bomb.npz"
    zip_bomb(path, 2**23)  # 32 MiB declared
    assert path.stat().st_size < 100_000 and 4 * 2**23 > NPZ_RATIO_FLOOR
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError, match=r"member W.npy declares 33,554,560 bytes from .* compressed, a ratio no float weights reach"):
            read_npz(path, ArtifactError, no_check)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


@pytest.mark.parametrize(
    "members, message",
    [
        ({"W.npy": npy_bytes(np.zeros(3, np.float32)), "notes.txt": b"hi"}, "member 'notes.txt' is not a .npy array"),
        ({"W.npy": npy_bytes(np.zeros(3, np.float32))[:-4]}, r"W.npy: the header declares shape \(3,\) .* but 8 bytes follow"),
        ({"W.npy": npy_bytes(np.array([{}], dtype=object))}, "W.npy holds pickled Python objects"),
    ],
)
def test_bad_npz_members_are_named(tmp_path: Path, members, message):
    path = tmp_path / "p.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ArtifactError, match=message):
        read_npz(path, ArtifactError, no_check)


def test_a_member_given_twice_is_refused(tmp_path: Path):
    path = tmp_path / "p.npz"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "w") as zf:
        zf.writestr("W.npy", npy_bytes(np.zeros(3, np.float32)))
        zf.writestr("W.npy", npy_bytes(np.ones(3, np.float32)))
    with pytest.raises(ArtifactError, match="member 'W.npy' appears twice"):
        read_npz(path, ArtifactError, no_check)


# ---------------------------------------------------------------------------------------------------
# .safetensors


def raw_safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_a_safetensors_header_describes_the_file(tmp_path: Path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}, str(path))
    header = safetensors_header(path, ArtifactError)
    assert {k: (h.dtype, h.shape) for k, h in header.items()} == {"a": ("F32", (2, 3)), "b": ("BF16", (4,))}
    assert load_safetensors(path, ArtifactError)["b"].dtype == torch.bfloat16


@pytest.mark.parametrize(
    "header, data, message",
    [
        ({"W": {"dtype": "F32", "shape": [8, 10**11], "data_offsets": [0, 32 * 10**11]}}, b"", "declares 3,200,000,000,000 bytes of tensor data but the file holds 0"),
        ({"W": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4), "of shape [2] and dtype F32 data_offsets [0, 4] that do not fit"),
        ({"W": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "overlap or leave a gap at byte 0"),
        ({"W": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8), "declares 4 bytes of tensor data but the file holds 8"),
        ({"W": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, bytes(1), "tensor 'W' dtype 'F4'; saekit reads BOOL"),
        ({"W": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), "invalid shape"),
        ({"W": {"dtype": "F32", "shape": [1]}}, bytes(4), "more or less than dtype, shape and data_offsets"),
        ({"__metadata__": {"a": 1}}, b"", "__metadata__ must map names to strings"),
        ([1, 2], b"", "its header is not a JSON object"),
    ],
)
def test_bad_safetensors_headers_are_named(tmp_path: Path, header, data, message):
    path = raw_safetensors(tmp_path / "w.safetensors", header, data)
    with pytest.raises(ArtifactError, match="w.safetensors is truncated or corrupted: .*" + re.escape(message)):
        safetensors_header(path, ArtifactError)


def test_safetensors_header_length_is_bounded(tmp_path: Path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(ArtifactError, match="its header claims 4,611,686,018,427,387,904 bytes"):
        safetensors_header(path, ArtifactError)


def test_duplicate_tensor_names_are_refused(tmp_path: Path):
    path = tmp_path / "w.safetensors"
    text = b'{"W": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "W": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(8))
    with pytest.raises(ArtifactError, match="key 'W' is given twice"):
        safetensors_header(path, ArtifactError)
