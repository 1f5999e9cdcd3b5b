"""Mutual Choice SAE (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature Choice
Sparse Autoencoders"): tokens and latents choose each other freely within the batch budget.

Training couples the tokens of a batch of n:

    Z     = ReLU((x − b_dec) W_enc + b_enc)                     [n, d_sae]
    f     = Z on the n·k largest entries of the whole of Z, 0 elsewhere
    x̂     = f W_dec + b_dec
    loss  = ||x − x̂||² + aux_coef · AuxK (+ aux_zipf_coef · aux_zipf_loss)

The batch spends exactly the TopK budget n·k (fewer only when Z has fewer positive entries) with no
limit per token or per latent: a hard token takes many latents, an easy one few. This selection is the
one BatchTopK (Bussmann et al. 2024) found independently; the paper pairs it with aux_zipf_loss
(the ``aux_zipf_coef`` option, shared by every TopK-family SAE here).

Inference must not depend on the batch, so one global threshold is learned exactly as BatchTopK
learns it (the shared functions in :mod:`saekit.sae.functional`): after each step from
``threshold_start_step`` on (capped at half the run),

    θ ← (1 − β) θ + β · (smallest positive activation kept in the batch)

and ``encode(x) = Z ⊙ 1[Z > θ]``, saved for SAELens as ``jumprelu`` with a [d_sae] threshold of equal
entries. Until θ is set (θ < 0 marks "not yet"), ``encode`` is per-token TopK with the same k.

Defaults follow the TopK family: lr = 2e-4 / sqrt(d_sae / 2^14), AuxK weight 1/32 with
k_aux = d_in // 2, unit-norm decoder, geometric-median ``b_dec``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saekit.sae import functional as F
from saekit.sae.base import SAE, OptimDefaults
from saekit.sae.batch_topk import BatchTopKConfig
from saekit.sae.registry import register
from saekit.types import ActBatch, LossOut, StepCtx


@dataclass(frozen=True)
class MutualChoiceConfig(BatchTopKConfig):
    """BatchTopK's fields and checks; k sets the batch budget."""

    k: int = 32
    """Budget in active latents per token, on average: a batch of n tokens keeps its n·k largest
    activations, however they fall across tokens and latents."""


@register("mutual_choice")
class MutualChoiceSAE(SAE):
    config_class = MutualChoiceConfig
    saelens_architecture = "jumprelu"
    scaled_params = ("b_enc", "b_dec", "threshold")
    cfg: MutualChoiceConfig
    threshold: Tensor

    def __init__(self, cfg: MutualChoiceConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        W_enc, W_dec = F.tied_init(cfg.d_in, cfg.d_sae, generator)
        self.W_enc = nn.Parameter(W_enc)
        self.W_dec = nn.Parameter(W_dec)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("threshold", torch.full((cfg.d_sae,), -1.0))

    @classmethod
    def optim_defaults(cls, cfg: MutualChoiceConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or 2e-4 / math.sqrt(cfg.d_sae / 2**14))

    @property
    def threshold_set(self) -> bool:
        """Whether the inference threshold has been learned."""
        return bool(self.threshold[0] >= 0)

    def post_relu(self, x: Tensor) -> Tensor:
        return ((x - self.b_dec) @ self.W_enc + self.b_enc).relu()

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        acts = self.post_relu(x)
        if not self.threshold_set:
            return F.scatter_codes(F.topk_codes(acts, self.cfg.k), self.d_sae)
        return acts * (acts > self.threshold.to(acts.dtype))

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        x = batch.x
        self._check_input(x)
        acts = self.post_relu(x)
        codes = acts * F.batch_topk_mask(acts, self.cfg.k)
        x_hat = self.decode(codes)
        residual = (x - x_hat).detach()
        mse = F.mse_per_token(x, x_hat).mean()
        k_aux = self.cfg.aux_k or self.d_in // 2
        aux = F.aux_k_loss(acts, residual, ctx.dead_mask, k_aux, self.W_dec)
        loss = mse + self.cfg.aux_coef * aux
        terms = {"mse": mse.detach(), "aux_k": aux.detach(), "l0": F.l0_of(codes)}
        if self.cfg.aux_zipf_coef > 0:
            zipf = F.aux_zipf_loss(acts, residual, F.firing_density(codes), k_aux, self.W_dec, self.cfg.aux_zipf_exponent)
            loss = loss + self.cfg.aux_zipf_coef * zipf
            terms["aux_zipf"] = zipf.detach()
        return LossOut(loss, x_hat, codes, terms)

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        if F.threshold_tracking(ctx.step, self.cfg.threshold_start_step, ctx.total_steps):
            F.ema_threshold_(self.threshold, F.smallest_kept(out.codes), self.cfg.threshold_ema)
