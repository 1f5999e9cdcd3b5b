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
    if (sae.transcoder and len(sae.sites_out) < 2) or sae.uses_grad:
        kind = "transcoder of one output site" if sae.transcoder else "gradient-aware SAE"
        raise ConfigError(f"{what}, but a {kind} reads one site")
    return _several(what, sae.sites, sae.d_in, "d_in", source)


def _several(what: str, sites: tuple[str, ...], width: int, name: str, source: ActivationSource) -> tuple[str, ...]:
    """``sites``, checked: distinct, provided by ``source``, of one width, ``width`` in all."""
    if len(set(sites)) != len(sites):
        raise ConfigError(f"{what}: a site is named twice")
    missing = [site for site in sites if site not in source.sites]
    if missing:
        raise ConfigError(f"{what}, but the activation source provides {list(source.sites)}, not {missing}")
    widths = {site: source.d_in(site) for site in sites}
    if len(set(widths.values())) != 1 or sum(widths.values()) != width:
        raise DataError(f"{what} and {name}={width}, but the sites' widths are {widths}: they must be equal and sum to {name}")
    return sites


def assign_targets(saes: Sequence[SAE], source: ActivationSource) -> list[tuple[str, ...] | None]:
    """The source sites each transcoder reconstructs: by the rule of :func:`assign_sites` applied to its
    ``site_out`` (a one-site source: that site, which the transcoder then also reads), checked against
    its ``d_out``, or a cross-layer transcoder's ``sites_out``, in order; None for each SAE."""
    sites = tuple(source.sites)
    targets: list[tuple[str, ...] | None] = []
    for i, sae in enumerate(saes):
        if not sae.transcoder:
            targets.append(None)
            continue
        if len(sae.sites_out) > 1:
            what = f"SAE {i} ({sae.architecture}) writes sites {list(sae.sites_out)}"
            targets.append(_several(what, sae.sites_out, sae.d_out, "d_out", source))
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
        targets.append((site,))
    return targets


def described(saes: Sequence[SAE], sites: Sequence[tuple[str, ...]], targets: Sequence[tuple[str, ...] | None]) -> list[dict[str, Any]]:
    """What a run's fingerprint records of each SAE: its architecture, config and site (a crosscoder's
    sites; a transcoder's output site or sites), all of which must match for a checkpoint to be resumed."""
    return [
        {"architecture": sae.architecture, "config": to_dict(sae.cfg), **_named("site", read), **_named("site_out", out or ())}
        for sae, read, out in zip(saes, sites, targets)
    ]


def _named(key: str, sites: tuple[str, ...]) -> dict[str, Any]:
    """``{key: site}`` for one site, ``{key + "s": [...]}`` for several (``site_out`` -> ``sites_out``)."""
    if not sites:
        return {}
    return {key: sites[0]} if len(sites) == 1 else {key.replace("site", "sites"): list(sites)}


def label(read: Sequence[str]) -> str:
    """One string for the sites an SAE reads, in logs: the site, or a crosscoder's joined by "+"."""
    return "+".join(read)
