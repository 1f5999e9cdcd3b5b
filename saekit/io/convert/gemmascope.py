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

The arrays are read with ``numpy.load(allow_pickle=False)``. Where the path shows the hub layout
(``gemma-scope-2b-pt-res/…/layer_20/…``), the site and model are filled in: ``res`` is
``layers.{L}.resid_post``, ``mlp`` is ``layers.{L}.mlp_out`` (after Gemma 2's post-MLP norm, as
saekit's site); ``att`` reads the concatenated heads before W_O, which is no saekit site.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit.errors import ArtifactError
from saekit.io.convert.common import assemble, check_shapes, dims_from
from saekit.sae.base import SAE

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
    arrays = _load_arrays(params)
    scaling = arrays.pop("scaling_factor", None)
    if scaling is not None and not np.all(scaling == 1):
        raise ArtifactError(f"{params}: a scaling_factor other than 1 (fine-tuned scaling) is not supported")
    if "W_enc" not in arrays:
        raise ArtifactError(f"{params} is not a valid Gemma Scope params.npz: no W_enc (found: {', '.join(arrays) or 'nothing'})")
    dims = dims_from(arrays["W_enc"].shape, SPEC["W_enc"], "W_enc", params)
    check_shapes({k: a.shape for k, a in arrays.items()}, SPEC, dims, params, "Gemma Scope params.npz")
    for key, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            raise ArtifactError(f"{params}: {key} has dtype {array.dtype}, expected floating point")
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


def _load_arrays(params: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(params, allow_pickle=False) as data:
            return {_RENAMES.get(str(k), str(k)): data[k] for k in data.files}
    except ValueError as exc:  # what numpy raises for object arrays when allow_pickle=False
        raise ArtifactError(f"{params} holds pickled objects, which saekit never loads: {exc}") from exc
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ArtifactError(f"{params} is truncated or not an .npz file: {exc}") from exc
    except OSError as exc:
        raise ArtifactError(f"cannot read {params}: {exc}") from exc


def _hub_facts(params: Path) -> dict[str, Any]:
    """Layer, width, L0 target and (for res / mlp releases) site and model, from the hub's path layout."""
    parts = params.resolve().parts
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
