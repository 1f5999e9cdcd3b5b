"""What the latent pages show of an SAE's training dynamics (``saekit track``): each latent's drift and
formation curves over the model's checkpoints, its formation checkpoint and its token purity.

The source is a folder ``OUT/dynamics/<name>/`` written by ``saekit track`` (a stored
:class:`saekit.track.measure.SAEDynamics`). It can come from elsewhere, so :func:`load_dynamics`
trusts nothing in it: every label is a string, every tensor has its rank, dtype and shape, and the
formation checkpoints are indices of the series; anything else is an ArtifactError naming the folder
and the field. :func:`check_fits` then refuses dynamics measured on another SAE (a different latent
count or site) with a ConfigError naming the folder and both values, so a page never indexes past a
curve nor shows another SAE's curves.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from saekit.errors import ArtifactError, ConfigError

_CURVES = ("drift_to_final", "progress_cosine", "progress_wjaccard")
"""The [checkpoints, latents] tensors the pages draw."""


@dataclass(frozen=True)
class Dynamics:
    """One SAE's dynamics as the pages use them; tensors are [checkpoints, latents] unless said."""

    folder: Path
    name: str
    site: str
    checkpoints: list[str]
    """The checkpoints' labels, first to last."""
    steps: list[int | None]
    drift_to_final: Tensor
    """Cosine of each latent's decoder direction with its direction at the last checkpoint."""
    progress_cosine: Tensor
    progress_wjaccard: Tensor
    formation: Tensor
    """[latents] int: index of the checkpoint where the latent formed, -1 if it never did."""
    formed_fraction: float
    """A latent formed where its progress (cosine) first reached this fraction of its final value."""
    token_purity: Tensor
    """[latents]: share of the latent's top tokens (final checkpoint) that are one token id; NaN: none."""
    alive: Tensor
    """[latents] bool: fired on at least two analysis tokens at the final checkpoint."""

    @property
    def n_latents(self) -> int:
        return self.formation.shape[0]


def load_dynamics(folder: str | os.PathLike[str]) -> Dynamics:
    """The dynamics saved in ``folder`` (``saekit track``'s ``OUT/dynamics/<name>``), checked."""
    from saekit.track.measure import FORMED, SAEDynamics  # the series' code: loaded only when asked for

    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ArtifactError(f"dynamics folder {folder} {what} (saekit track writes OUT/dynamics/<SAE name>)")
    raw = SAEDynamics.load(folder)
    where = f"dynamics folder {folder}"
    if not isinstance(raw.name, str) or not isinstance(raw.site, str):
        raise ArtifactError(f"{where}: name and site must be strings")
    labels, steps = raw.checkpoints, raw.steps
    if not isinstance(labels, list) or not labels or not all(isinstance(c, str) for c in labels):
        raise ArtifactError(f"{where}: checkpoints must be a non-empty list of labels (strings)")
    if not isinstance(steps, list) or len(steps) != len(labels) or not all(_is_step(s) for s in steps):
        raise ArtifactError(f"{where}: steps must hold one integer or null per checkpoint ({len(labels)})")
    fields = {
        "drift_to_final": raw.drift_to_final, "progress_cosine": raw.progress_cosine,
        "progress_wjaccard": raw.progress_wjaccard, "formation": raw.formation, "token_purity": raw.token_purity,
        "alive": raw.alive,
    }  # fmt: skip
    problem = _tensor_problem(fields, len(labels))
    if problem:
        raise ArtifactError(f"{where}: {problem}")
    return Dynamics(
        folder=folder, name=raw.name, site=raw.site, checkpoints=labels, steps=steps,
        drift_to_final=fields["drift_to_final"].float(), progress_cosine=fields["progress_cosine"].float(),
        progress_wjaccard=fields["progress_wjaccard"].float(), formation=fields["formation"].long(),
        formed_fraction=FORMED, token_purity=fields["token_purity"].float(), alive=fields["alive"],
    )  # fmt: skip


def _is_step(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _tensor_problem(tensors: dict[str, Tensor], n_checkpoints: int) -> str | None:
    """What makes the tensors unusable for ``n_checkpoints`` checkpoints (the store has made sure they
    are tensors); None if nothing."""
    first = tensors["drift_to_final"]
    if first.ndim != 2:
        return f"drift_to_final has shape {list(first.shape)}, not [checkpoints, latents]"
    n_latents = first.shape[1]
    for k, v in tensors.items():
        shape = [n_checkpoints, n_latents] if k in _CURVES else [n_latents]
        if list(v.shape) != shape:
            return f"{k} has shape {list(v.shape)}, expected {shape} ({n_checkpoints} checkpoints, {n_latents} latents)"
        kind = "bool" if k == "alive" else "integer" if k == "formation" else "float"
        if kind != ("bool" if v.dtype == torch.bool else "float" if v.is_floating_point() else "integer"):
            return f"{k} is stored as {v.dtype}, not as {kind}"
    formation = tensors["formation"]
    if formation.numel() and (int(formation.min()) < -1 or int(formation.max()) >= n_checkpoints):
        return f"formation holds values outside -1..{n_checkpoints - 1}"
    return None


def check_fits(dynamics: Dynamics, sae: str, d_sae: int | None, site: str | None) -> None:
    """Refuse ``dynamics`` for the SAE ``sae`` when its latent count or site differs (None: not known)."""
    if d_sae is not None and dynamics.n_latents != d_sae:
        raise ConfigError(
            f"dynamics folder {dynamics.folder} has {dynamics.n_latents} latents, but SAE {sae} has d_sae={d_sae}: "
            "these are the dynamics of another SAE"
        )
    if site is not None and dynamics.site != site:
        raise ConfigError(
            f"dynamics folder {dynamics.folder} was measured at site {dynamics.site!r}, but SAE {sae} reads "
            f"{site!r}: these are the dynamics of another SAE"
        )


def assign(found: Iterable[Dynamics], names: list[str]) -> dict[str, Dynamics]:
    """SAE name -> its dynamics: each goes to the SAE of its name, or to the one SAE when ``names`` has one."""
    out: dict[str, Dynamics] = {}
    for dyn in found:
        name = names[0] if len(names) == 1 else dyn.name
        if name not in names:
            raise ConfigError(
                f"dynamics folder {dyn.folder} holds the dynamics of SAE {dyn.name!r}, which is not one of "
                f"the browser's SAEs ({', '.join(names)})"
            )
        if name in out:
            raise ConfigError(f"two dynamics folders for SAE {name}: {out[name].folder} and {dyn.folder}")
        out[name] = dyn
    return out


def as_folders(dynamics: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None) -> list[Path]:
    """One folder, several, or none (None), as a list."""
    if dynamics is None:
        return []
    if isinstance(dynamics, (str, os.PathLike)):
        return [Path(dynamics)]
    return [Path(d) for d in dynamics]


__all__ = ["Dynamics", "as_folders", "assign", "check_fits", "load_dynamics"]
