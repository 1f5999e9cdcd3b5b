"""SAE Match (Balagansky, Maksimov, Gavrilov, arXiv 2410.07656; papers.md §10): the features of SAEs
at adjacent layers matched one-to-one, without data, and chained across depth.

*Folding* makes latent scales comparable without changing any reconstruction. With decoder row
norms s_i and thresholds θ_i (1 where the architecture has none, or where θ_i is 0):

    W̃_dec[i] = θ_i · W_dec[i] / s_i · s_i = θ_i · W_dec[i]        (decoder norms fold away when θ exists)
    W̃_enc[:, i] = W_enc[:, i] / θ_i,   b̃_enc[i] = b_enc[i] / θ_i,   θ̃_i = 1,   f̃ = f / θ

and without thresholds, W̃_dec[i] = W_dec[i] / s_i (unit rows, codes multiplied by s_i). Either way
f̃ W̃_dec = f W_dec. The folded decoder row of a JumpReLU latent is the smallest vector it ever writes.

*Matching*: the permutation P minimising Σ_i ||W̃_dec^t[i] − W̃_dec^{t+1}[P(i)]||² (Hungarian), or the
same on the folded encoder columns, or on both. *Chaining*: P_{t→t+k} = P_{t+k−1} ∘ … ∘ P_t.

*Evaluation*: encode layer t with SAE t, move each latent's folded code to its match, decode with SAE
t+1's folded decoder, and compare with the real layer-(t+1) activation: FVU, and the next-token loss
with layer t+1 replaced by that approximation (the layer skipped), against the baseline x_{t+1} ≈ x_t.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from saekit.analysis.matching import assign, paired_cosine, squared_distance_matrix
from saekit.analysis.store import Stored, cpu_float
from saekit.errors import DataError
from saekit.eval.downstream import downstream_metrics_many
from saekit.eval.metrics import fvu
from saekit.eval.plots import pyplot, save_figure
from saekit.models.load import LoadedModel, as_module
from saekit.sae.base import SAE
from saekit.sources.hf import record

MatchOn = Literal["decoder", "encoder", "both"]


class Folded(NamedTuple):
    """An SAE's parameters with thresholds and decoder norms folded in (see the module docstring).

    scale: [d_sae] the factor codes are divided by: f̃ = f / scale.
    """

    W_enc: Tensor
    b_enc: Tensor | None
    W_dec: Tensor
    b_dec: Tensor
    scale: Tensor


@torch.no_grad()
def fold(sae: SAE, eps: float = 1e-8) -> Folded:
    """Fold the SAE's thresholds (and, without thresholds, its decoder norms) into its weights."""
    W_dec = sae.W_dec.detach().double()
    state = sae.state_dict()
    if sae.has_threshold:
        theta = state["threshold"].double().cpu()
    else:
        theta = torch.zeros(sae.d_sae, dtype=torch.float64)
    norms = W_dec.norm(dim=-1).cpu().clamp_min(eps)
    # latents without a usable threshold get unit decoder rows instead
    scale = torch.where(theta > eps, theta, 1 / norms).to(W_dec.device)
    return Folded(
        W_enc=sae.W_enc.detach().double() / scale,
        b_enc=state["b_enc"].double() / scale if sae.has_b_enc else None,
        W_dec=W_dec * scale[:, None],
        b_dec=sae.b_dec.detach().double(),
        scale=scale,
    )


class LayerMatch(NamedTuple):
    """Matching of SAE t's latents to SAE t+1's: ``perm[i]`` is the latent of t+1 matched to i."""

    perm: Tensor
    cost: Tensor
    """[d_sae] squared distance of each matched pair of folded parameters."""
    cosine: Tensor
    """[d_sae] decoder cosine of each matched pair."""


def match_layers(a: SAE, b: SAE, *, on: MatchOn = "decoder", folded: bool = True) -> LayerMatch:
    """The permutation of ``b``'s latents that best matches ``a``'s (Hungarian on folded parameters)."""
    if a.d_sae != b.d_sae or a.d_in != b.d_in:
        raise DataError(f"SAE Match needs SAEs of the same shape, got {a.d_in}x{a.d_sae} and {b.d_in}x{b.d_sae}")
    fa, fb = (fold(a), fold(b)) if folded else (_unfolded(a), _unfolded(b))
    cost = torch.zeros(a.d_sae, b.d_sae, dtype=torch.float64)
    if on in ("decoder", "both"):
        cost += squared_distance_matrix(fa.W_dec, fb.W_dec)
    if on in ("encoder", "both"):
        cost += squared_distance_matrix(fa.W_enc.T, fb.W_enc.T)
    if on not in ("decoder", "encoder", "both"):
        raise DataError(f"match on 'decoder', 'encoder' or 'both', got {on!r}")
    m = assign(cost, maximize=False)
    perm = torch.empty(a.d_sae, dtype=torch.long)
    perm[m.rows] = m.cols
    return LayerMatch(perm, cost[torch.arange(a.d_sae), perm], paired_cosine(a.W_dec, b.W_dec[perm]))


def _unfolded(sae: SAE) -> Folded:
    b_enc = sae.state_dict()["b_enc"].double() if sae.has_b_enc else None
    return Folded(sae.W_enc.detach().double(), b_enc, sae.W_dec.detach().double(), sae.b_dec.detach().double(), torch.ones(sae.d_sae, dtype=torch.float64))


def chain(perms: Sequence[Tensor], start: int = 0) -> Tensor:
    """[len(perms) − start + 1, d_sae]: row k holds, for each latent of layer ``start``, its match at
    layer ``start + k`` (composition P_{start+k−1} ∘ … ∘ P_start)."""
    if not 0 <= start < len(perms):
        raise DataError(f"start must index one of the {len(perms)} matchings, got {start}")
    path = [torch.arange(perms[start].numel())]
    for p in perms[start:]:
        path.append(p[path[-1]])
    return torch.stack(path)


@torch.no_grad()
def transfer(a: SAE, b: SAE, perm: Tensor, x: Tensor) -> Tensor:
    """Approximate layer t+1 from layer-t activations ``x``: encode with ``a``, move latent i's folded
    code to ``perm[i]``, decode with ``b``'s folded decoder."""
    fa, fb = fold(a), fold(b)
    codes = a.encode(x.to(a.W_dec.device, a.W_dec.dtype)).double().cpu() / fa.scale
    moved = torch.zeros_like(codes)
    moved[..., perm] = codes
    return (moved @ fb.W_dec + fb.b_dec).to(x.dtype)


@dataclass(frozen=True)
class PairResult:
    """Matching and hidden-state approximation from layer ``site`` to ``next_site``."""

    site: str
    next_site: str
    mean_cost: float
    mean_cosine: float
    """Mean decoder cosine of matched latents."""
    matched_at_07: float
    """Fraction of matched latents with decoder cosine >= 0.7."""
    fvu_match: float | None = None
    """FVU of the encode–permute–decode approximation of the next layer."""
    fvu_identity: float | None = None
    """FVU of the baseline x_{t+1} ≈ x_t."""
    fvu_random: float | None = None
    """FVU with a random permutation instead of the matching."""
    fvu_own_sae: float | None = None
    """FVU of the next layer's own SAE on its own activations."""
    delta_ce_match: float | None = None
    delta_ce_identity: float | None = None
    delta_ce_own_sae: float | None = None


@dataclass
class CrossLayerResult(Stored):
    match_on: str
    folded: bool
    pairs: list[PairResult]
    perms: list[Tensor]
    """perms[t][i]: the latent of SAE t+1 matched to latent i of SAE t."""

    def chain(self, start: int = 0) -> Tensor:
        return chain(self.perms, start)

    def summary(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in vars(p).items()} for p in self.pairs]

    def plot(self, path: str | Path) -> Path | None:
        plt = pyplot()
        if plt is None:
            return None
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        labels = [p.next_site.split(".")[1] if p.next_site.startswith("layers.") else p.next_site for p in self.pairs]
        left.plot(labels, [p.mean_cosine for p in self.pairs], marker="o", label="mean cos of matched decoders")
        left.plot(labels, [p.matched_at_07 for p in self.pairs], marker="s", label="fraction with cos >= 0.7")
        left.set_xlabel("layer t+1")
        left.legend()
        for key, label in (("fvu_match", "matched SAEs"), ("fvu_identity", "x_{t+1} ≈ x_t"), ("fvu_own_sae", "own SAE")):
            values = [getattr(p, key) for p in self.pairs]
            if all(v is not None for v in values):
                right.plot(labels, values, marker="o", label=label)
        right.set_xlabel("layer t+1")
        right.set_ylabel("FVU of layer t+1")
        right.legend()
        return save_figure(plt, fig, path)


@torch.no_grad()
def run(
    saes: Sequence[SAE],
    *,
    sites: Sequence[str] | None = None,
    acts: dict[str, Tensor] | None = None,
    model: nn.Module | LoadedModel | None = None,
    tokens: Tensor | None = None,
    match_on: MatchOn = "decoder",
    folded: bool = True,
    skip_positions: int = 1,
    batch_size: int = 8,
    seed: int = 0,
) -> CrossLayerResult:
    """Match each SAE to the next (``saes`` ordered by depth) and, given activations ``acts``
    (site -> [tokens, d], the same tokens row for row) and/or a model with ``tokens``, evaluate the
    approximation of each next layer."""
    if len(saes) < 2:
        raise DataError("SAE Match needs SAEs at two or more layers")
    sites = list(sites) if sites is not None else [s.site or f"sae{i}" for i, s in enumerate(saes)]
    if len(sites) != len(saes):
        raise DataError(f"{len(saes)} SAEs but {len(sites)} sites")
    pairs, perms = [], []
    g = torch.Generator().manual_seed(seed)
    for t in range(len(saes) - 1):
        a, b = saes[t], saes[t + 1]
        m = match_layers(a, b, on=match_on, folded=folded)
        perms.append(m.perm)
        fields: dict[str, Any] = {
            "site": sites[t],
            "next_site": sites[t + 1],
            "mean_cost": float(m.cost.mean()),
            "mean_cosine": float(m.cosine.mean()),
            "matched_at_07": float((m.cosine >= 0.7).double().mean()),
        }
        if acts is not None:
            x, y = acts[sites[t]].float(), acts[sites[t + 1]].float()
            fields["fvu_match"] = fvu(y, _batched(partial(transfer, a, b, m.perm), x))
            fields["fvu_identity"] = fvu(y, x)
            random_perm = torch.randperm(a.d_sae, generator=g)
            fields["fvu_random"] = fvu(y, _batched(partial(transfer, a, b, random_perm), x))
            fields["fvu_own_sae"] = fvu(y, _batched(partial(_reconstruct, b), y))
        if model is not None:
            if tokens is None:
                raise DataError("the next-token losses need tokens as well as the model")
            fields.update(_downstream(as_module(model), tokens, sites[t], sites[t + 1], a, b, m.perm, skip_positions, batch_size))
        pairs.append(PairResult(**fields))
    return CrossLayerResult(match_on=match_on, folded=folded, pairs=pairs, perms=[cpu_float(p).long() for p in perms])


def _reconstruct(sae: SAE, rows: Tensor) -> Tensor:
    return sae(rows.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()


def _batched(fn: Any, x: Tensor, size: int = 8192) -> Tensor:
    return torch.cat([fn(x[i : i + size]).float().cpu() for i in range(0, x.shape[0], size)])


def _downstream(
    model: nn.Module, tokens: Tensor, site: str, next_site: str, a: SAE, b: SAE, perm: Tensor, skip: int, batch_size: int
) -> dict[str, float]:
    """ΔCE with ``next_site`` replaced by the matched approximation from ``site`` (recorded in the same
    forward pass), by ``site`` itself (identity baseline), and by ``b``'s own reconstruction."""
    model = as_module(model)
    upstream: dict[str, Tensor] = {}

    def held() -> Tensor:
        return upstream[site][:, skip:]

    def matched(h: Tensor) -> Tensor:
        kept = held()
        rows = kept.reshape(-1, kept.shape[-1]).float().cpu()
        return transfer(a, b, perm, rows).reshape(h.shape).to(h.device, h.dtype)

    recs = {"match": matched, "identity": lambda h: held().to(h.dtype), "own_sae": b}
    with record(model, [site], upstream):
        m = downstream_metrics_many(model, tokens, next_site, recs, skip_positions=skip, batch_size=batch_size, progress=True)
    return {f"delta_ce_{k}": v.delta_ce for k, v in m.items()}
