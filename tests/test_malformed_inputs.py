"""A corpus of malformed inputs run against every reader of files: each must end in a saekit error
(ConfigError, DataError or ArtifactError) that names the file, never in a raw traceback, a hang or a
memory blow-up.

Each *reader* starts from a valid artefact it reads (an SAE folder, a suite, a run config, an
activation file, a cache, a checkpoint, the foreign layouts, a corpus, an analysis result) and names
its *slots*: the files it opens. Each *payload* (empty, random bytes, a truncated or lying header,
a bomb, a directory or a symlink loop in place of the file, ...) is put in each slot in turn.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saekit.errors import SaekitError
from tests.foreign_saes import write_gemma_scope, write_sparsify

# ------------------------------------------------------------------ payloads


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _safetensors_header(header: dict, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _zip_bomb(path: Path) -> None:
    """A .npz whose one member claims 2^34 floats and inflates 1,000-fold."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("W_enc.npy", _npy_header((1 << 34,)) + bytes(4 << 20))


def _write(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _directory(path: Path) -> None:
    path.mkdir()


def _symlink_loop(path: Path) -> None:
    os.symlink(path.name, path)


PAYLOADS: dict[str, Callable[[Path], None]] = {
    "empty": _write(b""),
    "random-bytes": _write(np.random.default_rng(0).bytes(4096)),
    "not-utf8": _write(b"\xff\xfe\x00\x80 garbage \xc3\x28"),
    "json-list": _write(b"[1, 2, 3]"),
    "json-null": _write(b"null"),
    "json-wrong-types": _write(json.dumps({"architecture": 3, "d_in": "x", "d_sae": -1, "shards": "no", "format": []}).encode()),
    "deep-nesting": _write(b"[" * 200_000 + b"]" * 200_000),
    "yaml-alias-bomb": _write(b"a: &a [x,x,x,x,x,x,x,x,x]\n" + b"".join(
        f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n".encode() for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )),  # fmt: skip
    "npy-huge-shape": _write(_npy_header((1 << 40,)) + bytes(64)),
    "npy-big-endian": _write(_npy_header((4, 8), ">f4") + np.ones((4, 8), ">f4").tobytes()),
    "npz-zip-bomb": _zip_bomb,
    "safetensors-huge-header": _write(struct.pack("<Q", 1 << 62) + b"{}"),
    "safetensors-lying-shape": _write(_safetensors_header({"x": {"dtype": "F32", "shape": [1 << 30, 1 << 10], "data_offsets": [0, 16]}}, bytes(16))),
    "safetensors-wrong-tensors": lambda path: save_file({"unexpected": torch.zeros(3)}, str(path)),
    "directory": _directory,
    "symlink-loop": _symlink_loop,
}

# ------------------------------------------------------------------ readers


@dataclass(frozen=True)
class Reader:
    build: Callable[[Path], Path]
    """Write a valid artefact under the folder given; return the path the reader is called with."""
    read: Callable[[Path], object]
    slots: tuple[str, ...]
    """Files of the artefact (relative to the path read, or the path itself as "") that payloads replace."""


def _sae_folder(root: Path) -> Path:
    from saekit.io import save_sae
    from saekit.sae import build

    sae = build("topk", d_in=8, d_sae=16, k=2, seed=0)
    sae.metadata["site"] = "layers.0.resid_post"
    return save_sae(sae, root / "sae")


def _suite(root: Path) -> Path:
    from saekit.io import save_suite
    from saekit.sae import build

    return save_suite({"a": build("relu", d_in=8, d_sae=16, seed=0)}, root / "suite")


def _config(suffix: str) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        path = root / f"run{suffix}"
        data = {"data": {"kind": "synthetic", "d": 8}, "sae": [{"architecture": "relu", "d_sae": 16}]}
        path.write_text(json.dumps(data) if suffix != ".toml" else '[data]\nkind = "synthetic"\nd = 8\n[[sae]]\narchitecture = "relu"\nd_sae = 16\n')
        return path

    return build


def _npy(root: Path) -> Path:
    np.save(root / "acts.npy", np.ones((16, 8), np.float32))
    return root / "acts.npy"


def _safetensors(root: Path) -> Path:
    save_file({"acts": torch.ones(16, 8)}, str(root / "acts.safetensors"))
    return root / "acts.safetensors"


def _cache(root: Path) -> Path:
    from saekit.sources.cache import write_cache

    x = torch.randn(24, 4, generator=torch.Generator().manual_seed(0))
    write_cache(root / "cache", iter([{"s": x}]), sites=("s",), d_in={"s": 4}, info={"model": "toy"}, dtype="float32", shard_tokens=8)
    return root / "cache"


def _checkpoint(root: Path) -> Path:
    from saekit.sae import build
    from saekit.training import train

    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    train(build("relu", d_in=8, d_sae=16, seed=0), x, out_dir=root / "run", steps=2, checkpoint_every=1, batch_size=32, progress=False)
    return root / "run" / "checkpoint.safetensors"


def _resume(path: Path) -> object:
    from saekit.sae import build
    from saekit.training import train

    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    return train(build("relu", d_in=8, d_sae=16, seed=0), x, out_dir=path.parent, resume=True, steps=3, checkpoint_every=1, batch_size=32, progress=False)


def _gemma_scope(root: Path) -> Path:
    write_gemma_scope(root / "gs")
    return root / "gs"


def _sparsify(root: Path) -> Path:
    write_sparsify(root / "sp")
    return root / "sp"


def _jsonl(root: Path) -> Path:
    path = root / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"document {i}"}) for i in range(5)))
    return path


def _txt_folder(root: Path) -> Path:
    (root / "docs").mkdir()
    for i in range(3):
        (root / "docs" / f"{i}.txt").write_text(f"document {i}")
    return root / "docs"


@dataclass
class _Result:
    values: torch.Tensor
    note: str


def _analysis_result(root: Path) -> Path:
    from saekit.analysis.store import save_result

    return save_result(_Result(torch.arange(4.0), "four"), root / "result")


def _read_result(path: Path) -> object:
    from saekit.analysis.store import load_result

    return load_result(_Result, path)


def _read_sae(path: Path) -> object:
    from saekit.io import load_sae

    return load_sae(path)


def _read_suite(path: Path) -> object:
    from saekit.io import load_suite

    return load_suite(path)


def _read_config(path: Path) -> object:
    from saekit.cli.run_config import load_run_config

    return load_run_config(path)


def _read_activations(path: Path) -> object:
    from saekit.sources.tensor import as_source

    source = as_source(path)
    return next(iter(source.batches(4, seed=0)))


def _read_cache(path: Path) -> object:
    from saekit.sources.cache import CacheSource

    return list(zip(range(4), CacheSource(path).batches(8, seed=0), strict=False))


def _read_foreign(path: Path) -> object:
    from saekit.io.convert import read_one

    return read_one(path)


def _read_texts(path: Path) -> object:
    from saekit.sources.text import load_texts

    return load_texts(path)


READERS: dict[str, Reader] = {
    "sae-folder": Reader(_sae_folder, _read_sae, ("cfg.json", "sae_weights.safetensors")),
    "suite": Reader(_suite, _read_suite, ("index.json", "a/cfg.json")),
    "config-toml": Reader(_config(".toml"), _read_config, ("",)),
    "config-yaml": Reader(_config(".yaml"), _read_config, ("",)),
    "config-json": Reader(_config(".json"), _read_config, ("",)),
    "activations-npy": Reader(_npy, _read_activations, ("",)),
    "activations-safetensors": Reader(_safetensors, _read_activations, ("",)),
    "cache": Reader(_cache, _read_cache, ("manifest.json", "shard-000000.safetensors")),
    "checkpoint": Reader(_checkpoint, _resume, ("",)),
    "gemma-scope": Reader(_gemma_scope, _read_foreign, ("params.npz",)),
    "sparsify": Reader(_sparsify, _read_foreign, ("cfg.json", "sae.safetensors")),
    "corpus-jsonl": Reader(_jsonl, _read_texts, ("",)),
    "corpus-folder": Reader(_txt_folder, _read_texts, ("1.txt",)),
    "analysis-result": Reader(_analysis_result, _read_result, ("result.json", "arrays.safetensors")),
}

ACCEPTED = {
    # Payloads that are valid input for a reader: it must then read them without error.
    ("activations-npy", "", "npy-big-endian"),
}


def _accepted(reader: str, slot: str, payload: str, target: Path) -> bool:
    if reader == "corpus-folder":  # any UTF-8 file is a document; a folder named *.txt is not one
        return target.is_dir() or (target.is_file() and _is_utf8(target.read_bytes()))
    return (reader, slot, payload) in ACCEPTED


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


CASES = [(r, s, p) for r, reader in READERS.items() for s in reader.slots for p in PAYLOADS]


@pytest.mark.parametrize(("reader", "slot", "payload"), CASES, ids=["-".join(c).replace("/", ".") or "path" for c in CASES])
def test_every_reader_names_every_malformed_input(tmp_path, reader, slot, payload):
    spec = READERS[reader]
    path = spec.build(tmp_path)
    target = path / slot if slot else path
    if target.is_dir() and not target.is_symlink():
        raise AssertionError(f"slot {slot!r} of {reader} is a folder")
    target.unlink()
    PAYLOADS[payload](target)
    if _accepted(reader, slot, payload, target):
        spec.read(path)
        return
    with pytest.raises(SaekitError) as caught:
        spec.read(path)
    assert (target.name if slot else path.name) in str(caught.value), f"the error does not name the file: {caught.value}"
