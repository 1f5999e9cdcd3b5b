"""The TopK family's loss computed the plain dense way: the oracle the sparse path is tested against
(tests/sae/test_sparse.py) and timed against (benchmarks/step_cost.py).

Every step is the textbook formula on a dense [batch, d_sae] matrix: pre-activations, a boolean mask
of the selection, codes = ReLU(pre) on the mask, x̂ = codes W_dec + b_dec (Matryoshka: the sum of
the errors of x̂_m = codes[:, :m] W_dec[:m] + b_dec over its prefix widths m), and the auxiliary
losses as their papers write them (AuxK on the dead latents; aux_zipf_loss weighting each underused
latent by its Zipf deficit). Nothing here is shared with saekit.sae.sparse or saekit.sae.topk_family beyond
the pure selection rules of saekit.sae.functional.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.sae import functional as F
from saekit.sae.gradient_topk import gradient_scores
from saekit.types import Codes, LossOut, StepCtx


def batch_topk_mask(acts: Tensor, k: int) -> Tensor:
    """Mask of the ``batch * k`` largest entries of a [batch, d_sae] matrix, over the whole batch."""
    flat = acts.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(min(flat.numel(), acts.shape[0] * k), sorted=False).indices] = True
    return mask.view_as(acts)


def row_topk_mask(scores: Tensor, k: int) -> Tensor:
    """Mask of the k largest entries of each row."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(-1, scores.topk(k, dim=-1).indices, True)


def weighted_aux_loss(pre: Tensor, residual: Tensor, weights: Tensor, k_aux: int, W_dec: Tensor) -> Tensor:
    """Per token, the ``min(k_aux, #{w > 0})`` largest pre-activations among latents with weight w > 0,
    through a ReLU and times w, reconstruct the residual through W_dec (no b_dec); the squared error
    over the residual's total variance. 0 when no weight is positive."""
    selectable = weights > 0
    if not bool(selectable.any()):
        return pre.new_zeros(())
    k = min(k_aux, int(selectable.sum()))
    values, indices = pre.masked_fill(~selectable, float("-inf")).topk(k, dim=-1, sorted=False)
    codes = torch.zeros_like(pre).scatter(-1, indices, values.relu() * weights.to(pre.dtype)[indices])
    variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
    return (codes @ W_dec - residual).pow(2).sum() / variance


def aux_k_loss(pre: Tensor, residual: Tensor, dead_mask: Tensor | None, k_aux: int, W_dec: Tensor) -> Tensor:
    """AuxK (Gao et al. 2024, dictionary_learning's protocol): the aux loss with weight 1 on dead latents."""
    if dead_mask is None:
        return pre.new_zeros(())
    return weighted_aux_loss(pre, residual, dead_mask.to(pre.dtype), k_aux, W_dec)


def aux_zipf_loss(pre: Tensor, residual: Tensor, density: Tensor, k_aux: int, W_dec: Tensor, exponent: float) -> Tensor:
    """aux_zipf_loss (provisional reading): the aux loss weighted by each latent's Zipf deficit."""
    return weighted_aux_loss(pre, residual, F.zipf_deficit(density, exponent), k_aux, W_dec)


def selection_mask(sae, pre: Tensor, x: Tensor, grad: Tensor | None) -> Tensor:
    """The dense mask of the (token, latent) pairs ``sae``'s training selection keeps."""
    k = sae.cfg.k
    if sae.architecture in ("topk", "topk_transcoder"):
        return row_topk_mask(pre, k)
    if sae.architecture in ("batch_topk", "matryoshka_batch_topk", "batch_topk_transcoder"):
        return batch_topk_mask(pre.relu(), k)
    if sae.architecture == "feature_choice":
        return F.feature_choice_mask(pre.relu(), sae.capacities(pre.shape[0]))
    if sae.architecture == "gradient_topk":
        if grad is None or sae.cfg.beta == 0:
            return row_topk_mask(pre, k)
        scores = gradient_scores(pre.relu(), x, grad, sae.W_dec, sae.cfg.beta, sae.cfg.normalize_grad)
        return row_topk_mask(scores.detach(), k)
    raise ValueError(f"no dense reference for {sae.architecture!r}")


def prefix_errors(codes: Tensor, W_dec: Tensor, b_dec: Tensor, x: Tensor, widths: tuple[int, ...]) -> dict[int, Tensor]:
    """Matryoshka: for each prefix width m, ||x − (codes[:, :m] W_dec[:m] + b_dec)||² averaged over rows."""
    return {m: (codes[:, :m] @ W_dec[:m] + b_dec - x).pow(2).sum(-1).mean() for m in widths}


def dense_loss(sae, x: Tensor, ctx: StepCtx, grad: Tensor | None = None, target: Tensor | None = None) -> LossOut:
    """``sae.loss(ActBatch(x, grad, target), ctx)`` of a TopK-family SAE or transcoder, computed densely
    (x: [batch, d_in]; a transcoder's ``target`` [batch, d_out], the encoder reading x without the b_dec
    shift and the output adding x W_skipᵀ where it has a skip connection). Uses (and, for aux_zipf, reads
    without updating) the SAE's running density as ``loss`` does."""
    pre = (x - sae.b_dec if sae.apply_b_dec_to_input else x) @ sae.W_enc + sae.b_enc
    codes = pre.relu() * selection_mask(sae, pre.detach(), x, grad)
    x_hat = codes @ sae.W_dec + sae.b_dec
    if sae.transcoder:
        x_hat = x_hat if sae.W_skip is None else x_hat + x @ sae.W_skip.t()
        x = x if target is None else target
    mse = (x_hat - x).pow(2).sum(-1).mean()
    residual = (x - x_hat).detach()
    k_aux = sae.cfg.aux_k or sae.d_out // 2
    loss, terms = mse, {"mse": mse.detach(), "l0": (codes != 0).sum(-1).float().mean()}
    if sae.architecture == "matryoshka_batch_topk":
        errors = prefix_errors(codes, sae.W_dec, sae.b_dec, x, sae.cfg.prefix_widths)
        loss = sum(errors.values())
        terms |= {f"mse_{m}": error.detach() for m, error in errors.items() if m < sae.d_sae}
    if sae.cfg.aux_coef > 0:
        aux = aux_k_loss(pre, residual, ctx.dead_mask, k_aux, sae.W_dec)
        loss, terms["aux_k"] = loss + sae.cfg.aux_coef * aux, aux.detach()
    if sae.cfg.aux_zipf_coef > 0:
        state = sae.state_dict()
        running = F.update_density(F.RunningDensity(state["zipf_density"], state["zipf_seen"]), (codes != 0).float().mean(0), sae.cfg.aux_zipf_ema)
        zipf = aux_zipf_loss(pre, residual, running.estimate, k_aux, sae.W_dec, sae.cfg.aux_zipf_exponent)
        loss, terms["aux_zipf"] = loss + sae.cfg.aux_zipf_coef * zipf, zipf.detach()
    return LossOut(loss, x_hat, Codes(codes), terms)
