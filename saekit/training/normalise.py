"""Activation normalisation: one scale estimator, and moving SAEs between raw and normalised units.

While training, each site's activations are multiplied by one fixed factor ``s`` with E||s·x||² = 1,
so that a fresh SAE's settings (thresholds, bandwidths, sparsity coefficients) mean the same thing
whatever the model. At the end the factor is folded into the weights, so trained SAEs take raw
activations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from saekit.errors import DataError
from saekit.sae import functional as F
from saekit.sae.base import SAE
from saekit.types import ActivationSource

OUTLIER_NORM = 1000.0
"""A row whose norm is this many times the median norm is an outlier: real models' largest activations
(attention sinks, "massive activations") stay within a few hundred times the median, while one corrupted
row of norm 1e6 would set the normalisation alone and scale every other row to about zero."""


@torch.no_grad()
def estimate_scales(source: ActivationSource, sites: set[str], batch_size: int, seed: int, n_tokens: int) -> dict[str, float]:
    """Per site, the factor s with E||s·x||² = 1 over the stream's first ``n_tokens`` rows (at least one
    batch). A row :data:`OUTLIER_NORM` times the median norm or more is refused by its stream position,
    since it would decide the factor alone; so is a site whose rows are all zero."""
    sq_norms: dict[str, list[torch.Tensor]] = {site: [] for site in sites}
    count = 0
    for batch in source.batches(batch_size, seed=seed, start=0):
        for site in sites:
            x = batch[site].x.double()
            if not torch.isfinite(x).all():
                raise DataError(f"activations at site {site!r} contain NaN or inf")
            sq_norms[site].append(x.pow(2).sum(-1))
        count += batch[next(iter(sites))].x.shape[0]
        if count >= n_tokens:
            break
    scales = {}
    for site in sorted(sites):
        sq = torch.cat(sq_norms[site])
        if float(sq.sum()) <= 0:
            raise DataError(f"activations at site {site!r} are all zero; cannot normalise them")
        _refuse_outliers(site, sq)
        scales[site] = math.sqrt(sq.numel() / float(sq.sum()))
    return scales


def _refuse_outliers(site: str, sq: torch.Tensor) -> None:
    median = float(sq.median())
    bad = (sq > OUTLIER_NORM**2 * median).nonzero().flatten() if median > 0 else sq.new_zeros(0, dtype=torch.long)
    if bad.numel():
        row = int(bad[sq[bad].argmax()])
        raise DataError(
            f"activations at site {site!r}: row {row} of the stream has norm {math.sqrt(float(sq[row])):.3g}, "
            f"{math.sqrt(float(sq[row]) / median):.3g} times the median norm {math.sqrt(median):.3g} of the first "
            f"{sq.numel()} rows ({bad.numel()} such row(s)); an outlier this large would set the normalisation and "
            f"dominate training: remove rows with norm above {OUTLIER_NORM * math.sqrt(median):.3g} from the data"
        )


@torch.no_grad()
def rescale_(sae: SAE, factor: float) -> None:
    """Multiply the tensors in activation units by ``factor`` (factor = s enters normalised units,
    1/s returns to raw units); weights are unit-free and stay as they are."""
    tensors = dict(sae.named_parameters()) | dict(sae.named_buffers())
    for name in sae.scaled_params:
        tensors[name].mul_(factor)


def was_trained(sae: SAE) -> bool:
    """Whether ``sae`` comes out of training (saekit's, or another library's through io.convert): its
    ``b_dec`` is then kept when training continues, instead of being re-initialised from the data."""
    return "normalization_factor" in sae.metadata or "converted_from" in sae.metadata


@torch.no_grad()
def enter_normalised_units_(sae: SAE, x: torch.Tensor, scale: float) -> None:
    """Prepare ``sae`` for training on activations already multiplied by ``scale`` (``x`` is the first
    such batch). A trained SAE lives in raw units and is rescaled into normalised ones. A fresh SAE's
    hyper-parameters (threshold_init, bandwidth, coefficients) are defined in normalised units, so it
    is left as it is, whatever the raw scale of the data, and only its ``b_dec`` is initialised."""
    if was_trained(sae):
        rescale_(sae, scale)
    elif sae.b_dec_init == "geometric_median":
        sae.b_dec.copy_(F.geometric_median(x))
    elif sae.b_dec_init == "mean":
        sae.b_dec.copy_(x.mean(0))


def leave_normalised_units_(sae: SAE, site: str, scales: Mapping[str, float]) -> None:
    """Fold the factor back into the weights and record it (``normalization_factor``)."""
    rescale_(sae, 1.0 / scales[site])
    sae.metadata.setdefault("site", site)
    sae.metadata["normalization_factor"] = scales[site]
