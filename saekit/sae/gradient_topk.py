"""g-SAE: TopK whose latent selection also weighs each latent's downstream effect (Olmo, Wilson,
Forsey, Hepner, Howe & Wingate 2024, "Features that Make a Difference", papers.md §4).

    z   = ReLU((x − b_dec) W_enc + b_enc)                      TopK's pre-selection activations
    g   = ∇_x L_LM at the SAE's site (training: ``ActBatch.grad``; inference: ``encode_with_grad``)
    e_i = |d_i · g|, scaled per token (below)                  latent i's effect on the loss
    s   = z + β · z ⊙ e                                         score: activation + its effect on the loss
    f   = z on the k largest entries of s per token, 0 elsewhere   (the kept values are z, not s)
    x̂   = f W_dec + b_dec
    loss = ||x − x̂||² + aux_coef · AuxK (+ aux_zipf)             exactly TopK's objective

With unit-norm decoder rows d_i, ``d_i · g`` is the directional derivative of the LM loss along latent
i, so a small activation whose direction moves the loss a lot can win a slot from a large one that
does not. L_LM is the next-token loss summed over the context's predictions (what ``ModelSource`` and
evaluation with a model give), so g does not depend on the batch size.

How the effects are scaled per token (``normalize_grad``):

* True (default): divided by their maximum over latents, so e ∈ [0, 1] and the most loss-relevant
  latent gets 1; β is then free of the loss's scale and of d_in.
* False: multiplied by the activation's norm, e_i = |d_i · g| · ||x||, the first-order change of the
  loss when the activation moves by its own length along d_i.

Either way the selection is free of the activations' scale (x → c·x divides g by c), so the SAE
trained on normalised activations selects the same latents once folded back to raw units.

Provisional reading (no official code; papers.md §4 marks β's definition as provisional): the score
``z + β z e`` and kept values ``z``. β is a parameter; β = 0 is exactly TopK.

At inference ``encode(x)`` (no gradient, e.g. when spliced into a model) is plain TopK on ``z``, the
rule the paper gives for label-free use, and ``encode_with_grad(x, grad)`` applies the full rule; both
are per token. ``saekit.evaluate`` with a model computes the gradient at the site and reports both
readouts. Saved folders load in SAELens as ``topk`` (the rule without a gradient). The loss, AuxK and
aux_zipf_loss are the TopK family's (:mod:`saekit.sae.topk_family`); g-SAE's part is its selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor

from saekit._fast import row_topk
from saekit.errors import DataError
from saekit.sae import functional as F
from saekit.sae import sparse as S
from saekit.sae import topk_family as family
from saekit.sae.base import SAE, OptimDefaults
from saekit.sae.registry import register
from saekit.strict import refuse_unused
from saekit.types import ActBatch, LossOut, StepCtx


@dataclass(frozen=True)
class GradientTopKConfig(family.TopKFamilyConfig):
    """The TopK family's fields plus the weight of the gradient in the selection score."""

    beta: float = 1.0
    """β in the selection score z + β·z·|W_dec g| (provisional reading of the paper; 0 gives TopK)."""
    normalize_grad: bool = True
    """Divide each token's effects |W_dec g| by their maximum over latents (the most loss-relevant latent
    gets effect 1), so β depends neither on the scale of the loss nor on d_in; False multiplies them by
    the activation's norm instead (the loss change for a move of the activation's own length)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.beta == 0:
            refuse_unused(self, ("normalize_grad",), "beta is 0")


def gradient_scores(z: Tensor, x: Tensor, grad: Tensor, W_dec: Tensor, beta: float, normalize: bool) -> Tensor:
    """Selection scores s = z + β z e for activations ``z`` [..., d_sae] of inputs ``x`` [..., d_in] with
    gradients ``grad`` [..., d_in]: e = |g W_decᵀ|, divided per row by its maximum over latents when
    ``normalize`` (a zero gradient gives e = 0), else multiplied by ||x|| per row."""
    effect = (grad @ W_dec.T).abs()
    if normalize:
        effect = effect / effect.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(effect.dtype).tiny)
    else:
        effect = effect * torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return z + beta * z * effect


@final
@register("gradient_topk")
class GradientTopKSAE(SAE):
    config_class = GradientTopKConfig
    saelens_architecture = "topk"
    uses_grad = True
    training_state = F.ZIPF_STATE
    cfg: GradientTopKConfig

    def __init__(self, cfg: GradientTopKConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        family.init_parameters(self, cfg, generator)

    @classmethod
    def optim_defaults(cls, cfg: GradientTopKConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    def scores(self, pre: Tensor, x: Tensor, grad: Tensor | None) -> Tensor:
        """What the k best of each row are chosen by: ``pre`` itself without a gradient (or with β = 0),
        else :func:`gradient_scores` of ReLU(pre). Computed without autograd: selection is a discrete
        choice, and only the kept values carry gradient, as in TopK."""
        if grad is None or self.cfg.beta == 0:
            return pre
        if grad.shape[:-1] != pre.shape[:-1] or grad.shape[-1] != self.d_in:
            raise DataError(f"gradient of shape {tuple(grad.shape)} does not match activations of shape {(*pre.shape[:-1], self.d_in)}")
        with torch.no_grad():
            z = pre.detach().relu()
            return gradient_scores(z, x.to(z.dtype), grad.to(z.dtype), self.W_dec, self.cfg.beta, self.cfg.normalize_grad)

    def encode(self, x: Tensor) -> Tensor:
        """Codes of ``x`` without a gradient: plain TopK on z."""
        self._check_input(x)
        return F.scatter_codes(F.topk_codes(family.pre_acts(self, x), self.cfg.k), self.d_sae)

    def encode_with_grad(self, x: Tensor, grad: Tensor) -> Tensor:
        """Codes of ``x`` chosen with ``grad`` (d loss / d x, same shape): the rule it was trained with."""
        self._check_input(x)
        pre = family.pre_acts(self, x)
        indices = self.scores(pre, x, grad).topk(self.cfg.k, dim=-1, sorted=False).indices
        return torch.zeros_like(pre).scatter(-1, indices, pre.gather(-1, indices).relu())

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        self._check_input(batch.x)

        def select(pre: Tensor, rows: ActBatch, ctx: StepCtx) -> S.Pattern:  # per row: nothing to share
            return S.pattern_from_topk(row_topk(self.scores(pre, rows.x, rows.grad), self.cfg.k), self.d_sae, ascending=True)

        return family.family_loss(self, self.cfg, batch, ctx, select)

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        family.after_step(self, self.cfg, out, ctx)

    def extra_saelens_cfg(self) -> dict:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}
