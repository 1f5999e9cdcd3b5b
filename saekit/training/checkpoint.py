"""Training checkpoints: one safetensors file holding everything needed to resume exactly.

Tensors (SAE weights, Adam moments, dead-latent counters, RNG state) go in the file body; everything
else (step, normalisation factors, optimiser hyper-parameters, a fingerprint of the run) goes as JSON
in the safetensors metadata (:mod:`saekit.training.checkpoint_meta`). The file carries the sha256 of
its whole content (:mod:`saekit.training.checksummed`) and is written atomically
(:mod:`saekit.atomic`), so a crash at any moment leaves the previous checkpoint intact, and a file
changed in any byte since is refused as corrupted instead of resuming with other weights. A checkpoint
whose tensors do not fit the run (missing, extra or of another shape) is refused by name before any of
it is loaded. No pickle is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import Tensor, nn

from saekit.errors import ArtifactError
from saekit.training.checkpoint_fit import fit_problems
from saekit.training.checkpoint_meta import (
    CheckpointMeta,
    OptimizerMeta,
    check_format_version,
    meta_json,
    parse_meta,
)
from saekit.training.checksummed import Checksum, Contents, header_metadata, read_checksummed, tensors_of, write_checksummed
from saekit.version import __version__

CHECKPOINT_NAME = "checkpoint.safetensors"
_META_KEY = "saekit_checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """State of a run after ``step`` optimiser steps."""

    step: int
    sae_states: list[dict[str, Tensor]]
    optimizer_states: list[dict[str, Any]]
    dead_counters: list[Tensor]
    rng_state: Tensor
    scales: dict[str, float]
    """The normalisation factor of each site."""
    fingerprint: dict[str, Any]
    """JSON-ready description of the run; only a run with the same fingerprint may resume it."""


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    return write_checksummed(Path(path), *_flatten(ckpt))


def checkpoint_bytes(ckpt: Checkpoint) -> bytes:
    """``ckpt`` as the bytes of a safetensors file without a checksum: a part of a checkpoint that one
    rank sends another (:meth:`saekit.comm.Comm.gather_bytes`); :func:`checkpoint_of_bytes` reads it."""
    return save(*_flatten(ckpt))


def checkpoint_of_bytes(data: bytes, where: str) -> Checkpoint:
    """The checkpoint in bytes written by :func:`checkpoint_bytes`; ``where`` names them in errors."""
    path = Path(where)
    raw = header_metadata(data, path, "checkpoint").get(_META_KEY)
    if raw is None:
        raise ArtifactError(f"{where} is not a saekit checkpoint")
    return _assemble(tensors_of(Contents(data, {}, Checksum.ABSENT), path, "checkpoint"), parse_meta(raw, path), path)


def _flatten(ckpt: Checkpoint) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and the string metadata of a checkpoint file."""
    tensors: dict[str, Tensor] = {"rng": ckpt.rng_state.contiguous()}
    optimizers = []
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
        optimizers.append(OptimizerMeta(opt_state["param_groups"], scalars))
    meta = CheckpointMeta(__version__, ckpt.step, len(ckpt.sae_states), optimizers, ckpt.scales, ckpt.fingerprint)
    return tensors, {_META_KEY: meta_json(meta)}


def load_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint at ``path``, after its checksum, format version and metadata are checked."""
    path = Path(path)
    contents = read_checksummed(path, "checkpoint")
    raw = contents.metadata.get(_META_KEY)
    if raw is None:
        raise ArtifactError(f"{path} is a safetensors file but not a saekit checkpoint")
    check_format_version(raw, path)
    if contents.checksum is not Checksum.MATCHES:
        why = "carries no checksum" if contents.checksum is Checksum.ABSENT else "does not match its sha256 checksum"
        raise ArtifactError(
            f"checkpoint {path} is corrupted: its content {why} (bytes changed on disk or by hand since saekit "
            "wrote it), so it cannot be resumed; restore it from a copy, or start the run again in a new output folder"
        )
    meta = parse_meta(raw, path)
    return _assemble(tensors_of(contents, path, "checkpoint"), meta, path)


def check_fit(ckpt: Checkpoint, path: Path, saes: Sequence[nn.Module], optimizers: Sequence[Any], dead_counters: Sequence[Tensor]) -> None:
    """An ArtifactError naming the first misfits where the checkpoint read from ``path`` does not fit
    the run's SAEs, optimisers and counters (names, shapes, types)."""
    problems = fit_problems(ckpt.sae_states, ckpt.optimizer_states, ckpt.dead_counters, ckpt.rng_state, saes, optimizers, dead_counters)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ArtifactError(f"checkpoint {path} does not fit this run: {'; '.join(problems[:5])}{more}")


def restore(ckpt: Checkpoint, path: Path, saes: Sequence[nn.Module], optimizers: Sequence[Any], dead_counters: Sequence[Tensor]) -> None:
    """Put the checkpoint read from ``path`` back in place: SAE weights, optimiser states, dead-latent
    counters and RNG state. Nothing is changed when any tensor does not fit (:func:`check_fit`)."""
    check_fit(ckpt, path, saes, optimizers, dead_counters)
    for sae, opt, counter, sae_state, opt_state, dead_state in zip(
        saes, optimizers, dead_counters, ckpt.sae_states, ckpt.optimizer_states, ckpt.dead_counters
    ):
        sae.load_state_dict(sae_state)
        opt.load_state_dict(opt_state)
        counter.copy_(dead_state)
    torch.set_rng_state(ckpt.rng_state)


def _assemble(tensors: dict[str, Tensor], meta: CheckpointMeta, path: Path) -> Checkpoint:
    """Sort the file's tensors back by kind and SAE (``sae.<i>.<name>``, ``opt.<i>.<param>.<name>``,
    ``dead.<i>``, ``rng``); a name outside that scheme is refused."""
    n = meta.n_saes
    sae_states: list[dict[str, Tensor]] = [{} for _ in range(n)]
    opt_tensors: list[dict[str, dict[str, Tensor]]] = [{} for _ in range(n)]
    dead: dict[int, Tensor] = {}
    for key, value in tensors.items():
        kind, *parts = key.split(".", 3 if key.startswith("opt.") else 2)
        index = int(parts[0]) if parts and parts[0].isdecimal() and int(parts[0]) < n else None
        if kind == "sae" and index is not None and len(parts) == 2:
            sae_states[index][parts[1]] = value
        elif kind == "opt" and index is not None and len(parts) == 3 and parts[1].isdecimal():
            opt_tensors[index].setdefault(parts[1], {})[parts[2]] = value
        elif kind == "dead" and index is not None and len(parts) == 1:
            dead[index] = value
        elif key != "rng":
            raise ArtifactError(f"checkpoint {path} holds a tensor {key!r} that is not part of a checkpoint of {n} SAE(s)")
    if len(dead) != n or "rng" not in tensors:
        raise ArtifactError(f"checkpoint {path} is incomplete (missing dead-latent counters or RNG state)")
    optimizer_states = []
    for i, opt_meta in enumerate(meta.optimizers):
        state: dict[int, dict[str, Any]] = {}
        for pid in sorted(set(opt_tensors[i]) | set(opt_meta.scalars), key=int):  # one order in every process
            state[int(pid)] = {**opt_tensors[i].get(pid, {}), **opt_meta.scalars.get(pid, {})}
        # JSON turned tuples (Adam's betas) into lists; give them back as torch wrote them.
        groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()} for g in opt_meta.param_groups]
        optimizer_states.append({"state": state, "param_groups": groups})
    return Checkpoint(meta.step, sae_states, optimizer_states, [dead[i] for i in range(n)], tensors["rng"], meta.scales, meta.fingerprint)
