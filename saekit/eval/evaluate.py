"""Evaluate an SAE on a stream of activations, reading the data once, in order, batch by batch.

A transcoder is scored on the site it reconstructs: every metric compares its output with the
activations of its ``site_out``, read in the same order as those of the site it reads (its FVU is the
output site's), and with a model its output replaces that site, computed from its input site in the
same forward pass. A crosscoder is scored on its sites side by side and at each site
(:mod:`saekit.eval.crosscoder`). Only running sums are kept (:class:`saekit.eval.totals.Totals`), so
memory does not grow with the number of tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from saekit.devices import resolve_device
from saekit.errors import DataError
from saekit.eval import crosscoder
from saekit.eval.downstream import CleanActivations, as_function, downstream_metrics_many
from saekit.eval.totals import Totals
from saekit.models.load import LoadedModel, as_module
from saekit.sae.base import SAE
from saekit.sources.tensor import SourceInput, as_source, site_to_read
from saekit.types import ActivationSource, RowSource


class ReadoutBatch(NamedTuple):
    """One context batch of one SAE's readout, as :func:`evaluate_on_model` scores it: ``target [contexts,
    positions, d_out]`` the activations reconstructed (positions ``>= skip_positions``), ``x_hat`` and
    ``codes`` their reconstruction and codes, one row per (context, position)."""

    name: str
    target: Tensor
    x_hat: Tensor
    codes: Tensor



@torch.no_grad()
def evaluate(
    sae: SAE,
    activations: SourceInput | ActivationSource | None = None,
    *,
    model: nn.Module | LoadedModel | None = None,
    site: str | None = None,
    tokens: Tensor | None = None,
    skip_positions: int = 1,
    context_batch_size: int = 8,
    batch_size: int = 4096,
    max_tokens: int | None = None,
    device: str | torch.device | None = None,
    dense_threshold: float = 0.1,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics of ``sae``: on ``activations``, or on a model's activations at ``site`` for ``tokens``.

    With ``model=`` (an ``nn.Module`` or :class:`saekit.models.LoadedModel`) and ``tokens [n, T]``, the
    activation metrics below are computed on positions ``>= skip_positions`` of every context, and the
    downstream metrics of :mod:`saekit.eval.downstream` are added (``clean_ce, spliced_ce, delta_ce,
    zero_ablation_ce, mean_ablation_ce, loss_recovered_zero, loss_recovered_mean, kl, scored_tokens``)
    together with ``mse_by_position`` (index 0 is position ``skip_positions``); ``site`` defaults to
    ``sae.site``. See :func:`evaluate_on_model` for several SAEs at once.

    Otherwise the activation-only metrics of ``sae`` over ``activations``, read once in order:

    ``activations`` is anything :func:`saekit.sources.tensor.as_source` accepts. With several sites the
    one named by ``sae.site`` is read. ``max_tokens`` caps the tokens read and is required for endless
    sources (synthetic, or any source that cannot read in order and is then read through
    ``batches(seed=0)``). ``device`` defaults to the SAE's; an SAE elsewhere is moved there for the call
    and moved back afterwards.

    Returns ``l0, fvu, explained_variance, mse, nmse, cos, l2_ratio, relative_reconstruction_bias,
    dead_fraction, dense_fraction, density_histogram`` (see :mod:`saekit.eval.metrics` for definitions)
    and ``tokens``; for a gradient-aware SAE also ``readout = "plain"`` (activations carry no gradient;
    evaluate with a model for the gradient readout).
    """
    if model is not None:
        if activations is not None:
            raise DataError("give either activations or model= and tokens=, not both")
        return evaluate_on_model(
            {"_": sae},
            model=model,
            sites={"_": site} if site is not None else None,
            tokens=tokens,
            skip_positions=skip_positions,
            context_batch_size=context_batch_size,
            dense_threshold=dense_threshold,
            progress=progress,
        )["_"]
    if activations is None:
        raise DataError("nothing to evaluate on: give activations, or model= and tokens=")
    if max_tokens is not None and max_tokens <= 0:
        raise DataError(f"max_tokens must be positive, got {max_tokens}")
    return _evaluate_activations(sae, as_source(activations), batch_size, max_tokens, device, dense_threshold)


def _evaluate_activations(
    sae: SAE, source: ActivationSource, batch_size: int, max_tokens: int | None, device: str | torch.device | None, dense_threshold: float
) -> dict[str, Any]:
    """:func:`evaluate` without a model: the SAE's site of ``source`` read once, on ``device``."""
    if sae.crosscoder:
        return crosscoder.evaluate_activations(sae, source, batch_size, max_tokens, device, dense_threshold)
    site = _pick_site(source, sae)
    if source.d_in(site) != sae.d_in:
        raise DataError(f"site {site!r} has width {source.d_in(site)} but the SAE expects d_in={sae.d_in}")
    site_out = _output_site(source, sae)
    first_param = next(sae.parameters())
    home, dtype = first_param.device, first_param.dtype
    where = resolve_device(device) if device is not None else home
    sae.to(where)
    try:
        totals = Totals(sae.d_out, sae.d_sae, where)
        for x, y in _read_once(source, site, site_out, batch_size, max_tokens):
            x = x.to(where, dtype, non_blocking=True)
            codes = sae.encode(x)
            totals.update(y.to(where, dtype, non_blocking=True), sae.reconstruct(x, codes), codes)
    finally:
        sae.to(home)
    if totals.tokens == 0:
        raise DataError("no activations were read, so there is nothing to evaluate")
    # Activations alone carry no gradient: a gradient-aware SAE is read out by its rule without one.
    return totals.result(dense_threshold) | ({"readout": "plain"} if sae.uses_grad else {})


@torch.no_grad()
def evaluate_on_model(
    saes: Mapping[str, SAE],
    *,
    model: nn.Module | LoadedModel,
    tokens: Tensor | None,
    sites: Mapping[str, str] | None = None,
    skip_positions: int = 1,
    context_batch_size: int = 8,
    dense_threshold: float = 0.1,
    progress: bool = False,
    on_batch: Callable[[ReadoutBatch], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` with a model for every SAE of ``saes`` (by name), each at its own ``sae.site``
    unless ``sites`` names another (a crosscoder at all its sites: :mod:`saekit.eval.crosscoder`).
    ``on_batch`` receives every context batch of every one-site SAE's readout (as trained), for
    statistics beyond these, computed in the same pass.

    The SAEs of one site share its clean and ablated forward passes, so a suite costs
    ``3 + (SAEs on the site)`` forward passes per site over ``tokens``.

    An SAE that selects with the gradient (``uses_grad``, the g-SAE) is read out as it was trained:
    with d(next-token loss)/d(activation) at its site from the clean pass. Its result then also has
    ``readout = "gradient"`` and ``plain_readout``, the same metrics for the rule without a gradient
    (what a reader such as SAELens computes, and what runs where no gradient is at hand).
    """
    module = as_module(model)
    if tokens is None:
        raise DataError("evaluating on a model needs tokens= (an integer tensor [contexts, positions])")
    results: dict[str, dict[str, Any]] = {}
    for name, sae in saes.items():
        if sae.crosscoder:
            if name in (sites or {}):
                raise DataError(f"SAE {name!r} is a crosscoder: its sites are its metadata's sites, not sites=")
            results[name] = crosscoder.evaluate_on_model(
                sae, module, tokens, skip_positions=skip_positions, context_batch_size=context_batch_size,
                dense_threshold=dense_threshold, progress=progress,
            )  # fmt: skip
    one_site = {name: sae for name, sae in saes.items() if not sae.crosscoder}
    for site, group in _readouts_by_site(one_site, sites).items():
        activation_metrics = _SiteTotals(group, on_batch)
        downstream = downstream_metrics_many(
            module,
            tokens,
            site,
            {name: readout.sae if readout.with_grad or not readout.sae.uses_grad else as_function(readout.sae) for name, readout in group.items()},
            skip_positions=skip_positions,
            batch_size=context_batch_size,
            on_clean_activations=activation_metrics,
            progress=progress,
        )
        for name, readout in group.items():
            result = activation_metrics.result(name, dense_threshold, contexts=tokens.shape[0])
            sites_of = {"site": readout.sae.site, "site_out": site} if readout.sae.transcoder else {"site": site}
            results[name] = {**sites_of, **result, **downstream[name].as_dict()}
    for name, sae in saes.items():
        if sae.uses_grad:
            results[name] |= {"readout": "gradient", "plain_readout": results.pop(_PLAIN + name)}
    return {name: results[name] for name in saes}


_PLAIN = "\0plain:"
"""Key prefix of the extra readout without a gradient of a gradient-aware SAE (no user name starts so)."""


class _Readout(NamedTuple):
    sae: SAE
    with_grad: bool


def _readouts_by_site(saes: Mapping[str, SAE], sites: Mapping[str, str] | None) -> dict[str, dict[str, _Readout]]:
    """The readouts to compute on each site: every SAE as trained, and a gradient-aware one also plain."""
    by_site: dict[str, dict[str, _Readout]] = {}
    for name, sae in saes.items():
        if sae.transcoder:  # scored where it writes, reading its own input site
            if name in (sites or {}):
                raise DataError(f"SAE {name!r} is a transcoder: its sites are its metadata's site and site_out, not sites=")
            sae.require_site()
        site = sae.require_site_out() if sae.transcoder else (sites or {}).get(name) or sae.site
        if not site:
            raise DataError(f"SAE {name!r} has no site; pass site= or set sae.metadata['site']")
        by_site.setdefault(site, {})[name] = _Readout(sae, with_grad=sae.uses_grad)
        if sae.uses_grad:
            by_site[site][_PLAIN + name] = _Readout(sae, with_grad=False)
    return by_site


class _SiteTotals:
    """The activation metrics of a site's readouts, fed the clean activations of each context batch
    (``[contexts, positions, d]`` and, for gradient readouts, their gradients) by the downstream pass."""

    def __init__(self, group: Mapping[str, _Readout], on_batch: Callable[[ReadoutBatch], None] | None = None) -> None:
        self.group = group
        self.on_batch = on_batch
        self.totals: dict[str, Totals] = {}
        self.position_err: dict[str, Tensor] = {}

    def __call__(self, clean: CleanActivations) -> None:
        for name, (sae, with_grad) in self.group.items():
            param = sae.W_dec
            y = clean.site.to(param.device, param.dtype)  # what is reconstructed
            x = clean.inputs[sae.require_site()].to(y) if sae.transcoder else y  # what is read
            rows = x.reshape(-1, x.shape[-1])
            if with_grad:
                assert clean.grad is not None  # downstream_metrics_many computes it for uses_grad SAEs
                codes = sae.encode_with_grad(rows, clean.grad.reshape(rows.shape).to(rows))
            else:
                codes = sae.encode(rows)
            y_hat = sae.reconstruct(rows, codes)
            if name not in self.totals:
                self.totals[name] = Totals(sae.d_out, sae.d_sae, param.device)
                self.position_err[name] = torch.zeros(y.shape[1], dtype=torch.float64)
            self.totals[name].update(y.reshape(-1, y.shape[-1]), y_hat, codes)
            if self.on_batch is not None and not name.startswith(_PLAIN):
                self.on_batch(ReadoutBatch(name, y, y_hat, codes))
            self.position_err[name] += (y - y_hat.reshape(y.shape)).double().pow(2).sum(-1).sum(0).cpu()

    def result(self, name: str, dense_threshold: float, contexts: int) -> dict[str, Any]:
        """The metrics of readout ``name``, with ``mse_by_position`` over the ``contexts`` read."""
        result = self.totals[name].result(dense_threshold)
        result["mse_by_position"] = (self.position_err[name] / (contexts * self.group[name].sae.d_out)).tolist()
        return result


def _pick_site(source: ActivationSource, sae: SAE) -> str:
    sites = source.sites
    if len(sites) == 1:
        return sites[0]
    if sae.site in sites:
        return sae.site
    raise DataError(
        f"the activations have several sites {list(sites)} and the SAE's site ({sae.site!r}) is not one of "
        "them; set sae.metadata['site'] or pass a single-site source"
    )


def _output_site(source: ActivationSource, sae: SAE) -> str | None:
    """The site of ``source`` a transcoder reconstructs (None for an SAE): its ``site_out``, or the
    source's only site, as in training (:func:`saekit.training.sites.assign_targets`)."""
    if not sae.transcoder:
        return None
    site = site_to_read(sae.site_out, source.sites)
    if site is None:
        raise DataError(f"the activations have sites {list(source.sites)} but the transcoder writes {sae.site_out!r}; give a source with both of its sites")
    if source.d_in(site) != sae.d_out:
        raise DataError(f"site {site!r} has width {source.d_in(site)} but the transcoder writes d_out={sae.d_out}")
    return site


def _read_once(source: ActivationSource, site: str, site_out: str | None, batch_size: int, max_tokens: int | None) -> Iterator[tuple[Tensor, Tensor]]:
    """Pairs (rows read, rows reconstructed: the same unless ``site_out`` names another site), in order."""
    if isinstance(source, RowSource):
        ins = source.iter_rows(batch_size, site=site, max_rows=max_tokens)
        if site_out is None or site_out == site:
            yield from ((x, x) for x in ins)
        else:  # two in-order readers of the same rows, batch for batch
            yield from zip(ins, source.iter_rows(batch_size, site=site_out, max_rows=max_tokens), strict=True)
        return
    if max_tokens is None:
        raise DataError(f"{type(source).__name__} cannot be read once in order; give max_tokens")
    remaining = max_tokens
    for batch in source.batches(batch_size, seed=0):
        x = batch[site].x[:remaining]
        yield x, batch[site_out or site].x[:remaining]
        remaining -= x.shape[0]
        if remaining <= 0:
            return
