"""Steps every reader shares: checking raw tensors against the shapes their layout promises (naming
the raw keys, so the message points into the foreign file), and assembling a saekit SAE from weights
already mapped to saekit's names, with a record of where they came from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saekit.bounded import read_json
from saekit.devices import COMPUTE_DTYPES
from saekit.errors import ArtifactError, ConfigError
from saekit.sae import registry
from saekit.sae.base import SAE


class Dims(NamedTuple):
    """Widths read off the weights: activations and latents."""

    d_in: int
    d_sae: int


Axes = tuple[str | int, ...]
"""A shape written with the names "d_in" / "d_sae" (or literal sizes); () is a scalar."""


def dims_from(shape: Sequence[int], axes: Axes, key: str, path: Path) -> Dims:
    """The widths implied by one tensor whose axes are named ``axes`` (e.g. ("d_sae", "d_in"))."""
    if len(shape) != len(axes):
        raise ArtifactError(f"{path}: {key} must have {len(axes)} dimensions [{', '.join(map(str, axes))}], found shape {list(shape)}")
    sizes = dict(zip(axes, shape))
    dims = Dims(int(sizes["d_in"]), int(sizes["d_sae"]))
    if min(dims) <= 0:
        raise ArtifactError(f"{path}: {key} has an empty shape {list(shape)}")
    return dims


def check_shapes(
    shapes: Mapping[str, Sequence[int]],
    spec: Mapping[str, Axes],
    dims: Dims,
    path: Path,
    what: str,
    *,
    optional: Sequence[str] = (),
) -> None:
    """Name every missing, unexpected and mis-shaped tensor of ``shapes`` at once."""
    problems = []
    if missing := [k for k in spec if k not in shapes and k not in optional]:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected := sorted(k for k in shapes if k not in spec):
        problems.append(f"unexpected {', '.join(unexpected)}")
    named = dims._asdict()
    for key, axes in spec.items():
        if key not in shapes:
            continue
        want = [named[a] if isinstance(a, str) else a for a in axes]
        if list(shapes[key]) != want:
            problems.append(f"{key} has shape {list(shapes[key])}, expected [{', '.join(map(str, axes))}] = {want}")
    if problems:
        found = ", ".join(f"{k} {list(s)}" for k, s in shapes.items())
        raise ArtifactError(f"{path} is not a valid {what}: {'; '.join(problems)} (found: {found})")


def weight_problems(state: Mapping[str, Tensor]) -> list[str]:
    """What is wrong with the values of an SAE's tensors, one phrase per tensor: not in a dtype an SAE
    computes in (an int or bool tensor would be cast silently, float8 cannot be computed in), or
    holding NaN or infinities. The one infinity allowed is +inf in ``threshold``: a learned threshold
    not yet set (BatchTopK, Feature Choice)."""
    problems = []
    for name in sorted(state):
        t = state[name]
        if t.dtype not in COMPUTE_DTYPES:
            kind = "a floating-point format SAEs are not computed in" if t.is_floating_point() else "not floating point"
            problems.append(f"{name} is stored as {t.dtype}, {kind}")
            continue
        bad = t.isnan() | (t.isinf() & ~((t > 0) if name == "threshold" else torch.zeros_like(t, dtype=torch.bool)))
        if bool(bad.any()):
            problems.append(f"{name} holds {int(bad.sum())} NaN or infinite value(s)")
    return problems


MAX_JSON_BYTES = 16 << 20
"""Largest cfg.json / config.json / provenance.json read (they hold settings and a few metrics)."""


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, read with :mod:`saekit.bounded`'s limits; anything else is an
    ArtifactError naming the file."""
    data = read_json(path, MAX_JSON_BYTES, ArtifactError)
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def peek_json_keys(path: Path) -> set[str]:
    """Top-level keys of a JSON object file, or nothing when it is absent or unreadable (detection only)."""
    try:
        return set(read_json_object(path))
    except ArtifactError:
        return set()


def assemble(
    architecture: str,
    dims: Dims,
    hparams: Mapping[str, Any],
    weights: Mapping[str, Tensor],
    *,
    layout: str,
    source: Path,
    metadata: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> SAE:
    """A saekit SAE holding ``weights`` (already in saekit's names and shapes), tagged with its origin.

    The SAE is built on the meta device and the weights are assigned, not copied into a random
    initialisation: a 1M-latent Gemma Scope SAE would otherwise first allocate and fill tens of GB.
    """
    try:
        cfg = registry.make_config(architecture, dims.d_in, dims.d_sae, **hparams)
    except ConfigError as exc:
        raise ArtifactError(f"{source}: the {layout} settings give no valid {architecture} SAE: {exc}") from exc
    if problems := weight_problems(weights):
        raise ArtifactError(f"{source}: the {layout} weights are unusable: {'; '.join(problems)}")
    dtype = weights["W_enc"].dtype
    with torch.device("meta"):
        sae = registry.get(architecture)(cfg)
    state = {name: t.detach().to(dtype).contiguous() for name, t in weights.items()}
    expected = sae.state_dict()
    if state.keys() != expected.keys():  # a reader bug, not bad input: name it plainly all the same
        raise ArtifactError(f"{source}: mapped tensors {sorted(state)} do not match the {architecture} SAE's {sorted(expected)}")
    sae.load_state_dict(state, assign=True)
    origin = {"layout": layout, "path": str(source.resolve())}
    sae.metadata = {**(metadata or {}), "converted_from": origin}
    sae.provenance = {"converted_from": {**origin, **(provenance or {})}}
    return sae
