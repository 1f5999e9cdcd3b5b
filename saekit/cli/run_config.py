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
    # init_from = "runs/x/saes/00-topk"   start from a saved SAE (fine-tuning) instead of a fresh one

    [[objective]]                   # optional group objectives over several SAEs (kind = "mfr")
    kind = "mfr"
    members = [0, 1]

    [e2e]                           # optional: train end to end through the model (data kind = "model")
    downstream_sites = ["later"]    # e2e+ds (KL weight 0.5 and downstream weight 2.5, as the paper)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from saekit.errors import ConfigError
from saekit.sae.base import SAE
from saekit.sae.registry import build
from saekit.sources.tensor import site_to_read
from saekit.strict import from_dict
from saekit.training.config import TrainConfig
from saekit.types import ActivationSource

TOP_LEVEL_KEYS = ("out", "data", "train", "sae", "objective", "e2e")
SAE_SPEC_KEYS = ("architecture", "name", "site", "seed", "d_in", "init_from")
"""Keys of an [[sae]] table that are not architecture hyper-parameters."""


@dataclass(frozen=True)
class RunConfig:
    """A parsed run file: where to write, what data, how to train, which SAEs."""

    out: Path
    data: dict[str, Any]
    train: TrainConfig
    saes: list[dict[str, Any]]
    raw: dict[str, Any]
    objectives: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """[[objective]] tables: group objectives over several SAEs (kind = "mfr")."""
    e2e: dict[str, Any] | None = None
    """The [e2e] table: train end to end through the data's model instead of on activations."""
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
        if "d_sae" not in spec and "init_from" not in spec:
            raise ConfigError(f"sae.{i}: missing 'd_sae'")
    objectives = data.get("objective", [])
    objectives = [objectives] if isinstance(objectives, dict) else objectives
    if not isinstance(objectives, list) or not all(isinstance(o, dict) for o in objectives):
        raise ConfigError("'objective' must be one or more tables ([[objective]] in TOML)")
    e2e = data.get("e2e")
    if e2e is not None and not isinstance(e2e, dict):
        raise ConfigError("'e2e' must be a table of end-to-end settings ([e2e] in TOML)")
    return RunConfig(
        out=Path(data.get("out", "runs/latest")),
        data=dict(data["data"]),
        train=from_dict(TrainConfig, data["train"], where="train"),
        saes=[dict(s) for s in saes],
        raw=data,
        objectives=[dict(o) for o in objectives],
        e2e=None if e2e is None else dict(e2e),
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
        sites = list(source.sites)
        read = site_to_read(site, sites)  # the engine's rule (engine.assign_sites), named here by table
        if read is None:
            raise ConfigError(f"sae.{i}: site {site!r} is not one of the data's sites {sites}")
        site = read if site is None else site
        d_in = spec.pop("d_in", source.d_in(read))
        init_from = spec.pop("init_from", None)
        try:
            sae = build(architecture, d_in=d_in, seed=seed, **spec) if init_from is None else _load_start(init_from, architecture, spec)
        except ConfigError as exc:
            raise ConfigError(f"sae.{i}: {exc}") from exc
        sae.metadata["site"] = site
        saes.append(sae)
        names.append(name or f"{i:02d}-{architecture}")
    if len(set(names)) != len(names):
        raise ConfigError(f"SAE names must be unique, got {names}")
    return BuiltSAEs(saes, names)


def _load_start(folder: str, architecture: str, hparams: dict[str, Any]) -> SAE:
    """A saved SAE to continue from; its architecture must be the one named, and no other
    hyper-parameters may be given (they come from the folder)."""
    from saekit.io import load_sae

    sae = load_sae(folder)
    if sae.architecture != architecture:
        raise ConfigError(f"init_from {folder!r} holds a {sae.architecture!r} SAE, not {architecture!r}")
    extra = sorted(set(hparams) - {"d_sae"})
    if extra or hparams.get("d_sae", sae.d_sae) != sae.d_sae:
        raise ConfigError(f"init_from {folder!r}: hyper-parameters come from the saved SAE; remove {extra or ['d_sae']}")
    return sae


def build_objectives(tables: list[dict[str, Any]], n_saes: int) -> list[Any]:
    """Group objectives from [[objective]] tables (``kind`` = "mfr": MFRConfig fields)."""
    from saekit.objectives.mfr import MFR, MFRConfig

    objectives = []
    for j, table in enumerate(tables):
        table = dict(table)
        kind = table.pop("kind", None)
        if kind != "mfr":
            raise ConfigError(f"objective.{j}: 'kind' must be 'mfr', got {kind!r}")
        if "members" not in table:
            table["members"] = list(range(n_saes))
        table["members"] = tuple(table["members"])
        objectives.append(MFR(from_dict(MFRConfig, table, where=f"objective.{j}")))
    return objectives


def train_from_config(rc: RunConfig, saes: list[SAE], source: ActivationSource, *, out_dir: Path, resume: bool) -> Any:
    """Train as the config says: the multi-SAE loop (with its group objectives), or end to end through
    the data's model when there is an [e2e] table. Returns a TrainResult."""
    if rc.e2e is None:
        from saekit.training.engine import run
        from saekit.training.objective import LocalObjective

        objective = LocalObjective(build_objectives(rc.objectives, len(saes)))
        return run(saes, source, rc.train, objective=objective, out_dir=out_dir, resume=resume)
    from saekit.objectives.e2e import E2EConfig, train_e2e

    if rc.objectives:
        raise ConfigError("[e2e] and [[objective]] cannot be combined in one run")
    from saekit.sources.model import ModelSource

    if not isinstance(source, ModelSource):
        raise ConfigError("[e2e] trains through a language model: the data must be kind = \"model\"")
    e2e = from_dict(E2EConfig, {"skip_positions": source.skip_positions, **rc.e2e}, where="e2e")
    return train_e2e(source.model, source.tokens, saes, rc.train, e2e, out_dir=out_dir, resume=resume)
