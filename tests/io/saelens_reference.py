"""SAELens's inference formulas, written from its definitions (sae_lens 6.54 ``saes/*_sae.py``; Gemma
Scope's reference JumpReLU) and applied to the files of a saved folder, without saekit and without
SAELens: what any SAELens reader computes from ``cfg.json`` and ``sae_weights.safetensors``.

    sae_in   = x − b_dec · apply_b_dec_to_input
    standard : ReLU(sae_in W_enc + b_enc)
    topk     : the k largest of z = sae_in W_enc + b_enc per row, through a ReLU; 0 elsewhere
    jumprelu : ReLU(z) ⊙ 1[z > θ]
    gated    : 1[sae_in W_enc + b_gate > 0] ⊙ ReLU(sae_in (W_enc ⊙ exp(r_mag)) + b_mag)
    decode   : f W_dec + b_dec

and the transcoders of ``saes/transcoder.py``, which never subtract b_dec (it is d_out wide):

    transcoder, skip_transcoder                    : ReLU(x W_enc + b_enc)
    jumprelu_transcoder, jumprelu_skip_transcoder  : ReLU(z) ⊙ 1[z > θ]
    forward (skip forms)                           : decode(f) + x W_skipᵀ
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def reference_encode(folder: Path, x: torch.Tensor) -> torch.Tensor:
    cfg = json.loads((folder / "cfg.json").read_text())
    w = load_file(folder / "sae_weights.safetensors")
    assert cfg.get("normalize_activations", "none") == "none"
    sae_in = x - w["b_dec"] if cfg["apply_b_dec_to_input"] else x
    arch = cfg["architecture"]
    if arch == "gated":
        gate = (sae_in @ w["W_enc"] + w["b_gate"]) > 0
        return gate * (sae_in @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]).relu()
    z = sae_in @ w["W_enc"] + w["b_enc"]
    if arch in ("standard", "transcoder", "skip_transcoder"):
        return z.relu()
    if arch in ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder"):
        return z.relu() * (z > w["threshold"])
    if arch == "topk":
        assert not cfg.get("rescale_acts_by_decoder_norm", False)
        top = z.topk(cfg["k"], dim=-1)
        return torch.zeros_like(z).scatter(-1, top.indices, top.values.relu())
    raise AssertionError(f"no reference formula for SAELens architecture {arch!r}")


def reference_decode(folder: Path, codes: torch.Tensor) -> torch.Tensor:
    w = load_file(folder / "sae_weights.safetensors")
    return codes @ w["W_dec"] + w["b_dec"]


def reference_forward(folder: Path, x: torch.Tensor) -> torch.Tensor:
    """decode(encode(x)), plus x W_skipᵀ for the skip transcoders."""
    cfg = json.loads((folder / "cfg.json").read_text())
    out = reference_decode(folder, reference_encode(folder, x))
    if cfg["architecture"] in ("skip_transcoder", "jumprelu_skip_transcoder"):
        out = out + x @ load_file(folder / "sae_weights.safetensors")["W_skip"].t()
    return out
