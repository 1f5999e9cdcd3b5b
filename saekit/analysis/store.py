"""Saving and loading analysis results: tensors to ``arrays.safetensors``, everything else to ``result.json``.

A result is a dataclass whose fields are tensors, plain JSON values, or nested dataclasses of those
(NamedTuples and dataclasses are stored as dicts and rebuilt on load from the field's annotation).
Each file is written atomically (:mod:`saekit.atomic`), so a crash never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from safetensors.torch import load_file
from torch import Tensor

from saekit.atomic import write_safetensors, write_text
from saekit.bounded import read_json
from saekit.errors import ArtifactError

JSON_NAME = "result.json"
ARRAYS_NAME = "arrays.safetensors"
MAX_JSON_BYTES = 64 << 20
"""Largest result.json read (tensors are in arrays.safetensors; the JSON holds tables and settings)."""

T = TypeVar("T")


class Stored:
    """Mixin giving a result dataclass ``save(folder)`` and ``load(folder)``."""

    def save(self, folder: str | os.PathLike[str]) -> Path:
        return save_result(self, folder)

    @classmethod
    def load(cls: type[T], folder: str | os.PathLike[str]) -> T:
        return load_result(cls, folder)


def save_result(result: Any, folder: str | os.PathLike[str]) -> Path:
    """Write ``result`` (a dataclass) into ``folder``; returns the folder."""
    if not dataclasses.is_dataclass(result):
        raise TypeError(f"save_result needs a dataclass, got {type(result).__name__}")
    folder = Path(folder)
    arrays: dict[str, Tensor] = {}
    plain = _split(result, "", arrays)
    payload = {"kind": type(result).__name__, "fields": plain}
    write_safetensors(folder / ARRAYS_NAME, {k: v.detach().cpu().contiguous() for k, v in arrays.items()})
    write_text(folder / JSON_NAME, json.dumps(payload, indent=2, allow_nan=True) + "\n")
    return folder


def load_result(cls: type[T], folder: str | os.PathLike[str]) -> T:
    """Read a result of class ``cls`` written by :func:`save_result`."""
    folder = Path(folder)
    json_path, arrays_path = folder / JSON_NAME, folder / ARRAYS_NAME
    for path in (json_path, arrays_path):
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: {folder} is not a saved analysis result")
    payload = read_json(json_path, MAX_JSON_BYTES, ArtifactError)  # NaN allowed: results hold undefined statistics
    if not isinstance(payload, dict) or "fields" not in payload:
        raise ArtifactError(f"{json_path} is not a saved analysis result (no 'kind' and 'fields')")
    if payload.get("kind") != cls.__name__:
        raise ArtifactError(f"{folder} holds a {payload.get('kind')!r}, not a {cls.__name__}")
    try:
        arrays = load_file(str(arrays_path))
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise ArtifactError(f"cannot read {arrays_path}: {exc}") from exc
    try:
        return _build(cls, payload["fields"], "", arrays)
    except _Mismatch as exc:
        raise ArtifactError(f"{json_path} does not hold a {cls.__name__}: {exc}") from exc


class _Mismatch(Exception):
    """A stored value that does not fit the field's annotation (caught once, with the file named)."""


def _split(obj: Any, prefix: str, arrays: dict[str, Tensor]) -> Any:
    if isinstance(obj, Tensor):
        arrays[prefix] = obj
        return {"__tensor__": prefix}
    if dataclasses.is_dataclass(obj):
        return {f.name: _split(getattr(obj, f.name), f"{prefix}{f.name}.", arrays) for f in dataclasses.fields(obj)}
    if _is_named_tuple(type(obj)):
        return {name: _split(value, f"{prefix}{name}.", arrays) for name, value in zip(cast(Any, obj)._fields, obj)}
    if isinstance(obj, dict):
        return {str(k): _split(v, f"{prefix}{k}.", arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{prefix}{i}.", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at {prefix.rstrip('.')!r}")


def _build(annotation: Any, value: Any, prefix: str, arrays: dict[str, Tensor]) -> Any:
    if isinstance(value, dict) and set(value) == {"__tensor__"}:
        if value["__tensor__"] not in arrays:
            raise _Mismatch(f"tensor {value['__tensor__']!r} is not in {ARRAYS_NAME}")
        return arrays[value["__tensor__"]]
    if annotation is Tensor:
        raise _Mismatch(f"field {prefix.rstrip('.')!r} should be a tensor, got {type(value).__name__}")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        candidates = [a for a in args if a is not type(None)]
        return value if value is None else _build(candidates[0], value, prefix, arrays)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        hints = typing.get_type_hints(annotation)
        names = [f.name for f in dataclasses.fields(annotation) if f.init]
        _check_record(value, names, prefix)
        return annotation(**{n: _build(hints[n], value[n], f"{prefix}{n}.", arrays) for n in names})
    if isinstance(annotation, type) and _is_named_tuple(annotation):
        hints = typing.get_type_hints(annotation)
        names = list(cast(Any, annotation)._fields)
        _check_record(value, names, prefix)
        return annotation(**{n: _build(hints.get(n, Any), value[n], f"{prefix}{n}.", arrays) for n in names})
    if origin is dict and isinstance(value, dict):
        inner = args[1] if len(args) == 2 else Any
        return {k: _build(inner, v, f"{prefix}{k}.", arrays) for k, v in value.items()}
    if origin in (list, tuple) and isinstance(value, list):
        inner = args[0] if args else Any
        items = [_build(inner, v, f"{prefix}{i}.", arrays) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    return value


def _check_record(value: Any, names: list[str], prefix: str) -> None:
    where = repr(prefix.rstrip(".")) if prefix else "the top level"
    if not isinstance(value, dict):
        raise _Mismatch(f"{where} should be a table of fields, got {type(value).__name__}")
    missing = [n for n in names if n not in value]
    if missing:
        raise _Mismatch(f"{where} lacks the field(s) {', '.join(missing)}")


def _is_named_tuple(cls: type) -> bool:
    """A NamedTuple class (a tuple subclass with ``_fields``): the one form of tuple stored by field name."""
    return issubclass(cls, tuple) and any(isinstance(k.__dict__.get("_fields"), tuple) for k in cls.__mro__)


def cpu_float(t: Tensor) -> Tensor:
    """A detached float32 CPU copy, the form results store tensors in."""
    return t.detach().to("cpu", torch.float32)
