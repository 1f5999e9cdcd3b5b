"""EleutherAI sparsify SAEs: a folder per hookpoint holding ``cfg.json`` and ``sae.safetensors``, read
as saekit ``topk`` SAEs. (A sparsify training checkpoint is a folder of such folders, one per
hookpoint, or ``hookpoint/seed{N}`` with several seeds; the package reader walks into it.)

    cfg.json          SparseCoderConfig fields (activation, k, num_latents, expansion_factor,
                      normalize_decoder, multi_topk, skip_connection, transcode) plus d_in
    sae.safetensors   encoder.weight [d_sae, d_in], encoder.bias [d_sae], W_dec [d_sae, d_in],
                      b_dec [d_in], and W_skip [d_in, d_in] with a skip connection

sparsify's ``SparseCoder`` encodes ``TopK(ReLU((x − b_dec) encoder.weightᵀ + encoder.bias))`` and
decodes ``f W_dec + b_dec``: saekit's TopK with ``W_enc = encoder.weightᵀ``. The decoder is taken as
stored (its unit norm is a training constraint, not part of inference). Transcoders (no b_dec
subtraction, a different target), skip connections and the ``groupmax`` activation compute something
saekit's TopK does not, and are refused by name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from saekit.bounded import file_problem
from saekit.errors import ArtifactError
from saekit.io.convert.common import assemble, check_shapes, dims_from, peek_json_keys, read_json_object
from saekit.sae.base import SAE
from saekit.tensorfile import load_safetensors, safetensors_header

LAYOUT = "sparsify"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"

SPEC = {"encoder.weight": ("d_sae", "d_in"), "encoder.bias": ("d_sae",), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)}
# cfg.json keys only sparsify writes: they tell its folder from a SAELens one when the weights are missing.
_SIGNATURE = {"expansion_factor", "num_latents"}


def claims(path: Path) -> bool:
    """Whether ``path`` is a sparsify hookpoint folder (possibly with a file missing)."""
    return path.is_dir() and ((path / WEIGHTS_FILE).is_file() or bool(_SIGNATURE & peek_json_keys(path / CFG_FILE)))


def read(path: Path) -> SAE:
    """The TopK SAE of one sparsify hookpoint folder."""
    cfg_path, weights_path = path / CFG_FILE, path / WEIGHTS_FILE
    for needed in (cfg_path, weights_path):
        if file_problem(needed) == "does not exist":
            raise ArtifactError(f"{path} looks like a sparsify folder but has no {needed.name} (sparsify writes {CFG_FILE} and {WEIGHTS_FILE})")
    cfg = read_json_object(cfg_path)
    _refuse_unsupported(cfg, cfg_path)
    header = safetensors_header(weights_path, ArtifactError)
    if "W_skip" in header:
        raise ArtifactError(f"{weights_path} holds W_skip: a skip connection, which saekit's topk does not have")
    if "encoder.weight" not in header:
        raise ArtifactError(f"{weights_path} is not a sparsify SAE: no encoder.weight (found: {', '.join(header) or 'nothing'})")
    dims = dims_from(header["encoder.weight"].shape, SPEC["encoder.weight"], "encoder.weight", weights_path)
    check_shapes({k: h.shape for k, h in header.items()}, SPEC, dims, weights_path, "sparsify sae.safetensors")
    if "d_in" in cfg and cfg["d_in"] != dims.d_in:
        raise ArtifactError(f"{cfg_path}: d_in={cfg['d_in']!r} but encoder.weight is [{dims.d_sae}, {dims.d_in}]")
    if cfg.get("num_latents") and cfg["num_latents"] != dims.d_sae:
        raise ArtifactError(f"{cfg_path}: num_latents={cfg['num_latents']!r} but encoder.weight has {dims.d_sae} rows")
    tensors = load_safetensors(weights_path, ArtifactError)
    k = cfg.get("k", 32)  # SparseCoderConfig's default, for a cfg.json written without it
    weights = {
        "W_enc": tensors["encoder.weight"].T,
        "W_dec": tensors["W_dec"],
        "b_enc": tensors["encoder.bias"],
        "b_dec": tensors["b_dec"],
    }
    hookpoint = path.parent.name if re.fullmatch(r"seed\d+", path.name) else path.name
    return assemble(
        "topk",
        dims,
        {"k": k},
        weights,
        layout=LAYOUT,
        source=path,
        metadata=_site_of(hookpoint),
        provenance={"source_config": cfg},
    )


def _refuse_unsupported(cfg: dict, cfg_path: Path) -> None:
    if cfg.get("transcode"):
        raise ArtifactError(f"{cfg_path}: transcode=true is a transcoder (it predicts another module's output), not an SAE saekit can load")
    if cfg.get("skip_connection"):
        raise ArtifactError(f"{cfg_path}: skip_connection=true adds a linear skip path that saekit's topk does not have")
    if cfg.get("activation", "topk") != "topk":
        raise ArtifactError(f"{cfg_path}: activation={cfg['activation']!r} is not supported; saekit reads sparsify's 'topk' only")
    k = cfg.get("k", 32)
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ArtifactError(f"{cfg_path}: k must be a positive integer, got {k!r}")


def _site_of(hookpoint: str) -> dict[str, Any]:
    """sparsify names an SAE by the module it read, a path inside the model's ``base_model``; its
    default hookpoints ``layers.N`` (Llama, NeoX, ...) and ``h.N`` (GPT-2) are block outputs, i.e.
    saekit's ``layers.N.resid_post``. Other module paths are kept as the hookpoint only: as a saekit
    site they would need the model's own prefix (``model.``, ``transformer.``), which the folder does
    not say."""
    if m := re.fullmatch(r"(?:layers|h)\.(\d+)", hookpoint):
        return {"site": f"layers.{m[1]}.resid_post", "hookpoint": hookpoint}
    return {"hookpoint": hookpoint}
