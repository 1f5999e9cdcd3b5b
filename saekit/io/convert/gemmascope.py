"""Gemma Scope SAEs (Lieberum et al. 2024): a folder holding ``params.npz``, as published on the
Hugging Face hub under ``layer_{L}/width_{W}/average_l0_{X}/``, read as saekit ``jumprelu`` SAEs.

    params.npz   W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in], threshold [d_sae]

Gemma Scope's inference is

    pre = x W_enc + b_enc          (no b_dec subtraction)
    f   = 1[pre > θ] ⊙ ReLU(pre)
    x̂   = f W_dec + b_dec

which is saekit's JumpReLU (``pre ⊙ 1[pre > θ]``) wherever θ ≥ 0. A negative θ_i lets through exactly
what θ_i = 0 does (the ReLU removes the rest), so negative thresholds are stored as 0 and the codes
stay identical.

The arrays are read with :func:`saekit.tensorfile.read_npz`: names, shapes and dtypes from their
headers before anything is decompressed, and never a pickle. Where the path shows the hub layout
(``gemma-scope-2b-pt-res/…/layer_20/…``), the site and model are filled in: ``res`` is
``layers.{L}.resid_post``, ``mlp`` is ``layers.{L}.mlp_out`` (after Gemma 2's post-MLP norm, as
saekit's site); ``att`` reads the concatenated heads before W_O, which is no saekit site.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit.errors import ArtifactError
from saekit.io.convert.common import Dims, assemble, check_shapes, dims_from
from saekit.sae.base import SAE
from saekit.tensorfile import ArrayHeader, read_npz

LAYOUT = "gemma_scope"
PARAMS_FILE = "params.npz"

SPEC = {"W_enc": ("d_in", "d_sae"), "W_dec": ("d_sae", "d_in"), "b_enc": ("d_sae",), "b_dec": ("d_in",), "threshold": ("d_sae",)}
# Some releases spell the matrices in lower case (SAELens's loader renames them the same way).
_RENAMES: dict[str, str] = {"w_enc": "W_enc", "w_dec": "W_dec"}
_SITE_OF_KIND = {"res": "resid_post", "mlp": "mlp_out"}


def claims(path: Path) -> bool:
    """Whether ``path`` is a params.npz file or a folder holding one."""
    return (path.is_file() and path.name == PARAMS_FILE) or (path.is_dir() and (path / PARAMS_FILE).is_file())


def read(path: Path) -> SAE:
    """The JumpReLU SAE of a params.npz file, or of the folder that holds one."""
    params = path if path.is_file() else path / PARAMS_FILE
    arrays = read_npz(params, ArtifactError, lambda headers: _check_headers(headers, params))
    arrays = {_RENAMES.get(k, k): a for k, a in arrays.items()}
    scaling = arrays.pop("scaling_factor", None)
    if scaling is not None and not np.all(scaling == 1):
        raise ArtifactError(f"{params}: a scaling_factor other than 1 (fine-tuned scaling) is not supported")
    dims = Dims(arrays["W_enc"].shape[0], arrays["W_enc"].shape[1])
    weights = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in SPEC}
    negative = int((weights["threshold"] < 0).sum())
    weights["threshold"] = weights["threshold"].clamp(min=0)
    hub = _hub_facts(params)
    metadata = {k: hub.pop(k) for k in ("site", "model") if k in hub}
    notes = [f"{negative} negative thresholds stored as 0 (same codes)"] if negative else []
    return assemble(
        "jumprelu",
        dims,
        {},
        weights,
        layout=LAYOUT,
        source=params,
        metadata=metadata,
        provenance={"hub": hub, "notes": notes} if hub else {"notes": notes},
    )


def _check_headers(headers: dict[str, ArrayHeader], params: Path) -> None:
    """Names, shapes and dtypes of the arrays, checked from their headers before any is decompressed."""
    shapes = {_RENAMES.get(k, k): h.shape for k, h in headers.items()}
    if "W_enc" not in shapes:
        raise ArtifactError(f"{params} is not a valid Gemma Scope params.npz: no W_enc (found: {', '.join(shapes) or 'nothing'})")
    dims = dims_from(shapes["W_enc"], SPEC["W_enc"], "W_enc", params)
    scaling = shapes.pop("scaling_factor", None)
    if scaling not in (None, (), (dims.d_sae,)):
        raise ArtifactError(f"{params}: scaling_factor has shape {list(scaling)}, expected [] or [{dims.d_sae}]")
    check_shapes(shapes, SPEC, dims, params, "Gemma Scope params.npz")
    for key, header in headers.items():
        if not np.issubdtype(header.dtype, np.floating):
            raise ArtifactError(f"{params}: {key} has dtype {header.dtype}, expected floating point")


def _hub_facts(params: Path) -> dict[str, Any]:
    """Layer, width, L0 target and (for res / mlp releases) site and model, from the hub's path layout."""
    # The path as given, links not followed: in the Hugging Face cache the file is a link into blobs/.
    parts = Path(os.path.abspath(params)).parts
    facts: dict[str, Any] = {}
    for part in parts:
        if m := re.fullmatch(r"layer_(\d+)", part):
            facts["layer"] = int(m[1])
        elif m := re.fullmatch(r"width_(\w+)", part):
            facts["width"] = m[1]
        elif m := re.fullmatch(r"average_l0_(\d+)", part):
            facts["average_l0"] = int(m[1])
        # "gemma-scope-2b-pt-res" itself, or the HF cache's "models--google--gemma-scope-2b-pt-res".
        elif m := re.search(r"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att)\b", part):
            facts["release"] = m[0]
            size, variant, kind = m[1], m[2], m[3]
            facts["model"] = f"google/gemma-2-{size}" + ("-it" if variant == "it" else "")
            facts["kind"] = kind
    if "layer" in facts and facts.get("kind") in _SITE_OF_KIND:
        facts["site"] = f"layers.{facts['layer']}.{_SITE_OF_KIND[facts['kind']]}"
    return facts
