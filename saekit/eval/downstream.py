"""What the model loses when a site's activations are replaced: spliced next-token loss, the loss
recovered against zero- and mean-ablation, and KL(original ‖ spliced).

Every context is run once clean, once zero-ablated, once per reconstruction and (after the mean is
known) once mean-ablated, batch by batch, so memory stays at a few batches of logits whatever the
number of tokens. Several reconstructions of the same site share the clean and ablated passes.

A transcoder's reconstruction of its output site (an MLP's output, say) is computed from its input
site in the same forward pass (:func:`saekit.sources.hf.splice_from`): the spliced loss is the model's
with that sublayer replaced by the transcoder, and the ablations are those of the output site.

Conventions (papers.md §0, the Gemma Scope paper's):

* Only positions ``>= skip_positions`` are replaced, and only the predictions made at those positions
  count (logits at ``t`` scored on token ``t + 1``, for ``skip_positions <= t < T - 1``). Position 0 is
  BOS, whose activations are unlike any other token's; some models (SmolLM2) also have massive
  activations at position 1, hence a parameter.
* ``loss_recovered_zero = (CE_zero − CE_spliced) / (CE_zero − CE_clean)``: 1 for a perfect
  reconstruction, 0 for one as bad as writing zeros; ``loss_recovered_mean`` likewise with the site's
  mean activation (over the same tokens and positions) in place of zeros.
* ``kl`` is the mean over scored positions of KL(p_clean ‖ p_spliced) in nats; ``zero_ablation_kl``
  the same with the site zeroed (the yardstick of SAEBench's ``kl_div_score``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from saekit.errors import DataError
from saekit.models.load import LoadedModel, as_module
from saekit.sae.base import SAE
from saekit.sources.hf import collect_activations_and_grads, record, splice, splice_from

Reconstruction = SAE | Callable[[Tensor], Tensor]
"""An SAE, or a function mapping the kept activations ``[batch, positions, d]`` to their replacement (a
transcoder maps its input site's activations to its output site's)."""


class CleanActivations(NamedTuple):
    """What a clean pass over one batch of contexts recorded, positions ``>= skip_positions`` only.

    site:   [batch, T − skip, d] the activations of the site replaced.
    grad:   their gradients (:func:`site_grads`), where an SAE among the reconstructions selects with them.
    inputs: the input site's activations of each transcoder among the reconstructions, by site.
    """

    site: Tensor
    grad: Tensor | None
    inputs: dict[str, Tensor]


@dataclass(frozen=True)
class DownstreamMetrics:
    """Next-token losses (nats per scored token) with the site clean, replaced and ablated."""

    clean_ce: float
    spliced_ce: float
    delta_ce: float
    """spliced_ce − clean_ce: the delta LM loss."""
    zero_ablation_ce: float
    mean_ablation_ce: float
    loss_recovered_zero: float
    loss_recovered_mean: float
    kl: float
    """Mean KL(p_clean ‖ p_spliced) per scored token."""
    zero_ablation_kl: float
    """Mean KL(p_clean ‖ p_zeroed) per scored token, the site zeroed."""
    scored_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Sums:
    """Per-batch sums, merged after the loop."""

    nll: float
    kl: float


def recovered(ablated: float, spliced: float, clean: float) -> float:
    """Fraction of the loss gap between an ablation and the clean model closed by the reconstruction."""
    gap = ablated - clean
    return (ablated - spliced) / gap if gap != 0 else float("nan")


def as_function(reconstruct: Reconstruction, grad: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """A reconstruction as a function of ``[batch, positions, d]`` activations, run in the SAE's dtype.

    ``grad`` (the same shape as the activations the function will get) is d(summed next-token
    loss)/d(activation): an SAE whose ``uses_grad`` is True then encodes with it, as it was trained;
    without it such an SAE uses its rule without a gradient."""
    if not isinstance(reconstruct, SAE):
        return reconstruct
    sae = reconstruct

    def through_sae(h: Tensor) -> Tensor:
        if h.shape[-1] != sae.d_in:
            raise DataError(f"SAE with d_in={sae.d_in} cannot replace activations of width {h.shape[-1]}")
        rows = h.reshape(-1, h.shape[-1]).to(sae.W_dec.device, sae.W_dec.dtype)
        if sae.uses_grad and grad is not None:
            codes = sae.encode_with_grad(rows, grad.reshape(rows.shape).to(rows))
        else:
            codes = sae.encode(rows)
        return sae.reconstruct(rows, codes).reshape(*h.shape[:-1], sae.d_out).to(h.device)

    return through_sae


def site_grads(model: nn.Module, part: Tensor, site: str, skip: int) -> Tensor:
    """d(next-token loss summed over the context's predictions)/d(activation) at ``site``, positions
    ``>= skip``: what a gradient-aware SAE was trained with (:class:`saekit.sources.model.ModelSource`)."""
    return collect_activations_and_grads(model, part, [site], reduction="sum").grads[site][:, skip:]


@torch.no_grad()
def downstream_metrics(
    model: nn.Module | LoadedModel,
    tokens: Tensor,
    site: str,
    reconstruct: Reconstruction,
    *,
    skip_positions: int = 1,
    batch_size: int = 8,
    progress: bool = False,
) -> DownstreamMetrics:
    """Downstream metrics of one reconstruction of ``site`` over the contexts ``tokens [n, T]``."""
    return downstream_metrics_many(
        model, tokens, site, {"_": reconstruct}, skip_positions=skip_positions, batch_size=batch_size, progress=progress
    )["_"]


@torch.no_grad()
def downstream_metrics_many(
    model: nn.Module | LoadedModel,
    tokens: Tensor,
    site: str,
    reconstructions: Mapping[str, Reconstruction],
    *,
    skip_positions: int = 1,
    batch_size: int = 8,
    on_clean_activations: Callable[[CleanActivations], None] | None = None,
    progress: bool = False,
) -> dict[str, DownstreamMetrics]:
    """Downstream metrics of several reconstructions of the same ``site``, sharing the clean and ablated
    passes. ``on_clean_activations`` receives each batch's :class:`CleanActivations` (the site's, their
    gradients where an SAE among the reconstructions selects with them, and the transcoders' input
    sites'), so activation metrics can be computed in the same pass. An SAE whose ``uses_grad`` is True
    is spliced with its gradient-aware codes (one more forward and backward pass per batch gives the
    gradients); a transcoder, whose ``site_out`` must be ``site``, from its input site in the same pass."""
    model = as_module(model)
    tokens = _check_tokens(tokens, skip_positions)
    model.eval()
    device = next(model.parameters()).device
    needs_grad = any(isinstance(rec, SAE) and rec.uses_grad for rec in reconstructions.values())
    reads = {name: _input_site(rec, site) for name, rec in reconstructions.items()}
    skip = skip_positions

    clean: list[_Sums] = []
    zero: list[_Sums] = []
    spliced: dict[str, list[_Sums]] = {name: [] for name in reconstructions}
    site_sum: Tensor | None = None
    site_rows = 0
    batches = list(_batches(tokens, batch_size))
    steps = len(batches) * (3 + len(reconstructions))
    bar = tqdm(total=steps, desc=f"downstream {site}", unit="pass", disable=not progress, leave=False)

    for part in batches:
        part = part.to(device)
        clean_logp, kept, inputs = _clean_pass(model, part, site, {r for r in reads.values() if r is not None}, skip)
        bar.update()
        kept_grad = site_grads(model, part, site, skip) if needs_grad else None
        if on_clean_activations is not None:
            on_clean_activations(CleanActivations(kept, kept_grad, inputs))
        batch_sum = kept.double().sum(dim=(0, 1))
        site_sum = batch_sum if site_sum is None else site_sum + batch_sum
        site_rows += kept.shape[0] * kept.shape[1]
        clean.append(_Sums(nll=_nll_sum(clean_logp, part, skip), kl=0.0))

        zero.append(_scored(model, part, site, skip, lambda h: torch.zeros_like(h), clean_logp))
        bar.update()
        for name, rec in reconstructions.items():
            spliced[name].append(_scored(model, part, site, skip, as_function(rec, kept_grad), clean_logp, reads[name]))
            bar.update()
        del clean_logp

    assert site_sum is not None
    mean = _mean_ablated(model, batches, site, skip, site_sum / site_rows, bar)
    bar.close()
    scored = tokens.shape[0] * (tokens.shape[1] - 1 - skip)
    return {name: _metrics(clean, zero, mean, sums, scored) for name, sums in spliced.items()}


JointReconstruction = Callable[[dict[str, Tensor]], dict[str, Tensor]]
"""A reconstruction of several sites at once from all of them (a crosscoder): site -> ``[batch, T − skip, d]``
clean activations in, site -> their replacements out."""


@torch.no_grad()
def joint_downstream_metrics(
    model: nn.Module | LoadedModel,
    tokens: Tensor,
    sites: list[str],
    reconstruct: JointReconstruction,
    *,
    reads: Sequence[str] = (),
    skip_positions: int = 1,
    batch_size: int = 8,
    progress: bool = False,
) -> DownstreamMetrics:
    """Downstream metrics of replacing every site of ``sites`` at once: each batch of contexts is run
    clean, recording every site (and the sites of ``reads``); ``reconstruct`` maps the recorded
    activations to the replacements of ``sites``, and the batch is run again with all of them spliced
    in (a crosscoder reads later sites than some it writes, so its replacements come from the clean
    pass). The ablations zero, or set to their mean, every site of ``sites`` at once."""
    model = as_module(model)
    tokens = _check_tokens(tokens, skip_positions)
    model.eval()
    device = next(model.parameters()).device
    skip = skip_positions
    clean: list[_Sums] = []
    zero: list[_Sums] = []
    spliced: list[_Sums] = []
    sums: dict[str, Tensor] = {}
    batches = list(_batches(tokens, batch_size))
    bar = tqdm(total=len(batches) * 4, desc=f"downstream {'+'.join(sites)}", unit="pass", disable=not progress, leave=False)
    for part in batches:
        part = part.to(device)
        recorded: dict[str, Tensor] = {}
        with record(model, list(dict.fromkeys([*sites, *reads])), recorded):
            clean_logp = _log_probs(model, part, skip)
        kept = {site: h[:, skip:].detach() for site, h in recorded.items()}
        replaced = reconstruct(kept)
        for site in sites:
            sums[site] = sums.get(site, 0) + kept[site].double().sum(dim=(0, 1))
        clean.append(_Sums(nll=_nll_sum(clean_logp, part, skip), kl=0.0))
        zero.append(_scored_sites(model, part, skip, {site: lambda h: torch.zeros_like(h) for site in sites}, clean_logp))
        spliced.append(_scored_sites(model, part, skip, {site: _fixed(replaced[site]) for site in sites}, clean_logp))
        bar.update(3)
    rows = tokens.shape[0] * (tokens.shape[1] - skip)
    means = {site: _fixed_mean(total / rows) for site, total in sums.items()}
    mean = []
    for part in batches:
        mean.append(_scored_sites(model, part.to(device), skip, means, None))
        bar.update()
    bar.close()
    return _metrics(clean, zero, mean, spliced, tokens.shape[0] * (tokens.shape[1] - 1 - skip))


def _fixed(replacement: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda h: replacement.to(h.device, h.dtype)


def _fixed_mean(mean: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda h: mean.to(h.device, h.dtype).expand_as(h)


def _scored_sites(
    model: nn.Module, part: Tensor, skip: int, fns: Mapping[str, Callable[[Tensor], Tensor]], clean_logp: Tensor | None
) -> _Sums:
    """:func:`_scored` with several sites replaced in the same pass."""
    with contextlib.ExitStack() as stack:
        for site, fn in fns.items():
            stack.enter_context(splice(model, site, fn, start=skip))
        logp = _log_probs(model, part, skip)
    kl = float(F.kl_div(logp, clean_logp, log_target=True, reduction="sum")) if clean_logp is not None else 0.0
    return _Sums(nll=_nll_sum(logp, part, skip), kl=kl)


def _input_site(rec: Reconstruction, site: str) -> str | None:
    """The site a transcoder reads, checked to write ``site``; None for any other reconstruction."""
    if not isinstance(rec, SAE) or not rec.transcoder:
        return None
    if rec.require_site_out() != site:
        raise DataError(f"a {rec.architecture} transcoder writes {rec.site_out!r}, not {site!r}: evaluate it at its own output site")
    return rec.require_site()


def _clean_pass(model: nn.Module, part: Tensor, site: str, inputs: set[str], skip: int) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """The clean log-probabilities of ``part``, the site's activations and those of the ``inputs`` sites
    at positions ``>= skip``, recorded in the same forward pass."""
    recorded: dict[str, Tensor] = {}
    with record(model, [site, *sorted(inputs - {site})], recorded):
        clean_logp = _log_probs(model, part, skip)
    return clean_logp, recorded[site][:, skip:].detach(), {name: recorded[name][:, skip:].detach() for name in inputs}


def _mean_ablated(
    model: nn.Module, batches: list[Tensor], site: str, skip: int, mean_activation: Tensor, bar: tqdm
) -> list[_Sums]:
    """Every batch run again with positions ``>= skip`` of ``site`` replaced by ``mean_activation``."""
    device = next(model.parameters()).device
    mean: list[_Sums] = []
    for part in batches:
        part = part.to(device)
        # KL is not reported for the mean ablation: only its loss is needed.
        mean.append(_scored(model, part, site, skip, lambda h: mean_activation.to(h.dtype).expand_as(h), None))
        bar.update()
    return mean


def _metrics(clean: list[_Sums], zero: list[_Sums], mean: list[_Sums], spliced: list[_Sums], scored: int) -> DownstreamMetrics:
    """One reconstruction's metrics from the per-batch sums of every pass, over ``scored`` predictions."""
    clean_ce = sum(s.nll for s in clean) / scored
    zero_ce = sum(s.nll for s in zero) / scored
    mean_ce = sum(s.nll for s in mean) / scored
    spliced_ce = sum(s.nll for s in spliced) / scored
    return DownstreamMetrics(
        clean_ce=clean_ce,
        spliced_ce=spliced_ce,
        delta_ce=spliced_ce - clean_ce,
        zero_ablation_ce=zero_ce,
        mean_ablation_ce=mean_ce,
        loss_recovered_zero=recovered(zero_ce, spliced_ce, clean_ce),
        loss_recovered_mean=recovered(mean_ce, spliced_ce, clean_ce),
        kl=sum(s.kl for s in spliced) / scored,
        zero_ablation_kl=sum(s.kl for s in zero) / scored,
        scored_tokens=scored,
    )


def _scored(
    model: nn.Module, part: Tensor, site: str, skip: int, fn: Callable[[Tensor], Tensor], clean_logp: Tensor | None, reads: str | None = None
) -> _Sums:
    """Run ``part`` with positions ``>= skip`` of ``site`` replaced by ``fn`` of them (of the ``reads``
    site's, computed in the same pass, when given); sum NLL and KL."""
    with splice(model, site, fn, start=skip) if reads is None else splice_from(model, reads, site, fn, start=skip):
        logp = _log_probs(model, part, skip)
    kl = 0.0
    if clean_logp is not None:
        kl = float(F.kl_div(logp, clean_logp, log_target=True, reduction="sum"))
    return _Sums(nll=_nll_sum(logp, part, skip), kl=kl)


def _log_probs(model: nn.Module, part: Tensor, skip: int) -> Tensor:
    """Log-probabilities of the predictions made at positions skip .. T-2, in float32 or the model's
    own dtype if wider (a float64 model gives float64 metrics)."""
    logits = model(part).logits[:, skip:-1]
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def _nll_sum(logp: Tensor, part: Tensor, skip: int) -> float:
    targets = part[:, skip + 1 :]
    return float(-logp.gather(-1, targets.unsqueeze(-1)).double().sum())


def _batches(tokens: Tensor, batch_size: int) -> Iterator[Tensor]:
    for start in range(0, tokens.shape[0], batch_size):
        yield tokens[start : start + batch_size]


def _check_tokens(tokens: Tensor, skip: int) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.int32, torch.int64):
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise DataError(f"tokens must be an integer tensor [contexts, positions], got {shape}")
    if skip < 0:
        raise DataError(f"skip_positions must be >= 0, got {skip}")
    if tokens.shape[1] < skip + 2:
        raise DataError(
            f"contexts of {tokens.shape[1]} tokens leave no prediction to score after skipping {skip} position(s)"
        )
    if tokens.shape[0] == 0:
        raise DataError("no contexts to evaluate")
    return tokens.long()
