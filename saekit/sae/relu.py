"""ReLU SAE with an L1 penalty weighted by decoder norms (Anthropic, "Circuits Updates, April 2024";
the ReLU + L1 SAE of Bricken et al. 2023, "Towards Monosemanticity", without its decoder constraint).

    f     = ReLU((x − b_dec) W_enc + b_enc)
    x̂     = f W_dec + b_dec
    loss  = ||x − x̂||² + s · l1_coef · Σ_i f_i ||W_dec[i]||

``s`` is the loop's sparsity warm-up scale. Weighting each code by its decoder row norm makes the
penalty invariant to moving scale between a latent and its decoder row, which is what the unit-norm
constraint was there for, so the decoder is left free (``unit_norm_decoder = False``).

Initialisation follows the April update and dictionary_learning's ``AutoEncoder``: random decoder rows
of norm ``init_decoder_norm`` (0.1), ``W_enc = W_decᵀ``, ``b_enc = 0``; the loop sets ``b_dec`` to the
geometric median of the first batch. The learning rate is saekit's default
(:func:`saekit.sae.functional.default_lr`; Anthropic's 5e-5 is tuned for runs of billions of tokens
and barely moves in a few thousand steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saekit.sae import functional as F
from saekit.sae.base import SAE, OptimDefaults, SAEConfig
from saekit.sae.registry import register
from saekit.types import ActBatch, Codes, LossOut, StepCtx


@dataclass(frozen=True)
class ReLUConfig(SAEConfig):
    l1_coef: float = 0.1
    """Weight of the decoder-norm-weighted L1 penalty, for activations scaled to unit mean squared norm
    (E||x||² = 1); the penalty grows like ||x|| and the error like ||x||², so a value tuned for
    activations of norm c is c times the equivalent one here. Larger values give a smaller L0; 0.1 gives
    an L0 in the tens on synthetic data."""
    init_decoder_norm: float = 0.1
    """Norm of every decoder row at initialisation (the April update uses 0.05 to 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.l1_coef >= 0:
            raise ValueError(f"l1_coef must be >= 0, got {self.l1_coef!r}")
        if not self.init_decoder_norm > 0:
            raise ValueError(f"init_decoder_norm must be positive, got {self.init_decoder_norm!r}")


@register("relu")
class ReLUSAE(SAE):
    config_class = ReLUConfig
    saelens_architecture = "standard"
    unit_norm_decoder = False
    cfg: ReLUConfig

    def __init__(self, cfg: ReLUConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        init_parameters(self, cfg.init_decoder_norm, F.tied_init(cfg.d_in, cfg.d_sae, generator))

    @classmethod
    def optim_defaults(cls, cfg: ReLUConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return ((x - self.b_dec) @ self.W_enc + self.b_enc).relu()

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        return l1_loss(self, self.cfg.l1_coef, batch, ctx)


def init_parameters(sae: SAE, decoder_norm: float, weights: tuple[Tensor, Tensor]) -> None:
    """The April update's initialisation from unit-norm ``(W_enc, W_dec)``: both scaled to ``decoder_norm``,
    zero biases."""
    W_enc, W_dec = weights
    sae.W_enc = nn.Parameter(W_enc * decoder_norm)
    sae.W_dec = nn.Parameter(W_dec * decoder_norm)
    sae.b_enc = nn.Parameter(torch.zeros(sae.d_sae))
    sae.b_dec = nn.Parameter(torch.zeros(sae.d_out))


def l1_loss(sae: SAE, l1_coef: float, batch: ActBatch, ctx: StepCtx, weights: Tensor | None = None) -> LossOut:
    """The loss of the module docstring for ``sae`` (an SAE or a transcoder, :mod:`saekit.sae.transcoder`)
    with codes ``encode(x)``, reconstructing ``sae.target_of(batch)``; ``weights`` [d_sae] replace the
    decoder norms that weight each code (a crosscoder's sum of per-site norms, :mod:`saekit.sae.crosscoder`)."""
    x, y = batch.x, sae.target_of(batch)
    codes = sae.encode(x)
    y_hat = sae.reconstruct(x, codes)
    mse = F.mse_per_token(y, y_hat).mean()
    l1 = (codes * (sae.W_dec.norm(dim=-1) if weights is None else weights)).sum(-1).mean()
    loss = mse + ctx.sparsity_scale * l1_coef * l1
    return LossOut(loss, y_hat, Codes(codes), {"mse": mse.detach(), "l1": l1.detach(), "l0": F.l0_of(codes)})
