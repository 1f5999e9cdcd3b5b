"""Saved SAEs: a folder that SAELens loads as it is, and that saekit reloads exactly.

    folder/
      cfg.json                  SAELens's keys (its architecture name, d_in, d_sae, dtype, flags,
                                metadata.hook_name / model_name) plus a "saekit" block with our
                                registry name and full config, which SAELens ignores
      sae_weights.safetensors   the SAE's state_dict, nothing else (never pickle)
      provenance.json           how the SAE was made, and by which saekit version

A suite is a folder of such folders plus ``index.json``.

Writes go to a temporary sibling folder that is renamed into place, so an interrupted save leaves
either the previous folder or the new one complete (during the swap the previous one waits in
``.<name>.old`` beside it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import saekit
from saekit.errors import ArtifactError, ConfigError, UnknownArchitectureError
from saekit.sae import registry
from saekit.sae.base import SAE
from saekit.strict import to_dict

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
PROVENANCE_FILE = "provenance.json"
INDEX_FILE = "index.json"

SAELENS_FORMAT = "6.54.12"
"""The SAELens version whose folder layout this writes (and whose loader the layout was checked with).
Written as the top-level ``sae_lens_version``: without it SAELens treats cfg.json as pre-6.0 and
rebuilds ``metadata`` from top-level keys, losing ours."""

# Folders written by SAELens itself carry only its class name. Several of our architectures share a
# SAELens class (BatchTopK is saved as "jumprelu"), so this maps each name to the one architecture
# that SAELens class means when it has no saekit block; load_sae then checks apply_b_dec_to_input.
_SAEKIT_NAME_OF_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}


def is_sae_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a cfg.json and a weights file."""
    path = Path(path)
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


# ---------------------------------------------------------------------------------------------
# One SAE


def save_sae(sae: SAE, folder: str | os.PathLike[str], *, provenance: Mapping[str, Any] | None = None) -> Path:
    """Write ``sae`` to ``folder``, replacing an SAE folder already there; returns the folder.

    ``provenance`` is merged over ``sae.provenance`` into provenance.json. A non-empty folder that
    is not an SAE folder is never overwritten.
    """
    folder = Path(folder)
    _write_atomically(folder, lambda tmp: _write_sae(sae, tmp, provenance), is_sae_folder, "an SAE folder")
    return folder


def load_sae(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> SAE:
    """The SAE saved in ``folder`` (by saekit or by SAELens), with its weights, metadata and provenance.
    Gemma Scope, sparsify and dictionary_learning folders are recognised and read too (saekit.io.convert)."""
    folder = Path(folder)
    if folder.exists() and not is_sae_folder(folder):
        from saekit.io import convert  # imported here: it imports this module

        if convert.layout_of(folder) != convert.SAEKIT:
            return convert.read_one(folder, device=device)
    if not folder.is_dir():
        old = _old_path(folder)
        hint = f"; an interrupted save left the previous version in {old}" if is_sae_folder(old) else ""
        raise ArtifactError(f"no SAE folder at {folder}: it {'is a file' if folder.exists() else 'does not exist'}{hint}")
    cfg_path = folder / CFG_FILE
    if not cfg_path.is_file():
        raise ArtifactError(f"{folder} is not an SAE folder: it has no {CFG_FILE}")
    cfg = _read_json(cfg_path)
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
    sae.provenance = _read_json(provenance_path) if provenance_path.is_file() else {}
    return sae.to(device=device, dtype=_dtype_of(cfg, cfg_path))


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


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


def _dtype_of(cfg: dict[str, Any], cfg_path: Path) -> torch.dtype:
    name = str(cfg.get("dtype", "float32")).removeprefix("torch.")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArtifactError(f"{cfg_path}: dtype {cfg.get('dtype')!r} is not a floating-point torch dtype")
    return dtype


def _metadata_from_cfg(cfg: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    meta = cfg.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ArtifactError(f"{cfg_path}: metadata must be a JSON object, found {type(meta).__name__}")
    meta = dict(meta)
    # SAELens before 6.0 kept hook_name and model_name at the top level.
    site = meta.pop("hook_name", None) or cfg.get("hook_name")
    model = meta.pop("model_name", None) or cfg.get("model_name")
    return meta | ({"site": site} if site is not None else {}) | ({"model": model} if model is not None else {})


def _write_sae(sae: SAE, folder: Path, provenance: Mapping[str, Any] | None) -> None:
    _write_json(folder / CFG_FILE, _cfg_of(sae))
    tensors = {
        name: t.detach().to("cpu").contiguous() for name, t in sae.state_dict().items() if name not in sae.training_state
    }
    save_file(tensors, str(folder / WEIGHTS_FILE))
    _write_json(
        folder / PROVENANCE_FILE,
        {
            **sae.provenance,
            **(provenance or {}),
            "saekit_version": saekit.__version__,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


def _cfg_of(sae: SAE) -> dict[str, Any]:
    meta = dict(sae.metadata)
    metadata = {"model_name": meta.pop("model", None), "hook_name": meta.pop("site", None), **meta}
    block: dict[str, Any] = {"architecture": sae.architecture, "config": to_dict(sae.cfg), "version": saekit.__version__}
    if "normalization_factor" in sae.metadata:
        # Already folded into the weights by training; kept so users can map back to raw activations.
        block["normalization_factor"] = sae.metadata["normalization_factor"]
    return {
        "architecture": sae.saelens_architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "sae_lens_version": SAELENS_FORMAT,
        **sae.extra_saelens_cfg(),
        "metadata": metadata,
        "saekit": block,
    }


# ---------------------------------------------------------------------------------------------
# Suites


def save_suite(
    saes: Sequence[SAE] | Mapping[str, SAE],
    folder: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write several SAEs as one folder of SAE folders plus index.json; returns the folder.

    Names come from a mapping's keys, from ``names``, or default to ``"00-topk-layers.3.resid_post"``.
    """
    if isinstance(saes, Mapping):
        if names is not None:
            raise ValueError("give names either as the mapping's keys or as names=, not both")
        names, saes = list(saes.keys()), list(saes.values())
    names = list(names) if names is not None else [_default_name(i, sae) for i, sae in enumerate(saes)]
    if len(names) != len(saes):
        raise ValueError(f"got {len(names)} names for {len(saes)} SAEs")
    for name in names:
        _check_name(name)
    if len(set(names)) != len(names):
        raise ValueError(f"suite names must be unique, got {names}")

    def write(tmp: Path) -> None:
        for name, sae in zip(names, saes):
            (tmp / name).mkdir()
            _write_sae(sae, tmp / name, provenance)
        _write_json(tmp / INDEX_FILE, {"saekit_version": saekit.__version__, "saes": [_index_entry(n, s) for n, s in zip(names, saes)]})

    folder = Path(folder)
    _write_atomically(folder, write, lambda p: (p / INDEX_FILE).is_file(), "a suite folder")
    return folder


def load_suite(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> dict[str, SAE]:
    """The SAEs of a suite folder, by name, in the order of its index.json."""
    folder = Path(folder)
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise ArtifactError(f"{folder} is not a suite folder: it has no {INDEX_FILE}")
    entries = _read_json(index_path).get("saes")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries):
        raise ArtifactError(f"{index_path}: 'saes' must be a list of entries with a name")
    suite = {}
    for entry in entries:
        try:
            _check_name(entry["name"])
        except ValueError as exc:
            raise ArtifactError(f"{index_path}: {exc}") from None
        suite[entry["name"]] = load_sae(folder / entry["name"], device=device)
    return suite


def _default_name(i: int, sae: SAE) -> str:
    return f"{i:02d}-{sae.architecture}-{re.sub(r'[^A-Za-z0-9._-]', '_', sae.site or 'default')}"


def _check_name(name: str) -> None:
    # A name is a folder inside the suite: it must not reach outside it or hide as a dot-file.
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name):
        raise ValueError(f"suite name {name!r} must be letters, digits, '.', '_' or '-', not starting with '.'")


def _index_entry(name: str, sae: SAE) -> dict[str, Any]:
    return {
        "name": name,
        "architecture": sae.architecture,
        "site": sae.site,
        "model": sae.metadata.get("model"),
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "hparams": sae.hparams(),
    }


# ---------------------------------------------------------------------------------------------
# Atomic folder writes


def _old_path(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def _write_atomically(folder: Path, write: Callable[[Path], None], is_ours: Callable[[Path], bool], what: str) -> None:
    """Run ``write`` on a fresh sibling folder, then swap it in for ``folder``."""
    folder = Path(os.path.abspath(folder))  # "." or "x/.." have no name to build siblings from
    if folder.exists() and not (folder.is_dir() and (is_ours(folder) or not any(folder.iterdir()))):
        raise ArtifactError(f"refusing to overwrite {folder}: it exists and is not {what} (nor empty)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        write(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _old_path(folder)
    if old.exists():
        # Left by a save interrupted mid-swap; the complete new folder in ``tmp`` supersedes it.
        shutil.rmtree(old)
    had_old = folder.exists()
    if had_old:
        os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        if had_old:
            os.replace(old, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(folder.parent)
    if had_old:
        shutil.rmtree(old)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    try:
        text = json.dumps(data, indent=2, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"cannot write {path.name}: {exc}") from exc
    path.write_text(text + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    # Tensors and numpy scalars (e.g. a normalisation factor) become plain numbers or lists.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON serialisable")


def _fsync_tree(folder: Path) -> None:
    """Flush the written files to disk before the rename makes them visible as the real folder."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
