"""The JSON metadata of a training checkpoint: its format version, and the one check of its structure.

A checkpoint whose checksum matches was written by saekit, but its metadata is still checked key by
key and type by type before anything reads it: a damaged or hand-made file (a checksum recomputed
after an edit) must fail here, naming the file and the key, not as a KeyError or TypeError deep in
the resume.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

from saekit.bounded import parse_json
from saekit.errors import ArtifactError
from saekit.version import __version__

FORMAT_VERSION = 2
"""2: the file carries its sha256 (:mod:`saekit.training.checksummed`); 1 carried none."""

_KEYS = ("format_version", "saekit_version", "step", "n_saes", "optimizers", "scales", "fingerprint")


class OptimizerMeta(NamedTuple):
    """What of an Adam state dict is not a tensor: its parameter groups and per-parameter scalars."""

    param_groups: list[dict[str, Any]]
    scalars: dict[str, dict[str, Any]]


class CheckpointMeta(NamedTuple):
    saekit_version: str
    step: int
    n_saes: int
    optimizers: list[OptimizerMeta]
    scales: dict[str, float]
    fingerprint: dict[str, Any]


def meta_json(meta: CheckpointMeta) -> str:
    body = {"format_version": FORMAT_VERSION, **meta._asdict()}
    body["optimizers"] = [o._asdict() for o in meta.optimizers]
    return json.dumps(body)


def check_format_version(raw: str, path: Path) -> None:
    """Refuse a checkpoint that says it is in another format, naming the saekit that wrote it. Metadata
    that does not parse passes: the checksum and :func:`parse_meta` judge it."""
    try:
        meta = parse_json(raw, "metadata", ArtifactError)
    except ArtifactError:
        return
    if not isinstance(meta, dict) or "format_version" not in meta or meta["format_version"] == FORMAT_VERSION:
        return
    writer = meta.get("saekit_version")
    by = f"saekit {writer}" if isinstance(writer, str) else "an older saekit"
    raise ArtifactError(
        f"checkpoint {path} was written by {by} in checkpoint format {meta['format_version']!r}; this saekit "
        f"({__version__}) reads format {FORMAT_VERSION}: finish that run with the saekit that started it, or "
        "start it again in a new output folder"
    )


def parse_meta(raw: str, path: Path) -> CheckpointMeta:
    """The checked metadata; anything missing, extra or of the wrong type raises ArtifactError."""
    try:
        meta = parse_json(raw, "it", ArtifactError)
    except ArtifactError as exc:
        raise _corrupt(path, str(exc)) from exc
    if not isinstance(meta, dict):
        raise _corrupt(path, f"expected a JSON object, got {type(meta).__name__}")
    missing, unknown = [k for k in _KEYS if k not in meta], sorted(set(meta) - set(_KEYS))
    if missing or unknown:
        raise _corrupt(path, f"missing keys {missing}, unknown keys {unknown}")
    n_saes = _count(meta, "n_saes", path, minimum=1)
    optimizers = meta["optimizers"]
    if not isinstance(optimizers, list) or len(optimizers) != n_saes:
        raise _corrupt(path, f"'optimizers' must be a list of {n_saes} optimiser states")
    scales = meta["scales"]
    if not isinstance(scales, dict) or not all(_positive(v) for v in scales.values()):
        raise _corrupt(path, f"'scales' must map each site to a positive, finite factor, got {scales!r}")
    if not isinstance(meta["fingerprint"], dict) or not isinstance(meta["saekit_version"], str):
        raise _corrupt(path, "'fingerprint' must be a JSON object and 'saekit_version' a string")
    return CheckpointMeta(
        saekit_version=meta["saekit_version"],
        step=_count(meta, "step", path, minimum=0),
        n_saes=n_saes,
        optimizers=[_optimizer(o, f"optimizers[{i}]", path) for i, o in enumerate(optimizers)],
        scales={k: float(v) for k, v in scales.items()},
        fingerprint=meta["fingerprint"],
    )


def _optimizer(value: Any, where: str, path: Path) -> OptimizerMeta:
    if not isinstance(value, dict) or set(value) != {"param_groups", "scalars"}:
        raise _corrupt(path, f"'{where}' must hold exactly 'param_groups' and 'scalars'")
    groups, scalars = value["param_groups"], value["scalars"]
    if not isinstance(groups, list) or not groups or not all(_group(g) for g in groups):
        raise _corrupt(path, f"'{where}.param_groups' must be a list of parameter groups with integer 'params'")
    if not isinstance(scalars, dict) or not all(k.isdecimal() and isinstance(v, dict) for k, v in scalars.items()):
        raise _corrupt(path, f"'{where}.scalars' must map parameter numbers to settings")
    return OptimizerMeta(groups, scalars)


def _group(group: Any) -> bool:
    if not isinstance(group, dict) or not isinstance(params := group.get("params"), list):
        return False
    return all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in params)


def _count(meta: dict[str, Any], key: str, path: Path, *, minimum: int) -> int:
    value = meta[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _corrupt(path, f"'{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _corrupt(path: Path, problem: str) -> ArtifactError:
    return ArtifactError(f"checkpoint {path} has corrupt metadata: {problem}")
