"""A safetensors file that carries the checksum of its own bytes, for files that must be refused when
anything in them changed (a training checkpoint: other weights, Adam moments or step would resume
silently, and flipped bits would surface later as a misleading divergence).

The checksum is the one of the activation cache's shards: the sha256 of the whole file, header and
metadata included. A file cannot hold the hash of its own final bytes, so it is taken with the hash
slot, the value of the metadata key ``saekit_sha256``, set to 64 zeros, and then written into that
slot; its hex digits keep every offset in the file unchanged. Reading replaces the slot by zeros again
and compares.
"""

from __future__ import annotations

import hashlib
import struct
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from saekit.atomic import write_file
from saekit.bounded import decode_utf8, parse_json
from saekit.errors import ArtifactError

CHECKSUM_KEY = "saekit_sha256"
_BLANK = b"0" * 64
_SLOT = f'"{CHECKSUM_KEY}":"'.encode()
"""What precedes the digits in the header: in compact JSON, only the metadata key can be followed by
``":"`` (a quote inside a string is always escaped), so it occurs once."""


class Checksum(Enum):
    MATCHES = "matches"
    DIFFERS = "differs"
    ABSENT = "absent"


class Contents(NamedTuple):
    """A file as read: its bytes, its string metadata and whether its checksum matches them."""

    data: bytes
    metadata: dict[str, str]
    checksum: Checksum


def write_checksummed(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` and ``metadata`` atomically (:mod:`saekit.atomic`), with their checksum."""
    data = save(tensors, metadata={**metadata, CHECKSUM_KEY: _BLANK.decode()})
    slot = _slot(data)
    if slot is None:
        raise AssertionError("safetensors wrote the checksum slot in an unexpected form")
    digest = hashlib.sha256(data).hexdigest().encode()
    view = memoryview(data)

    def put(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(view[:slot])
            handle.write(digest)
            handle.write(view[slot + len(_BLANK) :])

    return write_file(path, put)


def read_checksummed(path: Path, kind: str) -> Contents:
    """The bytes and metadata of the ``kind`` file at ``path`` (say "checkpoint"), and whether its
    checksum matches. A folder, an empty, unreadable or truncated file, or a header that is not a
    safetensors header, raises ArtifactError naming ``path``."""
    if path.is_dir():
        raise ArtifactError(f"{path} is a folder, not a {kind} file: move it away")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"no {kind} at {path}") from None
    except OSError as exc:
        raise ArtifactError(f"cannot read the {kind} {path}: {exc.strerror or exc}") from exc
    if not data:
        raise ArtifactError(f"{kind} {path} is empty (0 bytes): the file is corrupted")
    metadata = header_metadata(data, path, kind)
    if CHECKSUM_KEY not in metadata:
        return Contents(data, metadata, Checksum.ABSENT)
    slot = _slot(data)
    if slot is None or data[slot : slot + len(_BLANK)].decode("ascii", "replace") != metadata[CHECKSUM_KEY]:
        return Contents(data, metadata, Checksum.DIFFERS)
    view = memoryview(data)
    digest = hashlib.sha256(view[:slot])
    digest.update(_BLANK)
    digest.update(view[slot + len(_BLANK) :])
    return Contents(data, metadata, Checksum.MATCHES if digest.hexdigest() == metadata[CHECKSUM_KEY] else Checksum.DIFFERS)


def tensors_of(contents: Contents, path: Path, kind: str) -> dict[str, Tensor]:
    """The tensors of a file read by :func:`read_checksummed` (on the CPU)."""
    try:
        return load(contents.data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{kind} {path} is corrupted: its tensors cannot be read ({exc})") from exc


def header_metadata(data: bytes, path: Path, kind: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors header (8-byte little-endian length, then JSON), after
    checking that the file is as long as the header says."""
    broken = f"{kind} {path} is truncated or corrupted ({len(data)} bytes)"
    if len(data) < 8:
        raise ArtifactError(f"{broken}: too short for a safetensors header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ArtifactError(f"{broken}: its header claims {length} bytes")
    try:
        header = parse_json(decode_utf8(data[8 : 8 + length], "its header", ArtifactError), "its header", ArtifactError)
    except ArtifactError as exc:
        raise ArtifactError(f"{broken}: {exc}") from exc
    if not isinstance(header, dict):
        raise ArtifactError(f"{broken}: its header is not a safetensors header")
    metadata = header.pop("__metadata__", {})
    ends = [_end(entry) for entry in header.values()]
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()) or -1 in ends:
        raise ArtifactError(f"{broken}: its header is not a safetensors header")
    size = 8 + length + max(ends, default=0)
    if size != len(data):
        raise ArtifactError(f"{broken}: its header describes {size} bytes")
    return metadata


def _end(entry: object) -> int:
    """Where a tensor's data ends, from its header entry; -1 if the entry is malformed."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) and o >= 0 for o in offsets):
        return -1
    return offsets[1]


def _slot(data: bytes) -> int | None:
    """Offset of the checksum's 64 digits in the header; None unless its key occurs exactly once."""
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + length]
    at = header.find(_SLOT)
    if at < 0 or header.find(_SLOT, at + 1) >= 0 or at + len(_SLOT) + len(_BLANK) >= len(header):
        return None
    return 8 + at + len(_SLOT)
