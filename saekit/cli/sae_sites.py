"""The sites an [[sae]] table's SAE reads and reconstructs, checked against the data's sites: the
engine's rules (:mod:`saekit.training.sites`), applied here to name the table in a refusal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from saekit.errors import ConfigError
from saekit.sae.registry import get
from saekit.sources.tensor import site_to_read

if TYPE_CHECKING:
    from saekit.cli.run_config import SAESpec


def sites_read(spec: SAESpec, sites: list[str]) -> tuple[str, ...]:
    """The data sites an [[sae]] table's SAE reads (the engine's rule, training.sites.assign_sites, named
    here by table): its site, or a crosscoder's sites."""
    if spec.sites is None:
        read = site_to_read(spec.site, sites)
        if read is None:
            raise ConfigError(f"site {spec.site!r} is not one of the data's sites {sites}")
        return (read,)
    if spec.site is not None:
        raise ConfigError("give either site (one site) or sites (a crosscoder's), not both")
    if len(spec.sites) < 2 or len(set(spec.sites)) != len(spec.sites):
        raise ConfigError(f"sites must name two or more distinct sites (a crosscoder), got {list(spec.sites)}")
    if get(spec.architecture).transcoder and spec.sites_out is None:
        raise ConfigError(
            f"sites: a {spec.architecture} transcoder of one output site reads one site; a crosscoder is any other "
            "architecture, and a cross-layer transcoder names its sites_out"
        )
    if missing := [site for site in spec.sites if site not in sites]:
        raise ConfigError(f"sites {missing} are not among the data's sites {sites}")
    return spec.sites


def sites_out(spec: SAESpec, sites: list[str]) -> tuple[str, ...] | None:
    """The data sites an [[sae]] table's SAE reconstructs when it is a transcoder (the engine's rule,
    training.sites.assign_targets, named here by table): its site_out, or a cross-layer transcoder's
    sites_out; None for an SAE, which may name neither."""
    if not get(spec.architecture).transcoder:
        if spec.site_out is not None or spec.sites_out is not None:
            key = "site_out" if spec.site_out is not None else "sites_out"
            raise ConfigError(f"{key}: a {spec.architecture} SAE reconstructs the site it reads; only transcoders take a {key}")
        return None
    if spec.sites_out is not None:
        if spec.site_out is not None:
            raise ConfigError("give either site_out (one site) or sites_out (a cross-layer transcoder's), not both")
        if len(spec.sites_out) < 2 or len(set(spec.sites_out)) != len(spec.sites_out):
            raise ConfigError(f"sites_out must name two or more distinct sites, got {list(spec.sites_out)}")
        if missing := [site for site in spec.sites_out if site not in sites]:
            raise ConfigError(f"sites_out {missing} are not among the data's sites {sites}")
        return spec.sites_out
    written = site_to_read(spec.site_out, sites)
    if written is None:
        raise ConfigError(f"site_out {spec.site_out!r} is not one of the data's sites {sites}; add it to the data's sites")
    return (written,)
