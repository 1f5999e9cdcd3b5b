"""Steering vectors and their SAE decomposition (Mayne, Yang, Mahdi, arXiv 2411.08790; papers.md §9).

* :func:`steering_vector`: contrastive activation addition, v = mean a(positive prompts) − mean
  a(negative prompts) at one site, read at each prompt's last token (or averaged over its tokens).
* :func:`decompose`: encodes v with an SAE and reports the pathologies the paper names:
  - *bias dominance*: a small v is encoded mostly by the encoder bias, so the top latents of f(v) are
    those of f(0) (``topk_overlap_with_zero``, ``cosine_with_zero``);
  - *negative projections*: a ReLU code cannot be negative, so directions v points away from are
    invisible in f(v) (``negative_in_top``: among the latents with the largest |v · d̂_i|, how many
    have v · d̂_i < 0; with prompt activations also the paper's Δ_i = mean f_i(pos) − mean f_i(neg));
  - *norm*: ||v|| against the norms of ordinary activations (``norm_percentile``);
  and gives a signed alternative: orthogonal matching pursuit of v over the unit decoder directions
  (signed coefficients), with the fraction of ||v||² explained after each atom.
* :func:`steer`: adds ``scale · v`` at the site while the model reads prompts and generates, and
  measures the change of the next-token distribution (KL, tokens gained and lost).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from saekit.analysis.matching import unit_rows
from saekit.analysis.pursuit import signed_pursuit
from saekit.analysis.store import Stored, cpu_float
from saekit.errors import DataError
from saekit.eval.plots import pyplot, save_figure
from saekit.models.load import LoadedModel, as_module
from saekit.sae.base import SAE
from saekit.sources.hf import add_vector, collect_activations


class ContrastActs(NamedTuple):
    """A steering vector and the per-prompt activations it was averaged from."""

    vector: Tensor
    positive: Tensor
    negative: Tensor


def prompt_ids(tokenizer: Any, prompt: str) -> Tensor:
    """Token ids [1, T] of ``prompt`` with the model's BOS in front (added when the tokenizer does not)."""
    ids = list(tokenizer(prompt)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    if len(ids) < 2:
        raise DataError(f"prompt {prompt!r} has no tokens")
    return torch.tensor([ids])


@torch.no_grad()
def prompt_activations(
    model: nn.Module | LoadedModel, tokenizer: Any, site: str, prompts: Sequence[str], position: Literal["last", "mean"] = "last"
) -> Tensor:
    """[prompts, d] activation at ``site`` of each prompt's last token (or the mean over its tokens, BOS
    excluded)."""
    model = as_module(model)
    if not prompts:
        raise DataError("no prompts given")
    rows = []
    for prompt in prompts:
        acts = collect_activations(model, prompt_ids(tokenizer, prompt), [site])[site][0].float().cpu()
        rows.append(acts[-1] if position == "last" else acts[1:].mean(0))
    return torch.stack(rows)


def steering_vector(
    model: nn.Module | LoadedModel, tokenizer: Any, site: str, positive: Sequence[str], negative: Sequence[str], position: Literal["last", "mean"] = "last"
) -> ContrastActs:
    """Difference of mean activations of contrastive prompts (CAA)."""
    pos = prompt_activations(model, tokenizer, site, positive, position)
    neg = prompt_activations(model, tokenizer, site, negative, position)
    return ContrastActs(pos.mean(0) - neg.mean(0), pos, neg)


@dataclass
class Decomposition(Stored):
    """What :func:`decompose` found; see the module docstring."""

    vector_norm: float
    norm_percentile: float | None
    """Percent of reference activation norms below ||v|| (None without reference activations)."""
    top_latents: list[int]
    top_values: list[float]
    zero_top_latents: list[int]
    zero_top_values: list[float]
    topk_overlap_with_zero: float
    """|top-k(f(v)) ∩ top-k(f(0))| / k."""
    cosine_with_zero: float
    """cos(f(v), f(0)): near 1 when the encoder bias decides the code."""
    sae_explained: float
    """1 − ||v − f(v) W_dec||² / ||v||²: how much of v the SAE code of v reconstructs."""
    sae_delta_explained: float
    """The same for (f(v) − f(0)) W_dec, the code with the bias's part removed."""
    negative_in_top: int
    """Among the ``n_top`` latents with the largest |v · d̂_i|, those with v · d̂_i < 0."""
    negative_hidden: int
    """Of those, the ones that f(v) leaves at 0 (the ReLU hides them)."""
    n_top: int
    delta_negative_in_top: int | None
    """Among the ``n_top`` largest |Δ_i| (Δ_i = mean f_i(pos) − mean f_i(neg)), those with Δ_i < 0."""
    pursuit_latents: list[int]
    pursuit_coefs: list[float]
    pursuit_explained: list[float]
    vector: Tensor
    projections: Tensor
    """[d_sae] v · d̂_i, signed."""
    codes: Tensor
    """[d_sae] f(v)."""
    steering: list[dict[str, Any]] = field(default_factory=list)
    """Results of :func:`steer`, when run."""

    def plot(self, path: str | Path) -> Path | None:
        plt = pyplot()
        if plt is None:
            return None
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        ks = list(range(1, len(self.pursuit_explained) + 1))
        left.plot(ks, self.pursuit_explained, marker="o", label="signed pursuit")
        left.axhline(self.sae_explained, color="tab:red", linestyle="--", label="SAE code f(v)")
        left.axhline(self.sae_delta_explained, color="tab:green", linestyle=":", label="f(v) − f(0)")
        left.set_xlabel("atoms")
        left.set_ylabel("fraction of ||v||² explained")
        left.legend()
        n = len(self.top_latents)
        xs = range(n)
        right.bar([x - 0.2 for x in xs], self.top_values, width=0.4, label="f(v)")
        zero = dict(zip(self.zero_top_latents, self.zero_top_values))
        right.bar([x + 0.2 for x in xs], [zero.get(i, 0.0) for i in self.top_latents], width=0.4, label="f(0)")
        right.set_xticks(list(xs), [str(i) for i in self.top_latents], rotation=60, fontsize=7)
        right.set_title("top latents of f(v) and their value in f(0)")
        right.legend()
        return save_figure(plt, fig, path)


@torch.no_grad()
def decompose(
    sae: SAE,
    vector: Tensor,
    *,
    k: int = 10,
    n_top: int = 100,
    n_atoms: int = 20,
    positive: Tensor | None = None,
    negative: Tensor | None = None,
    reference: Tensor | None = None,
) -> Decomposition:
    """Decompose ``vector`` [d] with ``sae`` (see the module docstring). ``positive`` / ``negative``:
    the prompt activations it came from; ``reference``: ordinary activations [n, d] for the norm check."""
    if vector.dim() != 1 or vector.shape[0] != sae.d_in:
        raise DataError(f"the steering vector must have shape [{sae.d_in}], got {tuple(vector.shape)}")
    dev, dt = sae.W_dec.device, sae.W_dec.dtype
    v = vector.to(dev, dt)
    f_v = sae.encode(v[None])[0].double().cpu()
    f_0 = sae.encode(torch.zeros_like(v)[None])[0].double().cpu()
    W = sae.W_dec.detach().double().cpu()
    vd = v.double().cpu()
    total = float(vd.pow(2).sum())
    if total == 0:
        raise DataError("the steering vector is zero")
    k = min(k, sae.d_sae)
    top_v = f_v.topk(k)
    top_0 = f_0.topk(k)
    proj = unit_rows(W) @ vd
    n_top = min(n_top, sae.d_sae)
    top_proj = proj.abs().topk(n_top).indices
    negative_top = top_proj[proj[top_proj] < 0]
    delta_negative = None if positive is None or negative is None else _delta_negative(sae, positive, negative, n_top)
    percentile = None if reference is None else 100 * float((reference.double().norm(dim=-1) < vd.norm()).double().mean())
    pursuit = signed_pursuit(vd, W, n_atoms)
    denom = float(f_v.norm() * f_0.norm())
    return Decomposition(
        vector_norm=float(vd.norm()),
        norm_percentile=percentile,
        top_latents=top_v.indices.tolist(),
        top_values=top_v.values.tolist(),
        zero_top_latents=top_0.indices.tolist(),
        zero_top_values=top_0.values.tolist(),
        topk_overlap_with_zero=len(set(top_v.indices.tolist()) & set(top_0.indices.tolist())) / k,
        cosine_with_zero=float(f_v @ f_0) / denom if denom > 0 else 0.0,
        sae_explained=1 - float((vd - f_v @ W).pow(2).sum()) / total,
        sae_delta_explained=1 - float((vd - (f_v - f_0) @ W).pow(2).sum()) / total,
        negative_in_top=int(negative_top.numel()),
        negative_hidden=int((f_v[negative_top] == 0).sum()),
        n_top=n_top,
        delta_negative_in_top=delta_negative,
        pursuit_latents=pursuit.indices.tolist(),
        pursuit_coefs=pursuit.coefs.tolist(),
        pursuit_explained=pursuit.explained.tolist(),
        vector=cpu_float(vd),
        projections=cpu_float(proj),
        codes=cpu_float(f_v),
    )


def _delta_negative(sae: SAE, positive: Tensor, negative: Tensor, n_top: int) -> int:
    """Negative entries among the ``n_top`` largest of the mean code difference of the prompts."""
    dev, dt = sae.W_dec.device, sae.W_dec.dtype
    delta = sae.encode(positive.to(dev, dt)).double().mean(0).cpu() - sae.encode(negative.to(dev, dt)).double().mean(0).cpu()
    return int((delta[delta.abs().topk(n_top).indices] < 0).sum())


class TokenShift(NamedTuple):
    token: str
    clean: float
    steered: float


@dataclass(frozen=True)
class SteerResult:
    """Effect of adding ``scale · v`` at a site on one prompt."""

    prompt: str
    scale: float
    kl: float
    """KL(p_clean ‖ p_steered) of the next token after the prompt, in nats."""
    gained: list[TokenShift]
    lost: list[TokenShift]
    clean_text: str
    steered_text: str


def _shifts(tokenizer: Any, clean_logp: Tensor, steered_logp: Tensor, indices: Tensor) -> list[TokenShift]:
    return [TokenShift(tokenizer.decode([int(i)]), float(clean_logp[i].exp()), float(steered_logp[i].exp())) for i in indices]


@torch.no_grad()
def _greedy(model: nn.Module, ids: Tensor, n: int) -> Tensor:
    # full forwards without a KV cache: a handful of short prompts on any device, and the splice hooks
    # then see whole sequences, exactly as in the measured next-token distribution
    for _ in range(n):
        nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@torch.no_grad()
def steer(
    model: nn.Module | LoadedModel,
    tokenizer: Any,
    site: str,
    vector: Tensor,
    prompts: Sequence[str],
    *,
    scale: float = 1.0,
    max_new_tokens: int = 20,
    top: int = 5,
) -> list[SteerResult]:
    """Add ``scale · vector`` at ``site`` (every position) while reading each prompt and generating
    greedily; compare the next-token distribution after the prompt with the clean model's."""
    model = as_module(model)
    model.eval()
    device = next(model.parameters()).device
    results = []
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt).to(device)
        clean_logp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        clean_ids = _greedy(model, ids, max_new_tokens)
        with add_vector(model, site, vector.to(device), scale=scale):
            steered_logp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
            steered_ids = _greedy(model, ids, max_new_tokens)
        diff = steered_logp.exp() - clean_logp.exp()

        results.append(
            SteerResult(
                prompt=prompt,
                scale=scale,
                kl=float((clean_logp.exp() * (clean_logp - steered_logp)).sum()),
                gained=_shifts(tokenizer, clean_logp, steered_logp, diff.topk(top).indices),
                lost=_shifts(tokenizer, clean_logp, steered_logp, (-diff).topk(top).indices),
                clean_text=tokenizer.decode(clean_ids[0, ids.shape[1] :].tolist()),
                steered_text=tokenizer.decode(steered_ids[0, ids.shape[1] :].tolist()),
            )
        )
    return results


def feature_direction(sae: SAE, index: int) -> Tensor:
    """The unit decoder direction of one latent, to steer with."""
    if not 0 <= index < sae.d_sae:
        raise DataError(f"latent {index} does not exist (d_sae = {sae.d_sae})")
    row = sae.W_dec[index].detach().float()
    return row / row.norm().clamp_min(1e-12)
