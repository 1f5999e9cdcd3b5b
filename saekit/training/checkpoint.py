"""Training checkpoints: one safetensors file holding everything needed to resume exactly.

Tensors (SAE weights, Adam moments, dead-latent counters, RNG state) go in the file body; everything
else (step, normalisation factors, optimiser hyper-parameters, a fingerprint of the run) goes as JSON
in the safetensors metadata. The file is written atomically (:mod:`saekit.atomic`: beside its final
name, flushed, renamed over it), so a crash at any moment leaves the previous checkpoint intact. No
pickle is involved.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from saekit.atomic import write_file
from saekit.errors import ArtifactError

CHECKPOINT_NAME = "checkpoint.safetensors"
_META_KEY = "saekit_checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """State of a run after ``step`` optimiser steps."""

    step: int
    sae_states: list[dict[str, Tensor]]
    optimizer_states: list[dict[str, Any]]
    dead_counters: list[Tensor]
    rng_state: Tensor
    info: dict[str, Any]
    """JSON-ready: normalisation factors, run fingerprint, anything else the loop wants back."""


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    path = Path(path)
    tensors: dict[str, Tensor] = {"rng": ckpt.rng_state.contiguous()}
    optim_meta = []
    for i, state in enumerate(ckpt.sae_states):
        for name, value in state.items():
            tensors[f"sae.{i}.{name}"] = value.detach().cpu().contiguous()
    for i, counter in enumerate(ckpt.dead_counters):
        tensors[f"dead.{i}"] = counter.detach().cpu().contiguous()
    for i, opt_state in enumerate(ckpt.optimizer_states):
        scalars: dict[str, dict[str, Any]] = {}
        for pid, per_param in opt_state["state"].items():
            for name, value in per_param.items():
                if isinstance(value, Tensor):
                    tensors[f"opt.{i}.{pid}.{name}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[name] = value
        optim_meta.append({"param_groups": opt_state["param_groups"], "scalars": scalars})
    meta = {
        "format_version": FORMAT_VERSION,
        "step": ckpt.step,
        "n_saes": len(ckpt.sae_states),
        "optimizers": optim_meta,
        "info": ckpt.info,
    }
    return write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)}))


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no checkpoint at {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw_meta = (handle.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"checkpoint {path} is truncated or corrupted ({exc})") from exc
    if raw_meta is None:
        raise ArtifactError(f"{path} is a safetensors file but not a saekit checkpoint")
    meta = json.loads(raw_meta)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"checkpoint {path} has format version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    n = meta["n_saes"]
    sae_states: list[dict[str, Tensor]] = [{} for _ in range(n)]
    opt_tensors: list[dict[str, dict[str, Tensor]]] = [{} for _ in range(n)]
    dead: list[Tensor | None] = [None] * n
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "sae":
            index, _, name = rest.partition(".")
            sae_states[int(index)][name] = value
        elif kind == "opt":
            index, pid, name = rest.split(".", 2)
            opt_tensors[int(index)].setdefault(pid, {})[name] = value
        elif kind == "dead":
            dead[int(rest)] = value
    optimizer_states = []
    for i, opt_meta in enumerate(meta["optimizers"]):
        state: dict[int, dict[str, Any]] = {}
        for pid in set(opt_tensors[i]) | set(opt_meta["scalars"]):
            state[int(pid)] = {**opt_tensors[i].get(pid, {}), **opt_meta["scalars"].get(pid, {})}
        # JSON turned tuples (Adam's betas) into lists; give them back as torch wrote them.
        groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()} for g in opt_meta["param_groups"]]
        optimizer_states.append({"state": state, "param_groups": groups})
    if any(d is None for d in dead) or "rng" not in tensors:
        raise ArtifactError(f"checkpoint {path} is incomplete (missing dead-latent counters or RNG state)")
    return Checkpoint(meta["step"], sae_states, optimizer_states, dead, tensors["rng"], meta["info"])  # type: ignore[arg-type]


def restore(ckpt: Checkpoint, saes: Sequence[nn.Module], optimizers: Sequence[Any], dead_counters: Sequence[Tensor]) -> None:
    """Put a checkpoint's SAE weights, optimiser states, dead-latent counters and RNG state back in place."""
    for sae, opt, counter, sae_state, opt_state, dead_state in zip(
        saes, optimizers, dead_counters, ckpt.sae_states, ckpt.optimizer_states, ckpt.dead_counters
    ):
        sae.load_state_dict(sae_state)
        opt.load_state_dict(opt_state)
        counter.copy_(dead_state)
    torch.set_rng_state(ckpt.rng_state)
