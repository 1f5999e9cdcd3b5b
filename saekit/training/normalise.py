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
from torch import Tensor

from saekit.errors import DataError
from saekit.sae import functional as F
from saekit.sae.base import SAE
from saekit.types import ActBatch, ActivationSource

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
def rescale_(sae: SAE, out_factor: float, in_factor: float | None = None) -> None:
    """Multiply the tensors in activation units (``scaled_params``: the units of what the SAE
    reconstructs) by ``out_factor`` and a transcoder's weights from input to output units
    (``ratio_params``) by ``out_factor / in_factor``: the factors (s_out, s_in) enter normalised units,
    (1/s_out, 1/s_in) return to raw ones. ``in_factor`` None is ``out_factor``: an SAE reads what it
    reconstructs, so both are its one site's. The other weights are unit-free and stay as they are."""
    in_factor = out_factor if in_factor is None else in_factor
    tensors = dict(sae.named_parameters()) | dict(sae.named_buffers())
    for name in sae.scaled_params:
        tensors[name].mul_(out_factor)
    for name in sae.ratio_params:
        if name in tensors:  # W_skip exists only in a skip transcoder
            tensors[name].mul_(out_factor / in_factor)


def was_trained(sae: SAE) -> bool:
    """Whether ``sae`` comes out of training (saekit's, or another library's through io.convert): its
    ``b_dec`` is then kept when training continues, instead of being re-initialised from the data."""
    return any(key in sae.metadata for key in ("normalization_factor", "normalization_factors", "converted_from"))


@torch.no_grad()
def rescale_sites_(sae: SAE, in_factors: Tensor, out_factors: Tensor) -> None:
    """The rescaling of an SAE over several sites (a crosscoder, a cross-layer transcoder): the positions
    of its input are scaled by ``in_factors`` [d_in] and those of its output by ``out_factors`` [d_out]
    (each position by its site's factor): the decoder's columns, ``b_dec`` and a skip map's rows with
    the output, the encoder's rows (and a skip map's columns) inversely with the input, so the codes stay
    as they are (in the units of normalised training: its sites have several scales, so no one raw unit
    exists for its codes). The factors enter normalised units, their inverses leave them."""
    tensors = dict(sae.named_parameters())
    in_factors, out_factors = in_factors.to(sae.W_dec), out_factors.to(sae.W_dec)
    sae.W_enc.div_(in_factors[:, None])
    sae.W_dec.mul_(out_factors)
    sae.b_dec.mul_(out_factors)
    if "W_skip" in tensors:  # [d_out, d_in]: output units over input units
        tensors["W_skip"].mul_(out_factors[:, None] / in_factors[None, :])


def site_factors(sites: tuple[str, ...], scales: Mapping[str, float], width: int) -> Tensor:
    """[len(sites) · width] each position's factor: its site's."""
    return torch.tensor([scales[site] for site in sites], dtype=torch.float64).repeat_interleave(width)


def _block_factors(sae: SAE, read: tuple[str, ...], written: tuple[str, ...], scales: Mapping[str, float]) -> tuple[Tensor, Tensor]:
    return site_factors(read, scales, sae.d_in // len(read)), site_factors(written, scales, sae.d_out // len(written))


@torch.no_grad()
def enter_normalised_units_(sae: SAE, batch: ActBatch, read: tuple[str, ...], written: tuple[str, ...], scales: Mapping[str, float]) -> None:
    """Prepare ``sae`` for training on activations already multiplied by their sites' ``scales``
    (``batch`` is the first such batch; ``read`` the sites it reads, ``written`` those it reconstructs:
    the same but for a transcoder). A trained SAE lives in raw units and is rescaled into normalised
    ones. A fresh SAE's hyper-parameters (threshold_init, bandwidth, coefficients) are defined in
    normalised units, so it is left as it is, whatever the raw scale of the data, and only its
    ``b_dec`` is initialised, from the rows it reconstructs."""
    if was_trained(sae):
        if len(read) == 1 and len(written) == 1:
            rescale_(sae, scales[written[0]], scales[read[0]])
        else:
            rescale_sites_(sae, *_block_factors(sae, read, written, scales))
    elif sae.b_dec_init == "geometric_median":
        sae.b_dec.copy_(F.geometric_median(sae.target_of(batch)))
    elif sae.b_dec_init == "mean":
        sae.b_dec.copy_(sae.target_of(batch).mean(0))


def leave_normalised_units_(sae: SAE, read: tuple[str, ...], written: tuple[str, ...] | None, scales: Mapping[str, float]) -> None:
    """Fold the factors back into the weights and record them: ``normalization_factor`` of the site read,
    for a transcoder (``written`` its output sites; None for an SAE) ``normalization_factor_out``, and
    for an SAE over several sites ``normalization_factors`` (and ``normalization_factors_out``), one per
    site in order."""
    out = written or read
    if len(read) != 1 or len(out) != 1:
        in_factors, out_factors = _block_factors(sae, read, out, scales)
        rescale_sites_(sae, 1.0 / in_factors, 1.0 / out_factors)
        sae.metadata.setdefault("sites", list(read))
        sae.metadata["normalization_factors"] = [scales[site] for site in read]
        if written is not None:
            sae.metadata.setdefault("sites_out", list(written))
            sae.metadata["normalization_factors_out"] = [scales[site] for site in written]
        return
    site, site_out = next(iter(read)), next(iter(out))
    scale_out = scales[site_out]
    rescale_(sae, 1.0 / scale_out, 1.0 / scales[site])
    sae.metadata.setdefault("site", site)
    sae.metadata["normalization_factor"] = scales[site]
    if written is not None:
        sae.metadata.setdefault("site_out", site_out)
        sae.metadata["normalization_factor_out"] = scale_out
