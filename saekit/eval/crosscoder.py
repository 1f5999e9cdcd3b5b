"""Evaluating a crosscoder (an SAE reading several sites side by side, :mod:`saekit.sae.crosscoder`).

Its activation metrics are computed on its rows (its sites' rows side by side, in raw units) and, as
``fvu_by_site``, at each site alone: the sites of a model differ in scale by an order of magnitude,
so the FVU of the whole row is mostly the largest site's. With a model, its downstream metrics are
those of replacing every one of its sites at once (:func:`saekit.eval.downstream.joint_downstream_metrics`).
A crosscoder over several models (sites ``"name/site"`` of a models source) has no one model to splice
into and is evaluated on activations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from saekit.devices import resolve_device
from saekit.errors import DataError
from saekit.eval.downstream import joint_downstream_metrics
from saekit.eval.totals import Totals
from saekit.sae.base import SAE
from saekit.types import ActivationSource, RowSource


class _Sums:
    """The totals of the whole row and of each site's block of it."""

    def __init__(self, sae: SAE, device: torch.device) -> None:
        self.sites = sae.sites
        self.width = sae.d_in // len(self.sites)
        self.whole = Totals(sae.d_in, sae.d_sae, device)
        self.per_site = [Totals(self.width, sae.d_sae, device) for _ in self.sites]

    def update(self, x: Tensor, x_hat: Tensor, codes: Tensor) -> None:
        self.whole.update(x, x_hat, codes)
        for j, totals in enumerate(self.per_site):
            block = slice(j * self.width, (j + 1) * self.width)
            totals.update(x[:, block], x_hat[:, block], codes)

    def result(self, dense_threshold: float) -> dict[str, Any]:
        by_site = {site: t.result(dense_threshold)["fvu"] for site, t in zip(self.sites, self.per_site)}
        return {"sites": list(self.sites), **self.whole.result(dense_threshold), "fvu_by_site": by_site}


def check_sites(sae: SAE, available: tuple[str, ...], width_of: Any) -> None:
    """The crosscoder's sites are all ``available``, each ``d_in / n`` wide (``width_of(site)``)."""
    if missing := [site for site in sae.sites if site not in available]:
        raise DataError(
            f"the crosscoder reads sites {list(sae.sites)}, but the activations have {list(available)}: {missing} missing"
        )
    widths = {site: width_of(site) for site in sae.sites}
    if sum(widths.values()) != sae.d_in or len(set(widths.values())) != 1:
        raise DataError(f"the crosscoder has d_in={sae.d_in} over {len(sae.sites)} sites, but their widths are {widths}")


@torch.no_grad()
def evaluate_activations(
    sae: SAE,
    source: ActivationSource,
    batch_size: int,
    max_tokens: int | None,
    device: str | torch.device | None,
    dense_threshold: float,
) -> dict[str, Any]:
    """The crosscoder's activation metrics over ``source``, its sites read once in order, side by side."""
    check_sites(sae, tuple(source.sites), source.d_in)
    home = next(sae.parameters()).device
    dtype = sae.W_dec.dtype
    where = resolve_device(device) if device is not None else home
    sae.to(where)
    try:
        sums = _Sums(sae, where)
        for x in _rows(source, sae.sites, batch_size, max_tokens):
            x = x.to(where, dtype)
            codes = sae.encode(x)
            sums.update(x, sae.reconstruct(x, codes), codes)
    finally:
        sae.to(home)
    if sums.whole.tokens == 0:
        raise DataError("no activations were read, so there is nothing to evaluate")
    return sums.result(dense_threshold)


def _rows(source: ActivationSource, sites: tuple[str, ...], batch_size: int, max_tokens: int | None) -> Iterator[Tensor]:
    """The sites' rows side by side, once in order (in-order readers, or the stream from seed 0)."""
    if isinstance(source, RowSource):
        readers = [source.iter_rows(batch_size, site=site, max_rows=max_tokens) for site in sites]
        yield from (torch.cat(rows, -1) for rows in zip(*readers, strict=True))
        return
    if max_tokens is None:
        raise DataError(f"{type(source).__name__} cannot be read once in order; give max_tokens")
    remaining = max_tokens
    for batch in source.batches(batch_size, seed=0):
        yield torch.cat([batch[site].x[:remaining] for site in sites], -1)
        remaining -= batch_size
        if remaining <= 0:
            return


@torch.no_grad()
def evaluate_on_model(
    sae: SAE,
    model: nn.Module,
    tokens: Tensor,
    *,
    skip_positions: int,
    context_batch_size: int,
    dense_threshold: float,
    progress: bool,
) -> dict[str, Any]:
    """The crosscoder's activation metrics on the model's activations at its sites for ``tokens``, and the
    downstream metrics of replacing all its sites at once."""
    if any("/" in site for site in sae.sites):
        raise DataError(
            f"the crosscoder reads sites {list(sae.sites)} of several models; no one model can be spliced: evaluate it "
            'on activations (a [data] kind = "models" source)'
        )
    sums = _Sums(sae, sae.W_dec.device)
    width = sums.width

    def reconstruct(kept: dict[str, Tensor]) -> dict[str, Tensor]:
        shape = next(iter(kept.values())).shape
        x = torch.cat([kept[site].reshape(-1, shape[-1]) for site in sae.sites], -1).to(sae.W_dec)
        codes = sae.encode(x)
        x_hat = sae.reconstruct(x, codes)
        sums.update(x, x_hat, codes)
        return {site: x_hat[:, j * width : (j + 1) * width].reshape(shape) for j, site in enumerate(sae.sites)}

    downstream = joint_downstream_metrics(
        model,
        tokens,
        list(sae.sites),
        reconstruct,
        skip_positions=skip_positions,
        batch_size=context_batch_size,
        progress=progress,
    )
    return {**sums.result(dense_threshold), **downstream.as_dict()}
