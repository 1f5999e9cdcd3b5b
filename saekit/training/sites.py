"""Which sites of the activation source each SAE of a run reads and, for a transcoder, reconstructs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from saekit.errors import ConfigError, DataError
from saekit.sae.base import SAE
from saekit.sources.tensor import site_to_read
from saekit.strict import to_dict
from saekit.types import ActivationSource


def assign_sites(saes: Sequence[SAE], source: ActivationSource) -> list[tuple[str, ...]]:
    """The source sites each SAE reads: its one site (:func:`saekit.sources.tensor.site_to_read`), or a
    crosscoder's several, in order, each exactly as it names it. An SAE whose site the source does not
    provide is refused: it would be trained on one site and saved as another; so is a crosscoder whose
    sites differ in width, or whose ``d_in`` is not their total width."""
    sites = tuple(source.sites)
    assigned = []
    for i, sae in enumerate(saes):
        if sae.crosscoder:
            assigned.append(_crosscoder_sites(i, sae, source))
            continue
        site = site_to_read(sae.site, sites)
        if site is None:
            raise ConfigError(
                f"SAE {i} ({sae.architecture}) has site {sae.site!r}, but the activation source provides {list(sites)}"
            )
        if source.d_in(site) != sae.d_in:
            raise DataError(
                f"SAE {i} ({sae.architecture}) has d_in={sae.d_in} but activations at site {site!r} "
                f"have width {source.d_in(site)}"
            )
        assigned.append((site,))
    return assigned


def _crosscoder_sites(i: int, sae: SAE, source: ActivationSource) -> tuple[str, ...]:
    what = f"SAE {i} ({sae.architecture}) is a crosscoder over sites {list(sae.sites)}"
    if sae.transcoder or sae.uses_grad:
        raise ConfigError(f"{what}, but a {'transcoder' if sae.transcoder else 'gradient-aware SAE'} reads one site")
    if len(set(sae.sites)) != len(sae.sites):
        raise ConfigError(f"{what}: a site is named twice")
    missing = [site for site in sae.sites if site not in source.sites]
    if missing:
        raise ConfigError(f"{what}, but the activation source provides {list(source.sites)}, not {missing}")
    widths = {site: source.d_in(site) for site in sae.sites}
    if len(set(widths.values())) != 1 or sum(widths.values()) != sae.d_in:
        raise DataError(f"{what} and d_in={sae.d_in}, but the sites' widths are {widths}: they must be equal and sum to d_in")
    return sae.sites


def assign_targets(saes: Sequence[SAE], source: ActivationSource) -> list[str | None]:
    """The source site each transcoder reconstructs, by the rule of :func:`assign_sites` applied to its
    ``site_out`` (a one-site source: that site, which the transcoder then also reads), checked against
    its ``d_out``; None for each SAE."""
    sites = tuple(source.sites)
    targets: list[str | None] = []
    for i, sae in enumerate(saes):
        if not sae.transcoder:
            targets.append(None)
            continue
        site = site_to_read(sae.site_out, sites)
        if site is None:
            raise ConfigError(
                f"SAE {i} ({sae.architecture}) reconstructs site {sae.site_out!r}, but the activation source provides "
                f"{list(sites)}; set its site_out to one of them (the source must read both of a transcoder's sites)"
            )
        if source.d_in(site) != sae.d_out:
            raise DataError(
                f"SAE {i} ({sae.architecture}) has d_out={sae.d_out} but activations at its output site {site!r} "
                f"have width {source.d_in(site)}"
            )
        targets.append(site)
    return targets


def described(saes: Sequence[SAE], sites: Sequence[tuple[str, ...]], targets: Sequence[str | None]) -> list[dict[str, Any]]:
    """What a run's fingerprint records of each SAE: its architecture, config and site (a crosscoder's
    sites; a transcoder's output site), all of which must match for a checkpoint to be resumed."""
    return [
        {"architecture": sae.architecture, "config": to_dict(sae.cfg),
         **({"site": read[0]} if len(read) == 1 else {"sites": list(read)}), **({"site_out": out} if out else {})}
        for sae, read, out in zip(saes, sites, targets)
    ]  # fmt: skip


def label(read: Sequence[str]) -> str:
    """One string for the sites an SAE reads, in logs: the site, or a crosscoder's joined by "+"."""
    return "+".join(read)
