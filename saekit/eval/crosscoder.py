"""Evaluating an SAE over several sites: a crosscoder (:mod:`saekit.sae.crosscoder`), which reads and
reconstructs its sites side by side, and a cross-layer transcoder (:mod:`saekit.sae.clt`), which reads
its ``sites`` and reconstructs its ``sites_out``.

The activation metrics are computed on the whole output row (its sites side by side, in raw units)
and, as ``fvu_by_site``, at each output site alone: the sites of a model differ in scale by an order
of magnitude, so the FVU of the whole row is mostly the largest site's. With a model, the downstream
metrics are those of replacing every output site at once with what the SAE computes from the clean
pass's activations (:func:`saekit.eval.downstream.joint_downstream_metrics`; for a cross-layer
transcoder this is open loop: a later MLP's replacement is not fed the earlier replacements). An SAE
over several models (sites ``"name/site"`` of a models source) has no one model to splice into and is
evaluated on activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    """The totals of the whole output row and of each output site's block of it."""

    def __init__(self, sae: SAE, device: torch.device) -> None:
        self.sites = sae.sites_out
        self.width = sae.d_out // len(self.sites)
        self.whole = Totals(sae.d_out, sae.d_sae, device)
        self.per_site = [Totals(self.width, sae.d_sae, device) for _ in self.sites]

    def update(self, y: Tensor, y_hat: Tensor, codes: Tensor) -> None:
        self.whole.update(y, y_hat, codes)
        for j, totals in enumerate(self.per_site):
            block = slice(j * self.width, (j + 1) * self.width)
            totals.update(y[:, block], y_hat[:, block], codes)

    def result(self, sae: SAE, dense_threshold: float) -> dict[str, Any]:
        by_site = {site: t.result(dense_threshold)["fvu"] for site, t in zip(self.sites, self.per_site)}
        outs = {"sites_out": list(sae.sites_out)} if sae.transcoder else {}
        return {"sites": list(sae.sites), **outs, **self.whole.result(dense_threshold), "fvu_by_site": by_site}


def check_sites(sae: SAE, available: tuple[str, ...], width_of: Callable[[str], int]) -> None:
    """The SAE's sites and output sites are all ``available``, each of its block's width."""
    for sites, width, what in ((sae.sites, sae.d_in, "reads"), (sae.sites_out, sae.d_out, "writes")):
        if missing := [site for site in sites if site not in available]:
            raise DataError(f"the {sae.architecture} SAE {what} sites {list(sites)}, but the activations have {list(available)}: {missing} missing")
        widths = {site: width_of(site) for site in sites}
        if sum(widths.values()) != width or len(set(widths.values())) != 1:
            raise DataError(f"the {sae.architecture} SAE {what} {width} wide over {len(sites)} sites, but their widths are {widths}")


@torch.no_grad()
def evaluate_activations(
    sae: SAE, source: ActivationSource, batch_size: int, max_tokens: int | None, device: str | torch.device | None, dense_threshold: float
) -> dict[str, Any]:
    """The SAE's activation metrics over ``source``, its sites read once in order, side by side."""
    check_sites(sae, tuple(source.sites), source.d_in)
    home = next(sae.parameters()).device
    where = resolve_device(device) if device is not None else home
    sae.to(where)
    try:
        sums = _Sums(sae, where)
        for rows in _rows(source, list(dict.fromkeys([*sae.sites, *sae.sites_out])), batch_size, max_tokens):
            x, y = _side_by_side(rows, sae.sites, sae.W_dec), _side_by_side(rows, sae.sites_out, sae.W_dec)
            codes = sae.encode(x)
            sums.update(y, sae.reconstruct(x, codes), codes)
    finally:
        sae.to(home)
    if sums.whole.tokens == 0:
        raise DataError("no activations were read, so there is nothing to evaluate")
    return sums.result(sae, dense_threshold)


def _side_by_side(rows: dict[str, Tensor], sites: tuple[str, ...], like: Tensor) -> Tensor:
    return torch.cat([rows[site].reshape(-1, rows[site].shape[-1]) for site in sites], -1).to(like)


def _rows(source: ActivationSource, sites: list[str], batch_size: int, max_tokens: int | None) -> Iterator[dict[str, Tensor]]:
    """Each batch's rows of ``sites`` (site -> rows), once in order (in-order readers, or the stream from seed 0)."""
    if isinstance(source, RowSource):
        readers = [source.iter_rows(batch_size, site=site, max_rows=max_tokens) for site in sites]
        yield from (dict(zip(sites, rows)) for rows in zip(*readers, strict=True))
        return
    if max_tokens is None:
        raise DataError(f"{type(source).__name__} cannot be read once in order; give max_tokens")
    remaining = max_tokens
    for batch in source.batches(batch_size, seed=0):
        yield {site: batch[site].x[:remaining] for site in sites}
        remaining -= batch_size
        if remaining <= 0:
            return


@torch.no_grad()
def evaluate_on_model(
    sae: SAE, model: nn.Module, tokens: Tensor, *, skip_positions: int, context_batch_size: int, dense_threshold: float, progress: bool
) -> dict[str, Any]:
    """The SAE's activation metrics on the model's activations at its sites for ``tokens``, and the
    downstream metrics of replacing all its output sites at once."""
    if any("/" in site for site in (*sae.sites, *sae.sites_out)):
        raise DataError(
            f"the {sae.architecture} SAE reads sites {list(sae.sites)} of several models; no one model can be spliced: "
            "evaluate it on activations (a [data] kind = \"models\" source)"
        )
    sums = _Sums(sae, sae.W_dec.device)

    def reconstruct(kept: dict[str, Tensor]) -> dict[str, Tensor]:
        shape = kept[sae.sites_out[0]].shape
        x, y = _side_by_side(kept, sae.sites, sae.W_dec), _side_by_side(kept, sae.sites_out, sae.W_dec)
        codes = sae.encode(x)
        y_hat = sae.reconstruct(x, codes)
        sums.update(y, y_hat, codes)
        return {site: y_hat[:, j * sums.width : (j + 1) * sums.width].reshape(shape) for j, site in enumerate(sae.sites_out)}

    downstream = joint_downstream_metrics(
        model, tokens, list(sae.sites_out), reconstruct, reads=list(sae.sites),
        skip_positions=skip_positions, batch_size=context_batch_size, progress=progress,
    )  # fmt: skip
    return {**sums.result(sae, dense_threshold), **downstream.as_dict()}
