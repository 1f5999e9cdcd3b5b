"""What a latent's decoder direction does, from the weights alone: its direct effect on the logits
and its nearest latents.

Logit effect of latent ``i`` on token ``t``: ``(W_dec[i] ⊙ γ) · W_U[t]``, the change in the logit of
``t`` per unit of the latent's activation along the direct path from the site to the unembedding:
later blocks are ignored, and so is the final norm's division by the residual's RMS (a positive
number shared by every token, so it changes the scale, not the ranking), but its per-dimension
weight ``γ`` is applied because it reweights dimensions differently for each token. Gemma's norms
scale by ``1 + γ``. Models without a recognised final norm use the unembedding alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, cast

import torch
from torch import Tensor, nn

from saekit.models.load import LoadedModel, as_module

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class LogitEffects(NamedTuple):
    """[L, k] token ids and logit changes: the most promoted (descending) and most suppressed (ascending)."""

    promoted_ids: Tensor
    promoted: Tensor
    suppressed_ids: Tensor
    suppressed: Tensor


class Neighbours(NamedTuple):
    """[L, k] the latents with the most similar decoder directions, and their cosine (descending)."""

    ids: Tensor
    cosine: Tensor


_FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm")


def final_norm_scale(model: nn.Module | LoadedModel) -> Tensor | None:
    """The per-dimension weight the final norm applies before the unembedding, or None if not found."""
    model = as_module(model)
    for path in _FINAL_NORMS:
        try:
            norm = model.get_submodule(path)
        except AttributeError:
            continue
        try:
            weight = norm.get_parameter("weight")
        except AttributeError:  # a norm without a learned scale
            return None
        # Gemma's RMSNorm multiplies by (1 + weight), with weights stored around 0.
        return weight.detach() + 1.0 if "Gemma" in type(norm).__name__ else weight.detach()
    return None


def unembedding(model: nn.Module | LoadedModel) -> Tensor | None:
    """W_U as [vocab, d_model] (the output embedding's weight), or None if the model has none."""
    model = as_module(model)
    head = cast("PreTrainedModel", model).get_output_embeddings()
    return None if head is None else head.weight.detach()


@torch.no_grad()
def logit_effects(W_dec: Tensor, W_U: Tensor, scale: Tensor | None, k: int, *, chunk: int = 256) -> LogitEffects:
    """Top-``k`` promoted and suppressed tokens of each decoder row of ``W_dec`` [L, d] through ``W_U``
    [vocab, d], latents ``chunk`` at a time so the [chunk, vocab] logits stay small."""
    dirs = W_dec.float() if scale is None else W_dec.float() * scale.float().to(W_dec.device)
    W_U = W_U.float().to(W_dec.device)
    k = min(k, W_U.shape[0])
    parts = []
    for start in range(0, len(dirs), chunk):
        logits = dirs[start : start + chunk] @ W_U.T
        top = logits.topk(k, dim=1)
        bottom = logits.topk(k, dim=1, largest=False)
        parts.append((top.indices, top.values, bottom.indices, bottom.values))
    return LogitEffects(*(torch.cat(column).cpu() for column in zip(*parts)))


@torch.no_grad()
def nearest_latents(W_dec: Tensor, k: int, *, chunk: int = 1024) -> Neighbours:
    """The ``k`` other latents whose decoder rows have the largest cosine with each row."""
    unit = torch.nn.functional.normalize(W_dec.float(), dim=1)
    k = min(k, len(unit) - 1)
    ids, cos = [], []
    for start in range(0, len(unit), chunk):
        sims = unit[start : start + chunk] @ unit.T
        own = torch.arange(start, start + len(sims), device=sims.device)
        sims[torch.arange(len(sims)), own] = -torch.inf
        best = sims.topk(k, dim=1)
        ids.append(best.indices)
        cos.append(best.values)
    return Neighbours(torch.cat(ids).cpu(), torch.cat(cos).cpu())
