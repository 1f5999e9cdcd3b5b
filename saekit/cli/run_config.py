"""Run configuration files for `saekit train`: TOML or YAML, strict, with `--set key=value` overrides.

    out = "runs/sweep"              # output folder

    [data]                          # where activations come from
    kind = "synthetic"              # "file" (path = "acts.npy", site = "...") or "synthetic" (+ its fields)
    d = 64

    [train]                         # TrainConfig fields
    steps = 2000
    batch_size = 1024

    [[sae]]                         # one table per SAE; all train side by side on the same stream
    architecture = "topk"
    d_sae = 512
    k = 8
"""

from __future__ import annotations

import copy
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from saekit.errors import ConfigError
from saekit.sae.base import SAE
from saekit.sae.registry import build
from saekit.strict import from_dict
from saekit.training.config import TrainConfig
from saekit.types import ActivationSource

TOP_LEVEL_KEYS = ("out", "data", "train", "sae")
SAE_SPEC_KEYS = ("architecture", "name", "site", "seed", "d_in")
"""Keys of an [[sae]] table that are not architecture hyper-parameters."""


@dataclass(frozen=True)
class RunConfig:
    """A parsed run file: where to write, what data, how to train, which SAEs."""

    out: Path
    data: dict[str, Any]
    train: TrainConfig
    saes: list[dict[str, Any]]
    raw: dict[str, Any]
    """The merged configuration as read (after overrides), saved beside the results."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: use a .toml, .yaml or .json file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings; ``sae.0.k=16`` indexes the list of SAEs, values are YAML scalars."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw_value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=1000")
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
        parts = key.split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = _list_item(node, part, ".".join(parts[: depth + 1]))
            else:
                node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            raise ConfigError(f"--set {item!r}: name a field of an SAE, e.g. sae.0.k=16")
        node[last] = value
    return data


def _list_item(items: list, index: str, where: str) -> Any:
    if not index.isdigit() or int(index) >= len(items):
        raise ConfigError(f"--set: {where} does not exist (there are {len(items)} entries)")
    return items[int(index)]


def parse_run_config(data: dict[str, Any]) -> RunConfig:
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown top-level key {', '.join(map(repr, unknown))}; valid keys are {', '.join(TOP_LEVEL_KEYS)}")
    for key in ("data", "train", "sae"):
        if key not in data:
            raise ConfigError(f"the config has no {key!r} section")
    saes = data["sae"]
    if isinstance(saes, dict):
        saes = [saes]
    if not isinstance(saes, list) or not saes or not all(isinstance(s, dict) for s in saes):
        raise ConfigError("'sae' must be one or more tables ([[sae]] in TOML, a list in YAML)")
    for i, spec in enumerate(saes):
        if "architecture" not in spec:
            raise ConfigError(f"sae.{i}: missing 'architecture'")
        if "d_sae" not in spec:
            raise ConfigError(f"sae.{i}: missing 'd_sae'")
    return RunConfig(
        out=Path(data.get("out", "runs/latest")),
        data=dict(data["data"]),
        train=from_dict(TrainConfig, data["train"], where="train"),
        saes=[dict(s) for s in saes],
        raw=data,
    )


class BuiltSAEs(NamedTuple):
    saes: list[SAE]
    names: list[str]


def build_saes(specs: list[dict[str, Any]], source: ActivationSource) -> BuiltSAEs:
    """SAEs from [[sae]] tables; ``d_in`` defaults to the width of the SAE's site in ``source``."""
    saes, names = [], []
    for i, spec in enumerate(specs):
        spec = dict(spec)
        architecture = spec.pop("architecture")
        name = spec.pop("name", None)
        site = spec.pop("site", None)
        seed = spec.pop("seed", i)
        if site is None and len(source.sites) == 1:
            site = source.sites[0]
        if site not in source.sites and len(source.sites) > 1:
            raise ConfigError(f"sae.{i}: site {site!r} is not one of the data's sites {list(source.sites)}")
        d_in = spec.pop("d_in", source.d_in(site if site in source.sites else source.sites[0]))
        try:
            sae = build(architecture, d_in=d_in, seed=seed, **spec)
        except ConfigError as exc:
            raise ConfigError(f"sae.{i}: {exc}") from exc
        sae.metadata["site"] = site
        saes.append(sae)
        names.append(name or f"{i:02d}-{architecture}")
    if len(set(names)) != len(names):
        raise ConfigError(f"SAE names must be unique, got {names}")
    return BuiltSAEs(saes, names)
