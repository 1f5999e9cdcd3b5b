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
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch

from saekit.bounded import decode_utf8, file_problem, parse_json, parse_toml, parse_yaml, read_bytes
from saekit.cli.sae_sites import sites_out, sites_read
from saekit.devices import resolve_device
from saekit.errors import ConfigError, SaekitError
from saekit.io.artifact import check_suite_name
from saekit.sae.base import SAE
from saekit.sae.registry import build
from saekit.strict import from_dict
from saekit.training.config import TrainConfig
from saekit.types import ActivationSource

T = TypeVar("T")

TOP_LEVEL_KEYS = ("out", "data", "train", "sae", "objective", "e2e")
SAE_SPEC_KEYS = ("architecture", "name", "site", "site_out", "sites", "sites_out", "seed", "d_in", "init_from")
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


MAX_CONFIG_BYTES = 1 << 20
"""Largest run config read: a config is a few hundred bytes, and a larger one is refused by its size."""
_PARSERS = {".toml": parse_toml, ".yaml": parse_yaml, ".yml": parse_yaml, ".json": parse_json}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a .toml, .yaml or .json run config, as plain data (saekit.bounded's rules)."""
    path = Path(path)
    parse = _PARSERS.get(path.suffix)
    if parse is None:
        problem = file_problem(path)
        raise ConfigError(f"config file {path} {problem}" if problem else f"config file {path}: use a .toml, .yaml or .json file")
    where = f"config file {path}"
    data = parse(decode_utf8(read_bytes(path, MAX_CONFIG_BYTES, ConfigError, "config file"), where, ConfigError), where, ConfigError)
    if data is None and parse is parse_yaml:  # an empty YAML file
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings at the top level")
    return data


class LoadedRunConfig(NamedTuple):
    raw: dict[str, Any]
    """The settings as read, overrides applied (what ``config.json`` records)."""
    config: RunConfig


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> LoadedRunConfig:
    """Read, override and check a run config file; every error names the file (and the key)."""
    raw = apply_overrides(read_config_file(path), overrides or [])
    try:
        return LoadedRunConfig(raw, parse_run_config(raw))
    except ConfigError as exc:
        with_overrides = " with its --set overrides" if overrides else ""
        raise ConfigError(f"config file {path}{with_overrides}: {exc}") from exc


def parse_with_models_table(raw: dict[str, Any], key: str, cls: type[T], hint: str, kinds: tuple[str, ...]) -> tuple[T, RunConfig]:
    """A run config with one more table, ``[key]`` (a ``cls``), for a driver that supplies the models
    itself (``saekit track``: the checkpoints; ``saekit games study``: the trained and random models).
    So [data] must be one of ``kinds`` and name no model. ``hint`` says what the table holds."""
    rest = dict(raw)
    table = rest.pop(key, None)
    if not isinstance(table, dict):
        raise ConfigError(f"this config needs a [{key}] table ({hint})")
    settings = from_dict(cls, table, where=key)
    run = parse_run_config(rest)
    kind = run.data.get("kind")
    if kind not in kinds:
        raise ConfigError(f"data: the [{key}] table supplies the models, so 'kind' must be one of {', '.join(kinds)}, got {kind!r}")
    if "model" in run.data:
        raise ConfigError(f"data.model: the [{key}] table names the models; remove 'model' from [data]")
    return settings, run


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings; ``sae.0.k=16`` indexes the list of SAEs, values are YAML scalars
    (or flow lists and mappings). A path through a value that is not a table or list is refused."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw_value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.steps=1000")
        value = parse_yaml(raw_value, f"--set {item!r}: the value", ConfigError) if raw_value.strip() else ""
        node: Any = data
        for depth, part in enumerate(parts):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if depth == len(parts) - 1:
                    raise ConfigError(f"--set {item!r}: {'.'.join(parts[:depth])} is a list; name a field of one entry, e.g. sae.0.k=16")
                node = _list_item(node, part, where)
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:depth])} is {node!r}, not a table; {where} cannot be set")
            elif depth == len(parts) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return data


def _list_item(items: list, index: str, where: str) -> Any:
    if not index.isdigit() or int(index) >= len(items):
        raise ConfigError(f"--set: {where} does not exist (there are {len(items)} entries)")
    return items[int(index)]


def parse_run_config(data: dict[str, Any]) -> RunConfig:
    """A run config from plain data; every [[sae]] table's own keys (SAESpec) and the training device
    are checked here, before any data source is opened. Architecture hyper-parameters are checked
    when the SAEs are built, as they need the data's width."""
    unknown = sorted(map(repr, set(data) - set(TOP_LEVEL_KEYS)))
    if unknown:
        raise ConfigError(f"unknown top-level key {', '.join(unknown)}; valid keys are {', '.join(TOP_LEVEL_KEYS)}")
    for key in ("data", "train", "sae"):
        if key not in data:
            raise ConfigError(f"the config has no {key!r} section")
    if not isinstance(data["data"], dict):
        raise ConfigError(f"'data' must be a table of data settings ([data] in TOML), got {data['data']!r}")
    out = data.get("out", "runs/latest")
    if not isinstance(out, str) or not out:
        raise ConfigError(f"'out' must be the path of the output folder, got {out!r}")
    saes = data["sae"]
    if isinstance(saes, dict):
        saes = [saes]
    if not isinstance(saes, list) or not saes or not all(isinstance(s, dict) for s in saes):
        raise ConfigError("'sae' must be one or more tables ([[sae]] in TOML, a list in YAML)")
    for i, table in enumerate(saes):
        sae_spec(i, table)
    objectives = data.get("objective", [])
    objectives = [objectives] if isinstance(objectives, dict) else objectives
    if not isinstance(objectives, list) or not all(isinstance(o, dict) for o in objectives):
        raise ConfigError("'objective' must be one or more tables ([[objective]] in TOML)")
    e2e = data.get("e2e")
    if e2e is not None and not isinstance(e2e, dict):
        raise ConfigError("'e2e' must be a table of end-to-end settings ([e2e] in TOML)")
    train = from_dict(TrainConfig, data["train"], where="train")
    try:
        resolve_device(train.device)
    except ConfigError as exc:
        raise ConfigError(f"train.device: {exc}") from None
    return RunConfig(
        out=Path(out),
        data=dict(data["data"]),
        train=train,
        saes=[dict(s) for s in saes],
        raw=data,
        objectives=[dict(o) for o in objectives],
        e2e=None if e2e is None else dict(e2e),
    )


@dataclass(frozen=True)
class SAESpec:
    """The keys of an [[sae]] table that are not the architecture's hyper-parameters."""

    architecture: str
    """Registry name (`saekit ls`)."""
    name: str | None = None
    """Folder name of the SAE in the run's suite; default "{index:02d}-{architecture}"."""
    site: str | None = None
    """The data site it reads; default the data's only site."""
    site_out: str | None = None
    """For a transcoder (`saekit ls`: the *_transcoder architectures), the data site it reconstructs, e.g.
    "layers.3.mlp_out" beside site = "layers.3.mlp_in" (the data must read both); default the data's only
    site. Its d_out defaults to that site's width."""
    sites: tuple[str, ...] | None = None
    """A crosscoder's data sites (two or more, of one width), read side by side and all reconstructed,
    e.g. ["layers.2.resid_post", "layers.4.resid_post"], or one site of two models ("base/layers.3.resid_post",
    "chat/layers.3.resid_post" with [data] kind = "models"); any architecture that is not a transcoder.
    Instead of site; d_in defaults to their total width."""
    sites_out: tuple[str, ...] | None = None
    """A cross-layer transcoder's output sites (`saekit ls`: topk_clt), one per site it reads, e.g.
    ["layers.0.mlp_out", "layers.1.mlp_out"] beside sites = ["layers.0.mlp_in", "layers.1.mlp_in"];
    instead of site_out. Its d_out defaults to their total width."""
    seed: int | None = None
    """Seed of its initialisation; default its index in the list."""
    d_in: int | None = None
    """Input width; default the width of its site in the data (a crosscoder's: its sites' total)."""
    init_from: str | None = None
    """A saved SAE folder to start from (fine-tuning); its hyper-parameters come from the folder."""


def sae_spec(i: int, table: dict[str, Any]) -> SAESpec:
    """The SAESpec of the ``i``-th [[sae]] table, strictly checked (ConfigError naming ``sae.{i}.key``)."""
    if "architecture" not in table:
        raise ConfigError(f"sae.{i}: missing 'architecture'")
    if "d_sae" not in table and "init_from" not in table:
        raise ConfigError(f"sae.{i}: missing 'd_sae'")
    spec = from_dict(SAESpec, {k: v for k, v in table.items() if k in SAE_SPEC_KEYS}, where=f"sae.{i}")
    if spec.name is not None:
        try:
            check_suite_name(spec.name)
        except ValueError as exc:
            raise ConfigError(f"sae.{i}.name: {exc}") from None
    return spec


class BuiltSAEs(NamedTuple):
    saes: list[SAE]
    names: list[str]


def sae_name(i: int, spec: SAESpec) -> str:
    """The name of the ``i``-th SAE of a config: its ``name``, or ``<i>-<architecture>``."""
    return spec.name or f"{i:02d}-{spec.architecture}"


def build_saes(specs: list[dict[str, Any]], source: ActivationSource) -> BuiltSAEs:
    """SAEs from [[sae]] tables; ``d_in`` defaults to the width of the SAE's site in ``source``."""
    saes, names = [], []
    for i, table in enumerate(specs):
        spec = sae_spec(i, table)
        hparams = {k: v for k, v in table.items() if k not in SAE_SPEC_KEYS}
        sites = list(source.sites)
        seed = i if spec.seed is None else spec.seed
        written: tuple[str, ...] | None = None
        try:
            read = sites_read(spec, sites)
            d_in = sum(source.d_in(site) for site in read) if spec.d_in is None else spec.d_in
            written = sites_out(spec, sites)
            if written is not None and spec.init_from is None:
                hparams.setdefault("d_out", sum(source.d_in(site) for site in written))
            if spec.init_from is None:
                _check_fits_in_memory(spec.architecture, d_in, hparams)
                sae = build(spec.architecture, d_in=d_in, seed=seed, **hparams)
            else:
                sae = _load_start(spec.init_from, spec.architecture, hparams)
        except SaekitError as exc:  # a ConfigError, or an ArtifactError from init_from's folder
            raise type(exc)(f"sae.{i}: {exc}") from exc
        if len(read) == 1:
            sae.metadata["site"] = read[0] if spec.site is None else spec.site
        else:
            sae.metadata["sites"] = list(read)
        if written is not None and len(written) == 1:
            sae.metadata["site_out"] = written[0] if spec.site_out is None else spec.site_out
        elif written is not None:
            sae.metadata["sites_out"] = list(written)
        saes.append(sae)
        names.append(sae_name(i, spec))
    if len(set(names)) != len(names):
        raise ConfigError(f"SAE names must be unique, got {names}")
    return BuiltSAEs(saes, names)


def _check_fits_in_memory(architecture: str, d_in: int, hparams: dict[str, Any]) -> None:
    """Refuse an SAE whose tensors alone exceed this machine's memory (d_sae = 10^12 is 32 TB of
    float32), from a build on the meta device, instead of failing inside torch's allocator."""
    with torch.device("meta"):
        shaped = build(architecture, d_in=d_in, **hparams)
    need = sum(t.numel() * t.element_size() for t in shaped.state_dict().values())
    have = _physical_memory()
    if have is not None and need > have:
        raise ConfigError(f"a {architecture} SAE of d_in={d_in}, d_sae={shaped.d_sae} needs {need / 2**30:,.1f} GiB, more than this machine's {have / 2**30:,.1f} GiB")


def _physical_memory() -> int | None:
    """Bytes of RAM, where the platform says (POSIX); None elsewhere."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


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


def train_from_config(
    rc: RunConfig, saes: list[SAE], source: ActivationSource, *, out_dir: Path, resume: bool, start_files: Mapping[str, str] | None = None
) -> Any:
    """Train as the config says: the multi-SAE loop (with its group objectives), or end to end through
    the data's model when there is an [e2e] table. Returns a TrainResult; ``start_files`` as in
    :func:`saekit.training.engine.run`."""
    if rc.e2e is None:
        from saekit.training.engine import run
        from saekit.training.objective import LocalObjective

        objective = LocalObjective(build_objectives(rc.objectives, len(saes)))
        return run(saes, source, rc.train, objective=objective, out_dir=out_dir, resume=resume, start_files=start_files)
    from saekit.objectives.e2e import E2EConfig, train_e2e

    if rc.objectives:
        raise ConfigError("[e2e] and [[objective]] cannot be combined in one run")
    from saekit.sources.model import ModelSource

    if not isinstance(source, ModelSource):
        raise ConfigError("[e2e] trains through a language model: the data must be kind = \"model\"")
    e2e = from_dict(E2EConfig, {"skip_positions": source.skip_positions, **rc.e2e}, where="e2e")
    return train_e2e(source.model, source.tokens, saes, rc.train, e2e, out_dir=out_dir, resume=resume, start_files=start_files)
