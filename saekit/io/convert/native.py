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
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from saekit.bounded import file_problem
from saekit.devices import as_dtype, resolve_device
from saekit.errors import ArtifactError, ConfigError, UnknownArchitectureError
from saekit.io.convert.common import peek_json_keys, read_json_object, weight_problems
from saekit.sae import registry
from saekit.sae.base import SAE
from saekit.tensorfile import load_safetensors, safetensors_header

LAYOUT = "saekit"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
PROVENANCE_FILE = "provenance.json"

# Folders written by SAELens itself carry only its class name. Several of our architectures share a
# SAELens class (BatchTopK is saved as "jumprelu"), so this maps each name to the one architecture
# that SAELens class means when it has no saekit block; read then checks apply_b_dec_to_input.
_SAEKIT_NAME_OF_SAELENS = {
    "standard": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "gated": "gated",
    "transcoder": "relu_transcoder",
    "skip_transcoder": "relu_transcoder",
    "jumprelu_transcoder": "jumprelu_transcoder",
    "jumprelu_skip_transcoder": "jumprelu_transcoder",
}
_SAELENS_SKIP = frozenset({"skip_transcoder", "jumprelu_skip_transcoder"})
"""SAELens classes with a skip connection: saekit's transcoder of the same rule with ``skip = true``."""


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
    """The SAE saved in ``folder`` by saekit or by SAELens, with its weights, metadata and provenance.

    Nothing is allocated before the weights file's header matches the SAE its cfg.json describes (the
    SAE is first built on the meta device), so a cfg.json or header declaring huge shapes costs nothing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        old = old_path(folder)
        hint = f"; an interrupted save left the previous version in {old}" if is_sae_folder(old) else ""
        raise ArtifactError(f"no SAE folder at {folder}: it {'is a file' if folder.exists() else 'does not exist'}{hint}")
    cfg_path = folder / CFG_FILE
    if file_problem(cfg_path) == "does not exist":
        raise ArtifactError(f"{folder} is not an SAE folder: it has no {CFG_FILE}")
    cfg = read_json_object(cfg_path)
    name, config = _saekit_block(cfg, cfg_path) if "saekit" in cfg else _saelens_config(cfg, cfg_path)
    with torch.device("meta"):
        shaped = _build(name, config, cfg_path)
    if "saekit" in cfg:
        _check_saelens_keys(cfg, shaped, cfg_path)
    else:
        _check_saelens_extras(cfg, shaped, cfg_path)
    dtype = _dtype_of(cfg, cfg_path)

    weights_path = folder / WEIGHTS_FILE
    if file_problem(weights_path) == "does not exist":
        raise ArtifactError(f"{weights_path} is missing: the SAE folder has a cfg.json but no weights")
    header = safetensors_header(weights_path, ArtifactError)
    _check_shapes(shaped, {key: h.shape for key, h in header.items()}, weights_path)
    state = load_safetensors(weights_path, ArtifactError)
    if problems := weight_problems(state):
        raise ArtifactError(f"{weights_path} holds unusable weights: {'; '.join(problems)}")
    stored = str(state["W_enc"].dtype).removeprefix("torch.")
    if "saekit" in cfg and "dtype" in cfg and stored != str(dtype).removeprefix("torch."):
        raise ArtifactError(f"{cfg_path}: dtype is {cfg['dtype']!r} but {WEIGHTS_FILE} stores W_enc as {stored}; saekit writes them alike")

    sae = _build(name, config, cfg_path)  # the SAE starts with its initial weights; they are replaced below
    sae.load_state_dict({key: value for key, value in sae.state_dict().items() if key not in state} | state)
    sae.metadata = _metadata_from_cfg(cfg, cfg_path)
    _check_several(sae, cfg_path)
    provenance_path = folder / PROVENANCE_FILE
    present = provenance_path.exists() or provenance_path.is_symlink()
    sae.provenance = read_json_object(provenance_path) if present else {}
    return sae.to(device=resolve_device(device), dtype=dtype)


def saelens_cfg(sae: SAE) -> dict[str, Any]:
    """The cfg.json keys SAELens builds ``sae``'s inference class from: the writer writes them, and the
    reader checks a saekit folder's against its saekit block."""
    return {
        "architecture": sae.saelens_name(),
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **sae.extra_saelens_cfg(),
    }


def _saekit_block(cfg: dict[str, Any], cfg_path: Path) -> tuple[str, dict[str, Any]]:
    block = cfg["saekit"]
    if not isinstance(block, dict) or not isinstance(block.get("architecture"), str) or not isinstance(block.get("config"), dict):
        raise ArtifactError(f"{cfg_path}: the saekit block must hold an architecture name and a config table")
    return block["architecture"], block["config"]


def _check_saelens_keys(cfg: dict[str, Any], sae: SAE, cfg_path: Path) -> None:
    """The SAELens keys beside a saekit block must describe the SAE the block does, or SAELens would
    load another SAE from the same folder. (dtype is checked against the weights file; device is
    where SAELens puts it, not what it computes.)"""
    for key, ours in saelens_cfg(sae).items():
        if key in ("dtype", "device") or key not in cfg:
            continue
        if cfg[key] != ours or type(cfg[key]) is not type(ours):
            raise ArtifactError(
                f"{cfg_path}: {key} is {cfg[key]!r} for SAELens but the saekit block's {sae.architecture} SAE has "
                f"{key}={ours!r}; the folder would load as two different SAEs"
            )


def _saelens_config(cfg: dict[str, Any], cfg_path: Path) -> tuple[str, dict[str, Any]]:
    """The saekit architecture and config of a folder written by SAELens, refusing any setting our
    architecture would not honour."""
    # SAELens before 6.0 wrote no architecture key for its standard SAE.
    saelens_name = cfg.get("architecture", "standard")
    name = _SAEKIT_NAME_OF_SAELENS.get(saelens_name) if isinstance(saelens_name, str) else None
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
    if flag is not cls.apply_b_dec_to_input:
        raise ArtifactError(
            f"{cfg_path}: a SAELens {saelens_name!r} SAE with apply_b_dec_to_input={flag!r} is not saekit's "
            f"{name!r}, which uses apply_b_dec_to_input={cls.apply_b_dec_to_input}"
        )
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    config = {k: v for k, v in cfg.items() if k in fields}
    return name, config | ({"skip": True} if saelens_name in _SAELENS_SKIP else {})


def _check_saelens_extras(cfg: dict[str, Any], sae: SAE, cfg_path: Path) -> None:
    # Keys such as topk's rescale_acts_by_decoder_norm change SAELens's encode: ours must agree.
    for key, ours in sae.extra_saelens_cfg().items():
        if key in cfg and cfg[key] != ours:
            raise ArtifactError(f"{cfg_path}: {key}={cfg[key]!r} is not supported by saekit's {sae.architecture!r} (needs {ours!r})")


def _build(name: str, config: dict[str, Any], cfg_path: Path) -> SAE:
    try:
        return registry.from_config(name, config)
    except UnknownArchitectureError as exc:
        raise UnknownArchitectureError(f"{cfg_path}: {exc}") from None
    except ConfigError as exc:
        raise ArtifactError(f"{cfg_path}: invalid config: {exc}") from exc


def _check_shapes(sae: SAE, shapes: Mapping[str, tuple[int, ...]], path: Path) -> None:
    """Name every missing, unexpected and mis-shaped tensor at once, instead of torch's first error.
    Training-state buffers may be absent (a loaded SAE starts them afresh)."""
    expected = {key: tuple(t.shape) for key, t in sae.state_dict().items()}
    problems = []
    if missing := sorted(expected.keys() - shapes.keys() - set(sae.training_state)):
        problems.append(f"missing tensors {', '.join(missing)}")
    if unexpected := sorted(shapes.keys() - expected.keys()):
        problems.append(f"unexpected tensors {', '.join(unexpected)}")
    for key in sorted(expected.keys() & shapes.keys()):
        if shapes[key] != expected[key]:
            problems.append(f"{key} has shape {list(shapes[key])} but the config needs {list(expected[key])}")
    if problems:
        raise ArtifactError(f"{path} does not match the {sae.architecture} SAE of its cfg.json: {'; '.join(problems)}")


def _dtype_of(cfg: dict[str, Any], cfg_path: Path) -> torch.dtype:
    try:
        return as_dtype(cfg.get("dtype", "float32"))
    except ConfigError as exc:
        raise ArtifactError(f"{cfg_path}: {exc}") from None


def _metadata_from_cfg(cfg: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    meta = cfg.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ArtifactError(f"{cfg_path}: metadata must be a JSON object, found {type(meta).__name__}")
    meta = dict(meta)
    # SAELens before 6.0 kept hook_name and model_name at the top level.
    site = meta.pop("hook_name", None) or cfg.get("hook_name")
    model = meta.pop("model_name", None) or cfg.get("model_name")
    site_out = meta.pop("hook_name_out", None) or cfg.get("hook_name_out")  # a transcoder's output site
    for key, value in (("hook_name", site), ("model_name", model), ("hook_name_out", site_out)):
        if value is not None and not isinstance(value, str):
            raise ArtifactError(f"{cfg_path}: {key} must be a string, found {value!r}")
    several = {key: _several_sites(meta, cfg_path, *names) for key, names in _SEVERAL.items()}
    named = {"site": site, "model": model, "site_out": site_out, **several}
    return meta | {key: value for key, value in named.items() if value is not None}


_SEVERAL = {
    "sites": ("hook_names", "normalization_factors"),
    "sites_out": ("hook_names_out", "normalization_factors_out"),
}
"""An SAE over several sites: metadata key -> (cfg.json key of its sites, key of their factors)."""


def _check_several(sae: SAE, cfg_path: Path) -> None:
    """An SAE over several sites has a block per site: its widths divide by their counts, and only a
    transcoder names output sites (several, when it reads several)."""
    if "sites_out" in sae.metadata and not sae.transcoder:
        raise ArtifactError(f"{cfg_path}: metadata.hook_names_out names output sites, but a {sae.architecture} SAE reconstructs what it reads")
    if sae.transcoder and sae.crosscoder and len(sae.sites_out) < 2:
        raise ArtifactError(f"{cfg_path}: a {sae.architecture} transcoder reading several sites (hook_names) writes several (hook_names_out)")
    for sites, width, key in ((sae.sites, sae.d_in, "hook_names"), (sae.sites_out, sae.d_out, "hook_names_out")):
        if len(sites) > 1 and width % len(sites):
            raise ArtifactError(
                f"{cfg_path}: metadata.{key} names {len(sites)} sites, but the SAE's width ({width}) is its sites' equal widths side by side"
            )


def _several_sites(meta: dict[str, Any], cfg_path: Path, key: str, factors_key: str) -> list[str] | None:
    """The sites of an SAE over several (``metadata.hook_names``: a crosscoder's, or a cross-layer
    transcoder's input sites; ``hook_names_out`` its output sites) and their normalisation factors (one
    per site), checked; None where the folder names none."""
    sites, factors = meta.pop(key, None), meta.get(factors_key)
    if sites is None:
        if factors is not None:
            raise ArtifactError(f"{cfg_path}: metadata.{factors_key} belongs to an SAE over several sites, but there are no {key}")
        return None
    if not isinstance(sites, list) or len(sites) < 2 or not all(isinstance(s, str) and s for s in sites) or len(set(sites)) != len(sites):
        raise ArtifactError(f"{cfg_path}: metadata.{key} must list two or more distinct site names, found {sites!r}")
    if factors is not None and (
        not isinstance(factors, list) or len(factors) != len(sites)
        or not all(isinstance(f, int | float) and not isinstance(f, bool) and math.isfinite(f) and f > 0 for f in factors)
    ):  # fmt: skip
        raise ArtifactError(f"{cfg_path}: metadata.{factors_key} must be {len(sites)} positive numbers, one per site of {key}, found {factors!r}")
    return sites
