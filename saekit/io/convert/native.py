"""The saekit / SAELens layout, as saekit reads it: a folder holding cfg.json and sae_weights.safetensors.

    cfg.json                  SAELens's keys, plus a "saekit" block (registry name and full config)
                              when saekit wrote it
    sae_weights.safetensors   the SAE's state_dict
    provenance.json           optional: how the SAE was made

Folders written by saekit are rebuilt exactly from their saekit block; folders written by SAELens
(6.x, and earlier versions that kept ``hook_name`` / ``model_name`` at the top level) are rebuilt as the
saekit architecture their SAELens class means, refusing any setting saekit would not honour. The
writer is :mod:`saekit.io.artifact`, which also loads every other layout through
:mod:`saekit.io.convert`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saekit.devices import as_dtype, resolve_device
from saekit.errors import ArtifactError, ConfigError, UnknownArchitectureError
from saekit.io.convert.common import peek_json_keys, read_json_object, weight_problems
from saekit.sae import registry
from saekit.sae.base import SAE

LAYOUT = "saekit"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
PROVENANCE_FILE = "provenance.json"

# Folders written by SAELens itself carry only its class name. Several of our architectures share a
# SAELens class (BatchTopK is saved as "jumprelu"), so this maps each name to the one architecture
# that SAELens class means when it has no saekit block; read then checks apply_b_dec_to_input.
_SAEKIT_NAME_OF_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}


def is_sae_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a cfg.json and a weights file."""
    path = Path(path)
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def claims(path: Path) -> bool:
    """Whether ``path`` is in this layout. The weights file alone decides; a lone cfg.json counts when it
    has SAELens's keys, so that a folder missing its weights gets saekit's own "weights missing" message."""
    if not path.is_dir():
        return False
    return (path / WEIGHTS_FILE).is_file() or bool({"saekit", "d_sae", "architecture"} & peek_json_keys(path / CFG_FILE))


def old_path(folder: Path) -> Path:
    """Where an interrupted save (:func:`saekit.atomic.replace_folder`) leaves the previous folder."""
    return folder.with_name(f".{folder.name}.old")


def read(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> SAE:
    """The SAE saved in ``folder`` by saekit or by SAELens, with its weights, metadata and provenance."""
    folder = Path(folder)
    if not folder.is_dir():
        old = old_path(folder)
        hint = f"; an interrupted save left the previous version in {old}" if is_sae_folder(old) else ""
        raise ArtifactError(f"no SAE folder at {folder}: it {'is a file' if folder.exists() else 'does not exist'}{hint}")
    cfg_path = folder / CFG_FILE
    if not cfg_path.is_file():
        raise ArtifactError(f"{folder} is not an SAE folder: it has no {CFG_FILE}")
    cfg = read_json_object(cfg_path)
    # The SAE starts with its initial weights; they are replaced below.
    sae = _sae_from_saekit(cfg, cfg_path) if "saekit" in cfg else _sae_from_saelens(cfg, cfg_path)

    weights_path = folder / WEIGHTS_FILE
    state = _read_weights(weights_path)
    fresh = sae.state_dict()
    state = {key: value for key, value in fresh.items() if key in sae.training_state and key not in state} | state
    _check_state(sae, state, weights_path)
    sae.load_state_dict(state)
    sae.metadata = _metadata_from_cfg(cfg, cfg_path)
    provenance_path = folder / PROVENANCE_FILE
    sae.provenance = read_json_object(provenance_path) if provenance_path.is_file() else {}
    return sae.to(device=resolve_device(device), dtype=_dtype_of(cfg, cfg_path))


def _sae_from_saekit(cfg: dict[str, Any], cfg_path: Path) -> SAE:
    block = cfg["saekit"]
    if not isinstance(block, dict) or not isinstance(block.get("config"), dict):
        raise ArtifactError(f"{cfg_path}: the saekit block must hold an architecture name and a config table")
    return _build(str(block.get("architecture")), block["config"], cfg_path)


def _sae_from_saelens(cfg: dict[str, Any], cfg_path: Path) -> SAE:
    """Rebuild a folder written by SAELens, refusing any setting our architecture would not honour."""
    # SAELens before 6.0 wrote no architecture key for its standard SAE.
    saelens_name = cfg.get("architecture", "standard")
    name = _SAEKIT_NAME_OF_SAELENS.get(saelens_name)
    if name is None:
        raise ArtifactError(
            f"{cfg_path}: SAELens architecture {saelens_name!r} has no saekit equivalent "
            f"(supported: {', '.join(_SAEKIT_NAME_OF_SAELENS)})"
        )
    for key in ("normalize_activations", "reshape_activations"):
        if cfg.get(key, "none") not in ("none", None):
            raise ArtifactError(f"{cfg_path}: {key}={cfg[key]!r} is not supported; saekit loads only 'none'")
    cls = registry.get(name)
    flag = cfg.get("apply_b_dec_to_input", True)
    if flag != cls.apply_b_dec_to_input:
        raise ArtifactError(
            f"{cfg_path}: a SAELens {saelens_name!r} SAE with apply_b_dec_to_input={flag} is not saekit's "
            f"{name!r}, which uses apply_b_dec_to_input={cls.apply_b_dec_to_input}"
        )
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    sae = _build(name, {k: v for k, v in cfg.items() if k in fields}, cfg_path)
    # Keys such as topk's rescale_acts_by_decoder_norm change SAELens's encode: ours must agree.
    for key, ours in sae.extra_saelens_cfg().items():
        if key in cfg and cfg[key] != ours:
            raise ArtifactError(f"{cfg_path}: {key}={cfg[key]!r} is not supported by saekit's {name!r} (needs {ours!r})")
    return sae


def _build(name: str, config: dict[str, Any], cfg_path: Path) -> SAE:
    try:
        return registry.from_config(name, config)
    except UnknownArchitectureError as exc:
        raise UnknownArchitectureError(f"{cfg_path}: {exc}") from None
    except ConfigError as exc:
        raise ArtifactError(f"{cfg_path}: invalid config: {exc}") from exc


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: the SAE folder has a cfg.json but no weights")
    try:
        return load_file(path)
    except SafetensorError as exc:
        raise ArtifactError(f"{path} is truncated or corrupted: {exc}") from exc
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc


def _check_state(sae: SAE, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Name every missing, unexpected and mis-shaped tensor at once, instead of torch's first error."""
    expected = sae.state_dict()
    problems = []
    if missing := sorted(expected.keys() - state.keys()):
        problems.append(f"missing tensors {', '.join(missing)}")
    if unexpected := sorted(state.keys() - expected.keys()):
        problems.append(f"unexpected tensors {', '.join(unexpected)}")
    for key in sorted(expected.keys() & state.keys()):
        if state[key].shape != expected[key].shape:
            problems.append(f"{key} has shape {list(state[key].shape)} but the config needs {list(expected[key].shape)}")
    if problems:
        raise ArtifactError(f"{path} does not match the {sae.architecture} SAE of its cfg.json: {'; '.join(problems)}")
    if problems := weight_problems(state):
        raise ArtifactError(f"{path} holds unusable weights: {'; '.join(problems)}")


def _dtype_of(cfg: dict[str, Any], cfg_path: Path) -> torch.dtype:
    try:
        return as_dtype(str(cfg.get("dtype", "float32")).removeprefix("torch."))
    except ConfigError:
        raise ArtifactError(f"{cfg_path}: dtype {cfg.get('dtype')!r} is not a floating-point torch dtype") from None


def _metadata_from_cfg(cfg: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    meta = cfg.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ArtifactError(f"{cfg_path}: metadata must be a JSON object, found {type(meta).__name__}")
    meta = dict(meta)
    # SAELens before 6.0 kept hook_name and model_name at the top level.
    site = meta.pop("hook_name", None) or cfg.get("hook_name")
    model = meta.pop("model_name", None) or cfg.get("model_name")
    return meta | ({"site": site} if site is not None else {}) | ({"model": model} if model is not None else {})
