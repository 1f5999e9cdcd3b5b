"""Property: whatever a saved SAE folder holds (random changes to its cfg.json, random bytes in or over
its weights file), loading it either succeeds or raises a saekit error."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saekit.errors import SaekitError
from saekit.io import load_sae, save_sae
from saekit.sae import build

FUZZ = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
CFG_KEYS = ["architecture", "d_in", "d_sae", "k", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
            "reshape_activations", "rescale_acts_by_decoder_norm", "metadata", "saekit", "hook_name", "model_name"]  # fmt: skip
BLOCK_KEYS = ["architecture", "config", "version", "normalization_factor"]
CONFIG_KEYS = ["d_in", "d_sae", "k", "aux_k", "aux_coef", "lr", "warp"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**66), 2**66) | st.integers(-2, 40) | st.floats() | st.text(max_size=8)
    | st.sampled_from(["topk", "jumprelu", "standard", "float16", "float8_e5m2", "bfloat16", "none", "hook_z"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
# One edit: (which table, key, new value or None to delete it).
EDITS = st.lists(
    st.tuples(st.sampled_from(["top", "block", "config", "metadata"]), st.sampled_from(CFG_KEYS + BLOCK_KEYS + CONFIG_KEYS), st.none() | JSON),
    min_size=1,
    max_size=4,
)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    sae = build("topk", d_in=6, d_sae=12, k=3, seed=0)
    sae.metadata = {"site": "layers.0.resid_post", "model": "m"}
    return save_sae(sae, tmp_path_factory.mktemp("fuzz") / "sae")


def loads_or_names_the_problem(folder: Path) -> None:
    try:
        load_sae(folder)
    except SaekitError:
        pass


def apply_edits(cfg: dict[str, Any], edits: list[tuple[str, str, Any]]) -> None:
    for where, key, value in edits:
        table: Any = {"top": cfg, "block": cfg.get("saekit"), "metadata": cfg.get("metadata")}.get(where)
        if where == "config" and isinstance(cfg.get("saekit"), dict):
            table = cfg["saekit"].get("config")
        if not isinstance(table, dict):
            continue
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value


@FUZZ
@given(edits=EDITS)
def test_random_cfg_json_edits_only_raise_saekit_errors(template, edits):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(template, Path(tmp) / "sae"))
        cfg = json.loads((folder / "cfg.json").read_text())
        apply_edits(cfg, edits)
        (folder / "cfg.json").write_text(json.dumps(cfg))
        loads_or_names_the_problem(folder)


@FUZZ
@given(raw=st.binary(max_size=200), whole=st.booleans(), which=st.sampled_from(["cfg.json", "sae_weights.safetensors", "provenance.json"]))
def test_random_bytes_only_raise_saekit_errors(template, raw, whole, which):
    """Random bytes replace a file, or overwrite part of it (keeping most of its structure)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(template, Path(tmp) / "sae"))
        path = folder / which
        data = path.read_bytes()
        if whole:
            data = raw
        elif raw:
            at = int.from_bytes(raw[:2], "little") % len(data)
            data = data[:at] + raw[2:] + data[at + len(raw) - 2 :]
        path.write_bytes(data)
        loads_or_names_the_problem(folder)


HEADER_ENTRY = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "F8_E4M3", "I32", "BOOL", "F4", "X"]) | JSON,
        "shape": st.lists(st.integers(-1, 20) | st.just(10**12), max_size=3) | JSON,
        "data_offsets": st.lists(st.integers(-1, 2000) | st.just(2**64), min_size=2, max_size=2) | JSON,
    }
)


@FUZZ
@given(header=st.dictionaries(st.sampled_from(["W_enc", "W_dec", "b_enc", "b_dec", "extra", "__metadata__"]), HEADER_ENTRY | JSON, max_size=5), tail=st.integers(0, 2000))
def test_random_safetensors_headers_only_raise_saekit_errors(template, header, tail):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(template, Path(tmp) / "sae"))
        text = json.dumps(header).encode()
        (folder / "sae_weights.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + bytes(tail))
        loads_or_names_the_problem(folder)
