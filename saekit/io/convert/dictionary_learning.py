"""saprmarks/dictionary_learning dictionaries: a ``trainer_N`` folder holding ``ae.pt`` (a plain
state dict) and ``config.json`` (``{"trainer": {"dict_class": ..., "k": ..., "lm_name": ...,
"layer": ...}, "buffer": {...}}``). ``ae.pt`` is read only with ``torch.load(weights_only=True)``, so
a file holding anything but tensors and plain containers is refused.

Each class maps onto the saekit architecture computing the same ``encode`` and ``decode`` (the
dictionary's default call, on the weights as stored; ``AutoEncoder.from_pretrained`` rescales a
non-unit decoder by default, which changes the codes but not the reconstruction, and is not done here):

    AutoEncoder             relu        ReLU((x − bias) encoder.weightᵀ + encoder.bias); decoder.weightᵀ, bias
    AutoEncoderTopK         topk        per-token TopK of the same; its ``threshold`` buffer is unused by encode
    BatchTopKSAE            batch_topk  ReLU(...) ⊙ 1[ReLU(...) > threshold], one threshold for all latents
    MatryoshkaBatchTopKSAE  matryoshka_batch_topk  the same with W_enc / W_dec parameters (all groups
                            active); its group_sizes become the prefix widths (their running sums)
    JumpReluAutoEncoder     jumprelu    ReLU(pre ⊙ 1[pre > θ]) with pre = x W_enc + b_enc; θ < 0 stored as 0
    GatedAutoEncoder        gated       decoder_bias, gate_bias, mag_bias, r_mag: saekit's gated term for term

A BatchTopK threshold of −1 was never learned: dictionary_learning would then encode with a dense
ReLU, so such a file is refused rather than silently turned into something else.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saekit.errors import ArtifactError
from saekit.io.convert.common import Axes, Dims, assemble, check_shapes, dims_from, peek_json_keys, read_json_object
from saekit.sae.base import SAE

LAYOUT = "dictionary_learning"
WEIGHTS_FILE = "ae.pt"
CONFIG_FILE = "config.json"


class DictClass(NamedTuple):
    """How one dictionary_learning class is stored and which saekit architecture it becomes."""

    architecture: str
    spec: dict[str, Axes]
    """Its state dict: key -> axes."""
    widths_from: str
    """The key whose shape gives d_in and d_sae."""


_TOPK_KEYS: dict[str, Axes] = {
    "encoder.weight": ("d_sae", "d_in"),
    "encoder.bias": ("d_sae",),
    "decoder.weight": ("d_in", "d_sae"),
    "b_dec": ("d_in",),
    "k": (),
    "threshold": (),
}
_PARAM_KEYS: dict[str, Axes] = {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)}

CLASSES: dict[str, DictClass] = {
    "AutoEncoder": DictClass(
        "relu",
        {"encoder.weight": ("d_sae", "d_in"), "encoder.bias": ("d_sae",), "decoder.weight": ("d_in", "d_sae"), "bias": ("d_in",)},
        "encoder.weight",
    ),
    "AutoEncoderTopK": DictClass("topk", _TOPK_KEYS, "encoder.weight"),
    "BatchTopKSAE": DictClass("batch_topk", _TOPK_KEYS, "encoder.weight"),
    "MatryoshkaBatchTopKSAE": DictClass(
        "matryoshka_batch_topk", {**_PARAM_KEYS, "k": (), "threshold": (), "group_sizes": ("n_groups",)}, "W_enc"
    ),
    "JumpReluAutoEncoder": DictClass("jumprelu", {**_PARAM_KEYS, "threshold": ("d_sae",)}, "W_enc"),
    "GatedAutoEncoder": DictClass(
        "gated",
        {
            "encoder.weight": ("d_sae", "d_in"),
            "decoder.weight": ("d_in", "d_sae"),
            "decoder_bias": ("d_in",),
            "r_mag": ("d_sae",),
            "gate_bias": ("d_sae",),
            "mag_bias": ("d_sae",),
        },
        "encoder.weight",
    ),
}


def claims(path: Path) -> bool:
    """Whether ``path`` is a dictionary_learning trainer folder (possibly with a file missing)."""
    return path.is_dir() and ((path / WEIGHTS_FILE).is_file() or "trainer" in peek_json_keys(path / CONFIG_FILE))


def read(path: Path) -> SAE:
    """The saekit SAE of one dictionary_learning trainer folder."""
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file():
        raise ArtifactError(
            f"{path} has {WEIGHTS_FILE} but no {CONFIG_FILE}: dictionary_learning writes both, and "
            f"{CONFIG_FILE} names the dictionary class (trainer.dict_class)"
        )
    if not weights_path.is_file():
        raise ArtifactError(f"{path} has a dictionary_learning {CONFIG_FILE} but no {WEIGHTS_FILE}")
    config = read_json_object(config_path)
    trainer = config.get("trainer")
    if not isinstance(trainer, dict) or not isinstance(trainer.get("dict_class"), str):
        raise ArtifactError(f"{config_path} must hold a 'trainer' object with a 'dict_class' name")
    name = trainer["dict_class"]
    if name not in CLASSES:
        raise ArtifactError(f"{config_path}: dict_class {name!r} is not supported (supported: {', '.join(CLASSES)})")
    buffer = config.get("buffer")
    if isinstance(buffer, dict) and buffer.get("io", "out") != "out":
        raise ArtifactError(f"{config_path}: buffer io={buffer['io']!r} trains a map between two activations, not an SAE")
    kind = CLASSES[name]
    state = load_state_dict(weights_path)

    widths_axes = kind.spec[kind.widths_from]
    if kind.widths_from not in state:
        raise ArtifactError(f"{weights_path} is not a {name} state dict: no {kind.widths_from} (found: {', '.join(state) or 'nothing'})")
    dims = dims_from(state[kind.widths_from].shape, widths_axes, kind.widths_from, weights_path)
    shapes = {k: t.shape for k, t in state.items()}
    # group_sizes has its own length; check it against itself so the shared check still covers the rest.
    spec = {k: ((len(state[k]),) if a == ("n_groups",) and k in state else a) for k, a in kind.spec.items()}
    check_shapes(shapes, spec, dims, weights_path, f"dictionary_learning {name} state dict")

    hparams, weights, notes = _map(name, kind, state, trainer, dims, weights_path)
    return assemble(
        kind.architecture,
        dims,
        hparams,
        weights,
        layout=LAYOUT,
        source=path,
        metadata=_metadata(trainer),
        provenance={"dict_class": name, "source_config": config, "notes": notes},
    )


def load_state_dict(weights_path: Path) -> dict[str, Tensor]:
    """``ae.pt`` as a name -> tensor dict, unpickling nothing but tensors and plain containers."""
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises unsafe loading; keep only the object it refused.
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f": it refers to {refused[1]}" if refused else ""
        raise ArtifactError(
            f"{weights_path} holds Python objects other than tensors, which saekit refuses to unpickle "
            f"(torch.load with weights_only=True){what}"
        ) from exc
    except (RuntimeError, EOFError) as exc:
        raise ArtifactError(f"{weights_path} is truncated or not a torch file: {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        raise ArtifactError(f"cannot read {weights_path}: {exc}") from exc
    if isinstance(state, Mapping) and isinstance(state.get("ae"), Mapping) and "optimizer" in state:
        raise ArtifactError(
            f"{weights_path} is a training backup (step {state.get('step')}), whose biases may still be in "
            "normalised units; convert the final ae.pt that training writes at the end"
        )
    if not isinstance(state, Mapping):
        raise ArtifactError(f"{weights_path} must hold a state dict (name -> tensor), found {type(state).__name__}")
    if not_tensors := [f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, Tensor)]:
        raise ArtifactError(f"{weights_path} must hold only tensors; these are not: {', '.join(not_tensors)}")
    return dict(state)


def _map(
    name: str, kind: DictClass, state: dict[str, Tensor], trainer: dict[str, Any], dims: Dims, path: Path
) -> tuple[dict[str, Any], dict[str, Tensor], list[str]]:
    """saekit hyper-parameters and weights of one dictionary, and notes on what was adjusted."""
    notes: list[str] = []
    if kind.architecture == "relu":
        return {}, _linear(state, "bias", "encoder.bias"), notes
    if kind.architecture == "gated":
        weights = {
            "W_enc": state["encoder.weight"].T,
            "W_dec": state["decoder.weight"].T,
            "b_gate": state["gate_bias"],
            "b_mag": state["mag_bias"],
            "r_mag": state["r_mag"],
            "b_dec": state["decoder_bias"],
        }
        return {}, weights, notes
    if kind.architecture == "jumprelu":
        weights = {k: state[k] for k in _PARAM_KEYS}
        negative = int((state["threshold"] < 0).sum())
        if negative:
            notes.append(f"{negative} negative thresholds stored as 0 (same codes)")
        return {}, {**weights, "threshold": state["threshold"].clamp(min=0)}, notes

    k = _k_of(state, trainer, path)
    weights = _linear(state, "b_dec", "encoder.bias") if "encoder.weight" in state else {key: state[key] for key in _PARAM_KEYS}
    if kind.architecture == "topk":
        notes.append("per-token TopK, as AutoEncoderTopK.encode does by default; its threshold buffer is not used")
        return {"k": k}, weights, notes
    threshold = float(state["threshold"])
    if threshold < 0:
        raise ArtifactError(
            f"{path}: the {name} threshold is {threshold}, i.e. never learned (training stopped before "
            "threshold_start_step); dictionary_learning would encode with a dense ReLU, which is no BatchTopK SAE"
        )
    weights["threshold"] = state["threshold"].reshape(1).expand(dims.d_sae)
    if kind.architecture == "matryoshka_batch_topk":  # the config refuses sizes that do not sum to d_sae
        return {"k": k, "widths": state["group_sizes"].cumsum(0).tolist()}, weights, notes
    return {"k": k}, weights, notes


def _linear(state: dict[str, Tensor], b_dec: str, b_enc: str) -> dict[str, Tensor]:
    """nn.Linear encoder / decoder weights ([out, in]) in saekit's orientation."""
    return {
        "W_enc": state["encoder.weight"].T,
        "W_dec": state["decoder.weight"].T,
        "b_enc": state[b_enc],
        "b_dec": state[b_dec],
    }


def _k_of(state: dict[str, Tensor], trainer: dict[str, Any], path: Path) -> int:
    k = int(state["k"])
    if "k" in trainer and trainer["k"] != k:
        raise ArtifactError(f"{path}: the k buffer is {k} but config.json says k={trainer['k']!r}")
    return k


def _metadata(trainer: dict[str, Any]) -> dict[str, Any]:
    """Model and site where config.json tells them: ``layer`` is the block whose output was read."""
    meta: dict[str, Any] = {}
    if isinstance(trainer.get("lm_name"), str):
        meta["model"] = trainer["lm_name"]
    layer, submodule = trainer.get("layer"), trainer.get("submodule_name")
    if isinstance(layer, int) and not isinstance(layer, bool) and (submodule is None or "resid_post" in str(submodule)):
        meta["site"] = f"layers.{layer}.resid_post"
    return meta
