"""Gated SAE with p-annealing (Karvonen et al. 2024, the board-game paper's "Gated + p-anneal"; after
dictionary_learning's ``GatedAnnealTrainer``): the Gated SAE of :mod:`saekit.sae.gated` whose sparsity
penalty on the gate path is the annealed Lp^p of :mod:`saekit.sae.p_anneal` instead of the L1.

    π_gate, π_mag, f, x̂, x̂_gate    as the Gated SAE
    loss  = ||x − x̂||² + s · λ · Σ_i ReLU(π_gate)_i^p + ||x − x̂_gate||²

p follows p_anneal's schedule (1 until the annealing starts, then ``n_p_values`` values down towards
``p_end``) and λ is rescaled at every change of p so that the penalty keeps its size (the buffers
``sparsity_coef`` and ``lp_history``, training state as in p_anneal). With ``n_p_values = 1`` it is
the Gated SAE with λ as its L1 coefficient. At inference it is a plain Gated SAE (saved in SAELens's
``gated`` layout).

Defaults: λ = 0.1 for activations scaled to E||x||² = 1 (the gated L1 coefficients that give a similar
L0 are of the same size), the schedule of p_anneal, Adam β = (0, 0.999) as the Gated SAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saekit.sae import functional as F
from saekit.sae.base import SAE, OptimDefaults
from saekit.sae.gated import GatedPaths, gated_codes, gated_parts, gated_paths, init_parameters
from saekit.sae.p_anneal import PAnnealConfig, anneal_after_step, anneal_terms, p_schedule
from saekit.sae.registry import register
from saekit.types import ActBatch, Codes, LossOut, StepCtx


@dataclass(frozen=True)
class GatedAnnealConfig(PAnnealConfig):
    """p_anneal's settings (sparsity_coef: the initial λ of the penalty on the gate path)."""


@register("gated_anneal")
class GatedAnnealSAE(SAE):
    config_class = GatedAnnealConfig
    saelens_architecture = "gated"
    scaled_params = ("b_gate", "b_mag", "b_dec")
    has_b_enc = False
    training_state = ("sparsity_coef", "lp_history")
    cfg: GatedAnnealConfig
    b_gate: nn.Parameter
    b_mag: nn.Parameter
    r_mag: nn.Parameter
    sparsity_coef: Tensor
    lp_history: Tensor

    def __init__(self, cfg: GatedAnnealConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        init_parameters(self, generator)
        self.register_buffer("sparsity_coef", torch.tensor(float(cfg.sparsity_coef)))
        self.register_buffer("lp_history", torch.zeros(cfg.rescale_batches, 2))

    @classmethod
    def optim_defaults(cls, cfg: GatedAnnealConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae), betas=(0.0, 0.999))

    def paths(self, x: Tensor) -> GatedPaths:
        return gated_paths(x, self.W_enc, self.b_dec, self.b_gate, self.r_mag, self.b_mag)

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return gated_codes(self.paths(x))

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        x = batch.x
        self._check_input(x)
        parts = gated_parts(x, self.paths(x), self.decode, self.W_dec, self.b_dec)
        c = self.cfg
        now = p_schedule(ctx.step, ctx.total_steps, p_start=c.p_start, p_end=c.p_end, n_values=c.n_p_values, anneal_start=c.anneal_start)
        lp = F.lp_pow(parts.gate_acts, now.p)
        loss = parts.mse + ctx.sparsity_scale * self.sparsity_coef * lp + parts.aux
        terms = {
            "mse": parts.mse.detach(), "aux": parts.aux.detach(), "l0": F.l0_of(parts.codes),
            **anneal_terms(parts.gate_acts, lp, now, self.sparsity_coef),
        }  # fmt: skip
        return LossOut(loss, parts.x_hat, Codes(parts.codes), terms)

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        anneal_after_step(self.cfg, self.sparsity_coef, self.lp_history, out, ctx)
