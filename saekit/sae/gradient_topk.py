"""g-SAE: TopK whose latent selection also weighs each latent's downstream effect (Olmo, Wilson,
Forsey, Hepner, Howe & Wingate 2024, "Features that Make a Difference", papers.md §4).

    z   = ReLU((x − b_dec) W_enc + b_enc)                      TopK's pre-selection activations
    g   = ∇_x L_LM at the SAE's site (the source carries it in ``ActBatch.grad``), optionally unit-normed
    s   = z + β · z ⊙ |g W_decᵀ|                                score: activation + its effect on the loss
    f   = z on the k largest entries of s per token, 0 elsewhere   (the kept values are z, not s)
    x̂   = f W_dec + b_dec
    loss = ||x − x̂||² + aux_coef · AuxK                          exactly TopK's objective

With unit-norm decoder rows, ``g · d_i`` is the directional derivative of the LM loss along latent i, so
a small activation whose direction moves the loss a lot can win a slot from a large one that does not.

Provisional reading (no official code; papers.md §4 marks β's definition as provisional): the score is
``z + β z |W_dec g|`` with ``g`` normalised to unit norm per token (``normalize_grad``), and the kept
values are ``z``. β is a parameter; β = 0 is exactly TopK.

At inference the gradient is optional: ``encode(x)`` (no gradient, e.g. when spliced into a model)
falls back to plain TopK on ``z``, the rule the paper gives for label-free use, and
``encode(x, grad)`` applies the full rule. Both are per token. Saved folders load in SAELens as
``topk`` (the fallback rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from saekit.errors import DataError
from saekit.kernels import row_topk
from saekit.sae import functional as F
from saekit.sae import sparse as S
from saekit.sae.base import SAE, OptimDefaults
from saekit.sae.registry import register
from saekit.sae.topk import TopKConfig
from saekit.types import ActBatch, LossOut, StepCtx


@dataclass(frozen=True)
class GradientTopKConfig(TopKConfig):
    """TopK's fields (k, aux_k, aux_coef) plus the weight of the gradient in the selection score."""

    beta: float = 1.0
    """β in the selection score z + β·z·|W_dec g| (provisional reading of the paper; 0 gives TopK)."""
    normalize_grad: bool = True
    """Divide each token's effects |W_dec g| by their maximum over latents (the most loss-relevant latent
    gets effect 1), so β depends neither on the scale of the loss nor on d_in."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


def gradient_scores(z: Tensor, grad: Tensor, W_dec: Tensor, beta: float, normalize: bool) -> Tensor:
    """Selection scores s = z + β z e for activations ``z`` [..., d_sae] and gradients ``grad``
    [..., d_in], with the effect e = |g W_decᵀ|, divided per row by its maximum over latents when
    ``normalize`` (so e ∈ [0, 1] and β is free of the loss scale and of d_in; a zero gradient gives e = 0)."""
    effect = (grad @ W_dec.T).abs()
    if normalize:
        effect = effect / effect.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(effect.dtype).tiny)
    return z + beta * z * effect


@register("gradient_topk")
class GradientTopKSAE(SAE):
    config_class = GradientTopKConfig
    saelens_architecture = "topk"
    uses_grad: ClassVar[bool] = True
    """Read by the training loop: batches should carry ``grad`` (it warns once when they do not)."""
    cfg: GradientTopKConfig

    def __init__(self, cfg: GradientTopKConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        W_enc, W_dec = F.tied_init(cfg.d_in, cfg.d_sae, generator)
        self.W_enc = nn.Parameter(W_enc)
        self.W_dec = nn.Parameter(W_dec)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    @classmethod
    def optim_defaults(cls, cfg: GradientTopKConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.topk_family_lr(cfg.d_sae))

    def pre_acts(self, x: Tensor) -> Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def select(self, pre: Tensor, grad: Tensor | None) -> Tensor:
        """Dense codes from pre-activations: z = ReLU(pre) kept on the k best-scored latents of each row
        (plain TopK without ``grad``)."""
        z = pre.relu()
        if grad is None or self.cfg.beta == 0:
            return F.scatter_codes(F.topk_codes(z, self.cfg.k), self.d_sae)
        self._check_grad(grad, pre)
        # Selection is a discrete choice: only the kept values carry gradient, as in TopK.
        with torch.no_grad():
            scores = gradient_scores(z, grad.to(z.dtype), self.W_dec, self.cfg.beta, self.cfg.normalize_grad)
            indices = scores.topk(self.cfg.k, dim=-1, sorted=False).indices
        return torch.zeros_like(z).scatter(-1, indices, z.gather(-1, indices))

    def _check_grad(self, grad: Tensor, pre: Tensor) -> None:
        if grad.shape[:-1] != pre.shape[:-1] or grad.shape[-1] != self.d_in:
            raise DataError(f"gradient of shape {tuple(grad.shape)} does not match activations of shape {(*pre.shape[:-1], self.d_in)}")

    def encode(self, x: Tensor, grad: Tensor | None = None) -> Tensor:
        """Codes of ``x``; with ``grad`` (d loss / d x, same shape) the gradient-aware selection."""
        self._check_input(x)
        return self.select(self.pre_acts(x), grad)

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        x = batch.x
        self._check_input(x)
        if x.dim() != 2:
            return self._dense_loss(x, ctx, batch.grad)
        # Sparse path (saekit.sae.sparse): the encoder product, with a gradient the product giving each
        # latent's effect on the loss, then only the k chosen latents per token.
        x_in = x - self.b_dec.detach()
        with torch.no_grad():
            pre = S.pre_acts(x_in, self.W_enc, self.b_enc)
            scores = pre
            if batch.grad is not None and self.cfg.beta != 0:
                self._check_grad(batch.grad, pre)
                scores = gradient_scores(pre.relu(), batch.grad.to(pre.dtype), self.W_dec, self.cfg.beta, self.cfg.normalize_grad)
            pattern = S.pattern_from_topk(row_topk(scores, self.cfg.k), self.d_sae, ascending=True)
        return S.topk_family_loss(self, x, x_in, pre, pattern, ctx.dead_mask)

    def _dense_loss(self, x: Tensor, ctx: StepCtx, grad: Tensor | None = None) -> LossOut:
        """The plain dense computation of ``loss``; the sparse path is tested against it."""
        pre = self.pre_acts(x)
        codes = self.select(pre, grad)
        x_hat = self.decode(codes)
        mse = F.mse_per_token(x, x_hat).mean()
        aux = F.aux_k_loss(pre, (x - x_hat).detach(), ctx.dead_mask, self.cfg.aux_k or self.d_in // 2, self.W_dec)
        loss = mse + self.cfg.aux_coef * aux
        return LossOut(loss, x_hat, codes, {"mse": mse.detach(), "aux_k": aux.detach(), "l0": F.l0_of(codes)})

    def extra_saelens_cfg(self) -> dict:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}
