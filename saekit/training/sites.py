"""Which sites of the activation source each SAE of a run reads and, for a transcoder, reconstructs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from saekit.errors import ConfigError, DataError
from saekit.sae.base import SAE
from saekit.sources.tensor import site_to_read
from saekit.strict import to_dict
from saekit.types import ActivationSource


def assign_sites(saes: Sequence[SAE], source: ActivationSource) -> list[str]:
    """The source site each SAE reads (:func:`saekit.sources.tensor.site_to_read`). An SAE whose site
    the source does not provide is refused: it would be trained on one site and saved as another."""
    sites = tuple(source.sites)
    assigned = []
    for i, sae in enumerate(saes):
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
        assigned.append(site)
    return assigned


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


def described(saes: Sequence[SAE], sites: Sequence[str], targets: Sequence[str | None]) -> list[dict[str, Any]]:
    """What a run's fingerprint records of each SAE: its architecture, config and site (and a transcoder's
    output site), all of which must match for a checkpoint to be resumed."""
    return [
        {"architecture": sae.architecture, "config": to_dict(sae.cfg), "site": site, **({"site_out": out} if out else {})}
        for sae, site, out in zip(saes, sites, targets)
    ]
