"""Readers for SAEs saved by other libraries, one file per layout; this module recognises the layout.

    saekit / SAELens      cfg.json + sae_weights.safetensors          (native.py; written by saekit.io.artifact)
    gemma_scope           params.npz                                  (gemmascope.py)
    sparsify              cfg.json + sae.safetensors                  (sparsify.py)
    dictionary_learning   ae.pt + config.json                         (dictionary_learning.py)

A path that is none of these but has such folders below it (a sparsify checkpoint with one folder per
hookpoint, a dictionary_learning sweep of ``trainer_N`` folders, a Gemma Scope tree of
``layer_*/width_*/average_l0_*``, a saekit suite) holds several SAEs, named by their path inside it.

    layout = detect_layout("gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")   # "gemma_scope"
    saes = read_any("checkpoints/run")     # {"layers.3": SAE, "layers.9": SAE, ...}

Every SAE read here records its origin in ``sae.metadata["converted_from"]`` (layout and path) and in
``sae.provenance`` (with the original config).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from saekit.devices import resolve_device
from saekit.errors import ArtifactError
from saekit.io import hub
from saekit.io.convert import dictionary_learning, gemmascope, native, sparsify
from saekit.sae.base import SAE

SAEKIT = native.LAYOUT
MAX_DEPTH = 4
"""How deep below the given folder SAE folders are looked for (Gemma Scope's hub tree is 3 deep)."""


class Layout(NamedTuple):
    """A layout: how to recognise one of its folders and how to read it."""

    name: str
    claims: Callable[[Path], bool]
    read: Callable[[Path], SAE]
    files: str
    """What its folder holds, for messages."""


LAYOUTS: tuple[Layout, ...] = (
    Layout(SAEKIT, native.claims, native.read, f"{native.CFG_FILE} + {native.WEIGHTS_FILE}"),
    Layout(gemmascope.LAYOUT, gemmascope.claims, gemmascope.read, gemmascope.PARAMS_FILE),
    Layout(sparsify.LAYOUT, sparsify.claims, sparsify.read, f"{sparsify.CFG_FILE} + {sparsify.WEIGHTS_FILE}"),
    Layout(
        dictionary_learning.LAYOUT,
        dictionary_learning.claims,
        dictionary_learning.read,
        f"{dictionary_learning.WEIGHTS_FILE} + {dictionary_learning.CONFIG_FILE}",
    ),
)
"""In order of precedence: saekit / SAELens first."""


class FoundSAE(NamedTuple):
    """One SAE found at or below a path."""

    name: str
    """Its path relative to the searched folder, '/'-separated ("" for the folder itself)."""
    path: Path
    layout: str


def layout_of(path: str | os.PathLike[str]) -> str | None:
    """The layout of ``path`` itself (one SAE), or None; looks at no subfolder."""
    path = Path(path)
    return next((layout.name for layout in LAYOUTS if layout.claims(path)), None)


def find_saes(path: str | os.PathLike[str]) -> list[FoundSAE]:
    """Every SAE at ``path`` or below it (up to MAX_DEPTH folders down), in natural order of names.

    Raises an ArtifactError naming the path and what it holds when there is none.
    """
    root = Path(path)
    if not root.exists():
        raise ArtifactError(f"no SAE at {root}: it does not exist")
    if name := layout_of(root):
        return [FoundSAE("", root, name)]
    found: list[FoundSAE] = []
    if root.is_dir():
        _walk(root, root, 1, found)
    if not found:
        raise ArtifactError(_nothing_found(root))
    return sorted(found, key=lambda f: _natural_key(f.name))


def detect_layout(path: str | os.PathLike[str]) -> str:
    """The layout of the SAE(s) at ``path``: one of the LAYOUTS names, or "mixed" when the SAEs found
    below it are in different layouts."""
    names = {f.layout for f in find_saes(path)}
    return names.pop() if len(names) == 1 else "mixed"


def read_any(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> dict[str, SAE]:
    """Every SAE at or below ``path``, by name ("" when ``path`` is itself one SAE); ``path`` may be a
    Hub reference (``hf://owner/repo[/folder][@revision]``, saekit.io.hub)."""
    device = resolve_device(device)
    return {found.name: _read(found).to(device) for found in find_saes(hub.local_path(path))}


def read_one(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> SAE:
    """The SAE at ``path`` itself; a folder with SAEs only below it is an error that lists them."""
    found = find_saes(path)
    if found[0].name:
        names = ", ".join(f.name for f in found[:8]) + (", ..." if len(found) > 8 else "")
        raise ArtifactError(
            f"{path} is not itself an SAE folder but holds {len(found)} below it ({names}): load one of "
            "those, read them all with saekit.io.convert.read_any, or write them as a suite with `saekit convert`"
        )
    return _read(found[0]).to(resolve_device(device))


def _read(found: FoundSAE) -> SAE:
    return next(layout.read for layout in LAYOUTS if layout.name == found.layout)(found.path)


def _walk(root: Path, folder: Path, depth: int, found: list[FoundSAE]) -> None:
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise ArtifactError(f"cannot list {folder}: {exc}") from exc
    for child in children:
        if name := layout_of(child):
            found.append(FoundSAE(child.relative_to(root).as_posix(), child, name))
        elif depth < MAX_DEPTH:
            _walk(root, child, depth + 1, found)


def _nothing_found(root: Path) -> str:
    known = "; ".join(f"{layout.name} ({layout.files})" for layout in LAYOUTS)
    if not root.is_dir():
        return f"no SAE at {root}: it is a file of no known layout. Layouts saekit reads: {known}"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(entries[:12]) + (f", ... ({len(entries)} entries)" if len(entries) > 12 else "")
    what = f"it holds {shown}" if entries else "it is empty"
    return f"no SAE found at {root} nor in its subfolders: {what}. Layouts saekit reads: {known}"


def _natural_key(name: str) -> list[int | str]:
    # "layers.10" after "layers.9", as sparsify's own natsort orders hookpoints.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


__all__ = ["LAYOUTS", "FoundSAE", "detect_layout", "find_saes", "layout_of", "read_any", "read_one"]
