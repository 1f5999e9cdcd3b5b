"""A training step's numbers checked once per step, with one host synchronisation for all SAEs: a
non-finite loss or activation, and a divergence that stays finite, stop the run with the culprit named."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from saekit.comm import LOCAL, Comm
from saekit.errors import DataError, DivergedError
from saekit.sae.base import SAE
from saekit.training.normalise import OUTLIER_NORM
from saekit.types import ActBatch, LossOut

DIVERGED_MSE = 100.0
"""A step whose reconstruction error is this many times the energy of the SAE's input rows (mean ||x||²,
the error of reconstructing nothing) has diverged, finite or not: the run stops instead of training on
to FVU 1e29."""


def check_step(
    saes: Sequence[SAE],
    members: Sequence[int],
    sites: Sequence[str],
    batch: Mapping[str, ActBatch],
    losses: Sequence[Tensor],
    outs: Mapping[int, LossOut],
    step: int,
    energy: Tensor,
    comm: Comm = LOCAL,
    agree: Comm = LOCAL,
) -> None:
    """Raise if a unit's loss is not finite, or the reconstruction error (``terms["mse"]``, in
    normalised units) of an SAE of ``members`` (those this process trained) exceeds
    :data:`DIVERGED_MSE` times its ``energy`` ([n_saes], :func:`energies` of a batch of the run:
    batches differ far less than the factor, and measuring one batch keeps the check free).

    ``comm``: the ranks that share these SAEs' batch (data parallel), whose numbers are summed first so
    that all decide alike; ``agree``: the ranks that each judged SAEs of their own (site parallel),
    which share their verdicts so that all stop together, the failing rank naming its SAE."""
    mses = torch.stack([outs[i].terms["mse"].float() for i in members])
    energy = energy[list(members)].to(mses.device, non_blocking=True)
    totals = torch.stack([loss.float() for loss in losses])
    if comm.distributed:  # every rank decides on the same (global) numbers, so all stop together
        mses, totals = comm.sum_(mses) / comm.world_size, comm.sum_(totals)
    finite = totals.isfinite().all()
    healthy = bool(finite & (mses <= DIVERGED_MSE * energy).all())
    if agree.distributed and not bool(agree.min_(torch.tensor([float(healthy)], device=mses.device)) > 0) and healthy:
        raise DivergedError(f"training stopped at step {step}: an SAE trained on another rank diverged; that rank's error names it")
    if healthy:
        return
    _raise_bad_rows(sites, batch, step)
    if not bool(finite):
        _raise_non_finite(saes, members, outs, step, comm)
    k = int((mses / energy.clamp_min(1e-30)).argmax())
    i = members[k]
    raise DivergedError(
        f"SAE {i} ({saes[i].architecture}) diverged at step {step}: its reconstruction error is "
        f"{float(mses[k]):.3g}, {float(mses[k] / energy[k].clamp_min(1e-30)):.3g} times the energy of the activations "
        "it reconstructs; lower its learning rate (lr) or enable grad_clip"
    )


def energies(reconstructed: Sequence[Sequence[str]], scales: Mapping[str, float], batch: Mapping[str, ActBatch]) -> Tensor:
    """[n_saes] the mean squared norm of the rows each SAE reconstructs in the batch, in normalised units
    (a crosscoder's rows are its sites' side by side: the sum of theirs)."""
    used = {site for sites in reconstructed for site in sites}
    per_site = {site: batch[site].x.float().pow(2).sum(-1).mean() * scales[site] ** 2 for site in used}
    return torch.stack([torch.stack([per_site[site] for site in sites]).sum() for sites in reconstructed])


def _raise_bad_rows(sites: Sequence[str], batch: Mapping[str, ActBatch], step: int) -> None:
    """The data's fault before the learning rate's: a NaN or infinite activation, or an outlier row
    (:data:`~saekit.training.normalise.OUTLIER_NORM` times the batch's median norm) that no learning rate
    reconstructs."""
    for site in sorted(set(sites)):
        x = batch[site].x
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            row = int(bad.any(-1).nonzero()[0])
            raise DataError(
                f"activations at site {site!r} contain {int(bad.sum())} NaN or inf values "
                f"(first in row {row} of the batch at step {step})"
            )
        sq = x.double().pow(2).sum(-1)
        median = float(sq.median())
        row = int(sq.argmax())
        if median > 0 and float(sq[row]) > OUTLIER_NORM**2 * median:
            raise DataError(
                f"activations at site {site!r}: row {row} of the batch at step {step} has norm "
                f"{math.sqrt(float(sq[row])):.3g}, {math.sqrt(float(sq[row]) / median):.3g} times the batch's median norm; "
                "an outlier this large dominates training: remove it from the data"
            )


def _raise_non_finite(saes: Sequence[SAE], members: Sequence[int], outs: Mapping[int, LossOut], step: int, comm: Comm) -> None:
    for i in members:
        sae = saes[i]
        if not bool(torch.isfinite(outs[i].loss.detach())):
            raise DivergedError(
                f"SAE {i} ({sae.architecture}) diverged at step {step}: loss is {float(outs[i].loss.detach())}; "
                "lower its learning rate (lr) or enable grad_clip"
            )
    if comm.distributed:
        raise DivergedError(f"a loss on another rank is not finite at step {step}; its own error names the SAE")
    raise DivergedError(f"a group objective's term is not finite at step {step}; lower its coefficient or the learning rates")
