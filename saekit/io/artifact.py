"""Saved SAEs: a folder that SAELens loads as it is, and that saekit reloads exactly.

    folder/
      cfg.json                  SAELens's keys (its architecture name, d_in, d_sae, dtype, flags,
                                metadata.hook_name / model_name; a transcoder's d_out and
                                metadata.hook_name_out) plus a "saekit" block with our
                                registry name and full config, which SAELens ignores
      sae_weights.safetensors   the SAE's state_dict, nothing else (never pickle)
      provenance.json           how the SAE was made, and by which saekit version

A suite is a folder of such folders plus ``index.json``.

Writes go to a temporary sibling folder that is renamed into place (:func:`saekit.atomic.replace_folder`),
so an interrupted save leaves either the previous folder or the new one complete (during the swap the
previous one waits in ``.<name>.old`` beside it). Reading a folder is :mod:`saekit.io.convert.native`'s
job, and :func:`load_sae` reads the other libraries' layouts through :mod:`saekit.io.convert`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from saekit.atomic import replace_folder
from saekit.errors import ArtifactError
from saekit.io import convert, hub
from saekit.io.convert import native
from saekit.io.convert.common import read_json_object
from saekit.io.convert.native import CFG_FILE, PROVENANCE_FILE, WEIGHTS_FILE, is_sae_folder
from saekit.sae.base import SAE
from saekit.strict import to_dict
from saekit.version import __version__

INDEX_FILE = "index.json"

SAELENS_FORMAT = "6.54.12"
"""The SAELens version whose folder layout this writes (and whose loader the layout was checked with).
Written as the top-level ``sae_lens_version``: without it SAELens treats cfg.json as pre-6.0 and
rebuilds ``metadata`` from top-level keys, losing ours."""

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
    Gemma Scope, sparsify and dictionary_learning folders are recognised and read too (saekit.io.convert),
    and ``folder`` may be a Hub reference, ``hf://owner/repo[/folder][@revision]`` (saekit.io.hub)."""
    folder = hub.local_path(folder)
    if folder.exists() and not is_sae_folder(folder) and convert.layout_of(folder) != convert.SAEKIT:
        return convert.read_one(folder, device=device)
    return native.read(folder, device=device)


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
            "saekit_version": __version__,
            "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def _cfg_of(sae: SAE) -> dict[str, Any]:
    meta = dict(sae.metadata)
    metadata = {"model_name": meta.pop("model", None), "hook_name": meta.pop("site", None), **meta}
    if "site_out" in meta:  # a transcoder's output site, under SAELens's name for it
        metadata["hook_name_out"] = metadata.pop("site_out")
    if "sites" in meta:  # an SAE's several sites, in the order of its input's blocks (and output's)
        metadata["hook_names"] = metadata.pop("sites")
    if "sites_out" in meta:
        metadata["hook_names_out"] = metadata.pop("sites_out")
    block: dict[str, Any] = {"architecture": sae.architecture, "config": to_dict(sae.cfg), "version": __version__}
    if "normalization_factor" in sae.metadata:
        # Already folded into the weights by training; kept so users can map back to raw activations.
        block["normalization_factor"] = sae.metadata["normalization_factor"]
    return {**native.saelens_cfg(sae), "sae_lens_version": SAELENS_FORMAT, "metadata": metadata, "saekit": block}


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
        check_suite_name(name)
    if len(set(names)) != len(names):
        raise ValueError(f"suite names must be unique, got {names}")

    def write(tmp: Path) -> None:
        for name, sae in zip(names, saes):
            (tmp / name).mkdir()
            _write_sae(sae, tmp / name, provenance)
        _write_json(tmp / INDEX_FILE, {"saekit_version": __version__, "saes": [_index_entry(n, s) for n, s in zip(names, saes)]})

    folder = Path(folder)
    _write_atomically(folder, write, lambda p: (p / INDEX_FILE).is_file(), "a suite folder")
    return folder


def load_suite(folder: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> dict[str, SAE]:
    """The SAEs of a suite folder (or of an ``hf://`` reference to one), by name, in the order of its index.json."""
    folder = hub.local_path(folder)
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise ArtifactError(f"{folder} is not a suite folder: it has no {INDEX_FILE}")
    entries = read_json_object(index_path).get("saes")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries):
        raise ArtifactError(f"{index_path}: 'saes' must be a list of entries with a name")
    suite = {}
    for entry in entries:
        try:
            check_suite_name(entry["name"])
        except ValueError as exc:
            raise ArtifactError(f"{index_path}: {exc}") from None
        suite[entry["name"]] = load_sae(folder / entry["name"], device=device)
    return suite


def _default_name(i: int, sae: SAE) -> str:
    return f"{i:02d}-{sae.architecture}-{re.sub(r'[^A-Za-z0-9._-]', '_', sae.site or 'default')}"


def check_suite_name(name: str) -> None:
    """Raise ValueError unless ``name`` can name an SAE folder inside a suite: a plain folder name that
    cannot reach outside the suite nor hide as a dot-file."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name):
        raise ValueError(f"suite name {name!r} must be letters, digits, '.', '_' or '-', not starting with '.'")


def _index_entry(name: str, sae: SAE) -> dict[str, Any]:
    return {
        "name": name,
        "architecture": sae.architecture,
        "site": sae.site,
        **({"site_out": sae.site_out, "d_out": sae.d_out} if sae.transcoder else {}),
        "model": sae.metadata.get("model"),
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "hparams": sae.hparams(),
    }


# ---------------------------------------------------------------------------------------------
# Writing folders


def _write_atomically(folder: Path, write: Callable[[Path], None], is_ours: Callable[[Path], bool], what: str) -> None:
    """Run ``write`` on a fresh sibling folder, then swap it in for ``folder`` (saekit.atomic), refusing
    to replace a folder that is neither ours nor empty."""
    folder = Path(os.path.abspath(folder))
    if folder.exists() and not (folder.is_dir() and (is_ours(folder) or not any(folder.iterdir()))):
        raise ArtifactError(f"refusing to overwrite {folder}: it exists and is not {what} (nor empty)")
    replace_folder(folder, write)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    try:
        text = json.dumps(data, indent=2, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"cannot write {path.name}: {exc}") from exc
    path.write_text(text + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    # Tensors and numpy scalars (e.g. a normalisation factor) become plain numbers or lists.
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON serialisable")
