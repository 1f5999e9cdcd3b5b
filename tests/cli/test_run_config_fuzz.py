"""Property: whatever a run config file holds (random mappings written as TOML, JSON or YAML, random
bytes, random --set overrides), reading and parsing it either succeeds or raises a saekit error."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saekit.cli.run_config import apply_overrides, build_saes, parse_run_config, read_config_file
from saekit.errors import SaekitError
from saekit.sources.tensor import as_source

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = ["out", "data", "train", "sae", "objective", "e2e", "kind", "d", "steps", "tokens", "batch_size", "seed",
        "device", "dtype", "architecture", "d_sae", "k", "name", "site", "init_from", "d_in", "members", "lr", ""]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["topk", "relu", "synthetic", "cpu", "tpu", "cuda:99", "float8_e4m3fn", "../x", "nan", "1e400"]),
)
PLAIN = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5),
    max_leaves=25,
)
# Mostly-valid configs, so that parsing gets past the first check and deeper keys are exercised.
CONFIGS = st.fixed_dictionaries(
    {
        "data": st.fixed_dictionaries({"kind": st.just("synthetic"), "d": st.integers(1, 8)}) | PLAIN,
        "train": st.dictionaries(st.sampled_from(["steps", "batch_size", "seed", "device", "dtype", "grad_clip", "lr_decay_fraction"]), SCALARS, max_size=4)
        .map(lambda t: {"steps": 1} | t),
        "sae": st.lists(
            st.dictionaries(st.sampled_from(KEYS), SCALARS, max_size=5).map(lambda t: {"architecture": "topk", "d_sae": 8, "k": 2} | t),
            min_size=1,
            max_size=2,
        ),
    },
    optional={"out": SCALARS, "objective": PLAIN, "e2e": PLAIN},
)
OVERRIDES = st.lists(
    st.builds(lambda path, value: f"{'.'.join(path)}={value}", st.lists(st.sampled_from(KEYS + ["0", "1", "x"]), max_size=4), st.text(max_size=10)),
    max_size=3,
)
SOURCE = as_source(__import__("torch").randn(32, 4))


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value if v is not None) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items() if v is not None) + "}"


def write(folder: Path, suffix: str, data: Any) -> Path:
    path = folder / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    elif suffix == ".yaml":
        path.write_text(yaml.safe_dump(data))
    else:  # TOML's top level is always a table
        table = data if isinstance(data, dict) else {"out": data}
        path.write_text("\n".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items() if v is not None))
    return path


def read_parse_build(path: Path, overrides: list[str]) -> None:
    try:
        rc = parse_run_config(apply_overrides(read_config_file(path), overrides))
        build_saes(rc.saes, SOURCE)
    except SaekitError:
        pass


@FUZZ
@given(data=CONFIGS | PLAIN, suffix=st.sampled_from([".json", ".yaml", ".toml"]), overrides=OVERRIDES)
def test_random_configs_only_raise_saekit_errors(data, suffix, overrides):
    with tempfile.TemporaryDirectory() as folder:
        read_parse_build(write(Path(folder), suffix, data), overrides)


@FUZZ
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".json", ".yaml", ".yml", ".toml", ".txt"]))
def test_random_bytes_only_raise_saekit_errors(raw, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"run{suffix}"
        path.write_bytes(raw)
        read_parse_build(path, [])
