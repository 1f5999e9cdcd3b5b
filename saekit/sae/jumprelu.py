"""JumpReLU SAE trained with a direct L0 penalty (Rajamanoharan et al. 2024, "Jumping Ahead"; the
Gemma Scope recipe, Lieberum et al. 2024).

    z     = x W_enc + b_enc                      (no b_dec subtraction, as Gemma Scope)
    f     = JumpReLU_θ(z) = z ⊙ H(z − θ)         θ ∈ R^d_sae, one learned threshold per latent
    x̂     = f W_dec + b_dec
    loss  = ||x − x̂||² + s · l0_coef · mean_batch Σ_i H(z_i − θ_i)

``s`` is the loop's sparsity warm-up scale. H has no useful derivative, so θ is trained with the
straight-through pseudo-derivatives of :func:`saekit.sae.functional.jumprelu` and
:func:`~saekit.sae.functional.heaviside_step` (rectangle kernel K of width ε = ``bandwidth``):

    ð/ðθ JumpReLU_θ(z) = −(θ/ε) K((z − θ)/ε)      ð/ðθ H(z − θ) = −(1/ε) K((z − θ)/ε)

while z gets the exact gradient H(z − θ) from the reconstruction and nothing from the L0 term, so the
penalty acts on the encoder only through θ.

Kept from the paper: θ₀ = ε = 0.001 (in units of activations scaled to E||x||² = 1), Adam β = (0, 0.999),
W_enc = W_decᵀ at initialisation, zero biases (``b_dec`` included, as Gemma Scope). Three defaults
depart from the paper's, for runs from hundreds of steps on (its recipe, lr 7e-5 over 10⁵-10⁶ steps,
barely moves in a few thousand); each was measured on planted features (docs/architectures.md, "Defaults"):

* the learning rate is saekit's default for every architecture (:func:`saekit.sae.functional.default_lr`);
* the thresholds learn at ``threshold_lr_scale`` = 0.1 of it. Adam moves every parameter by about
  the learning rate per step whatever the size of its gradient, and θ's gradient comes from the
  few pre-activations within ε/2 of it: at the weights' rate the thresholds climb past the
  pre-activations of latents still forming (rare features), which then never fire and never learn;
* the decoder rows are free (no unit-norm constraint; the L0 penalty does not depend on them) and
  start at norm ``init_decoder_norm`` = 0.1 with W_enc = W_decᵀ, as SAELens's JumpReLU trainer and
  Anthropic's April 2024 recipe: small initial pre-activations let θ and the encoder grow together.
  A latent's code is therefore in units of its own decoder row.

The code is computed as ReLU(z) ⊙ H(z − θ), which is z ⊙ H(z − θ) for θ >= 0 and is what SAELens and
the Gemma Scope reference compute for any θ, so a loaded or edited SAE with a negative θ encodes alike
everywhere. ``after_step`` clamps θ at 0: the θ pseudo-derivative is scaled by θ, so a negative θ would
flip the sign of the reconstruction gradient on θ.

Precision: the pre-activations are computed in float32 even under bfloat16 autocast
(:func:`saekit.sae.functional.affine_float32`), since what decides θ's pseudo-gradient, the
pre-activations within ε/2 of θ, needs a resolution finer than ε, which bfloat16 lacks near θ ~ 0.3.
On CUDA this gives up the bfloat16 rate for the encoder product of this architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saekit.sae import functional as F
from saekit.sae import relu, shards
from saekit.sae import sparse as S
from saekit.sae.base import SAE, OptimDefaults, SAEConfig
from saekit.sae.registry import register
from saekit.types import ActBatch, Codes, LossOut, StepCtx

SPARSE_MAX_DENSITY = 0.03
"""The sparse loss is used when at most this fraction of (token, latent) pairs is active or near θ;
above it the dense products cost less (the crossover measured by benchmarks/step_cost.py, recorded
in docs/benchmarks.md). Early in training (θ₀ ≈ 0, half the latents active) the dense path runs."""


@dataclass(frozen=True)
class JumpReLUConfig(SAEConfig):
    l0_coef: float = 3e-3
    """Weight λ of the L0 penalty, for activations scaled to unit mean squared norm (E||x||² = 1): a latent
    is worth keeping when it lowers the squared error by more than λ, so a value tuned for activations
    of norm c is c² times the equivalent one here. Larger values give a smaller L0; 3e-3 gives an L0 in
    the tens on synthetic data."""
    threshold_init: float = 0.001
    """Initial value θ₀ of every threshold."""
    bandwidth: float = 0.001
    """Width ε of the rectangle kernel in the threshold's pseudo-derivative."""
    threshold_lr_scale: float = 0.1
    """Learning rate of the thresholds as a multiple of the weights' (see the module docstring)."""
    init_decoder_norm: float = 0.1
    """Norm of every decoder row at initialisation (W_enc = W_decᵀ); the rows are free afterwards."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.l0_coef >= 0:
            raise ValueError(f"l0_coef must be >= 0, got {self.l0_coef!r}")
        if not self.threshold_init >= 0:
            raise ValueError(f"threshold_init must be >= 0, got {self.threshold_init!r}")
        if not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be positive, got {self.bandwidth!r}")
        if not self.threshold_lr_scale > 0:
            raise ValueError(f"threshold_lr_scale must be positive, got {self.threshold_lr_scale!r}")
        if not self.init_decoder_norm > 0:
            raise ValueError(f"init_decoder_norm must be positive, got {self.init_decoder_norm!r}")


@register("jumprelu")
class JumpReLUSAE(SAE):
    config_class = JumpReLUConfig
    saelens_architecture = "jumprelu"
    apply_b_dec_to_input = False
    unit_norm_decoder = False
    b_dec_init = "zeros"
    scaled_params = ("b_enc", "b_dec", "threshold")
    has_threshold = True
    latent_axes = {"W_enc": 1, "W_dec": 0, "b_enc": 0, "threshold": 0}
    cfg: JumpReLUConfig
    threshold: nn.Parameter

    def __init__(self, cfg: JumpReLUConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        init_parameters(self, cfg, F.tied_init(cfg.d_in, cfg.d_sae, generator))

    @classmethod
    def optim_defaults(cls, cfg: JumpReLUConfig) -> OptimDefaults:
        return jumprelu_optim_defaults(cfg)

    def lr_multipliers(self) -> dict[str, float]:
        return {"threshold": self.cfg.threshold_lr_scale}

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return jumprelu_codes(self, self.threshold, self.cfg.bandwidth, x)

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        self._check_input(batch.x)
        return jumprelu_loss(self, self.cfg, self.threshold, batch, ctx)

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        self.threshold.clamp_(min=0.0)


def init_parameters(sae: SAE, cfg: JumpReLUConfig, weights: tuple[Tensor, Tensor]) -> None:
    """JumpReLU's initialisation from unit-norm ``(W_enc, W_dec)``: ReLU's (both scaled to
    ``init_decoder_norm``, zero biases), and every threshold at ``threshold_init``."""
    relu.init_parameters(sae, cfg.init_decoder_norm, weights)
    sae.register_parameter("threshold", nn.Parameter(torch.full((cfg.d_sae,), cfg.threshold_init)))


def jumprelu_optim_defaults(cfg: JumpReLUConfig) -> OptimDefaults:
    """The default learning rate and Adam β = (0, 0.999), as the paper."""
    return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae), betas=(0.0, 0.999))


def pre_acts(sae: SAE, x: Tensor) -> Tensor:
    """z = x W_enc + b_enc, in float32 even under autocast (see the module docstring)."""
    return F.affine_float32(x, sae.W_enc, sae.b_enc)


def jumprelu_codes(sae: SAE, threshold: Tensor, bandwidth: float, x: Tensor) -> Tensor:
    """``encode``: JumpReLU_θ(z), thresholded in float32; the codes leave in the weights' dtype, as every SAE's do."""
    return F.jumprelu(pre_acts(sae, x), threshold, bandwidth).to(sae.W_dec.dtype)


def jumprelu_loss(sae: SAE, cfg: JumpReLUConfig, threshold: Tensor, batch: ActBatch, ctx: StepCtx) -> LossOut:
    """The loss of the module docstring for ``sae`` (an SAE or a transcoder, :mod:`saekit.sae.transcoder`),
    reconstructing ``sae.target_of(batch)``: on the sparse path when few (token, latent) pairs are active
    or near θ, else densely (:func:`dense_loss`, which the sparse path is tested against)."""
    x, y = batch.x, sae.target_of(batch)
    if x.dim() != 2:
        return dense_loss(sae, cfg, threshold, batch, ctx)
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # θ's window needs float32 z (docstring)
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        z = S.pre_acts(x, sae.W_enc, sae.b_enc)
        # Every (token, latent) with a gradient: the active codes (z > θ), and those within ε/2 of θ,
        # where the pseudo-derivative of θ is non-zero. One comparison against θ − ε takes them all
        # with a margin against rounding; the extra pairs get a zero code and zero gradients.
        touched = z > threshold - cfg.bandwidth
        n_touched = int(torch.count_nonzero(touched))  # .sum() would first copy the mask to int64
    if n_touched > SPARSE_MAX_DENSITY * touched.numel():
        return dense_loss(sae, cfg, threshold, batch, ctx)
    pattern = S.pattern_from_mask(touched)
    z_at = S.gather_pre(z, x, None, sae.W_enc, sae.b_enc, pattern)
    theta_at = threshold[pattern.cols]
    values = F.jumprelu(z_at, theta_at, cfg.bandwidth)
    skip = sae.skip(x)
    y_hat = shards.summed(S.sparse_decode(values, pattern, sae.W_dec), ctx.latents) + (sae.b_dec if skip is None else sae.b_dec + skip)
    mse = F.mse_per_token(y, y_hat).mean()
    l0 = shards.summed(F.heaviside_step(z_at, theta_at, cfg.bandwidth).sum() / x.shape[0], ctx.latents)
    loss = mse + ctx.sparsity_scale * cfg.l0_coef * l0
    codes = S.sparse_codes(values, pattern)
    return LossOut(loss, y_hat, Codes(codes, fired=S.fired_latents(values, pattern)), {"mse": mse.detach(), "l0": l0.detach()})


def dense_loss(sae: SAE, cfg: JumpReLUConfig, threshold: Tensor, batch: ActBatch, ctx: StepCtx) -> LossOut:
    """The plain dense computation of :func:`jumprelu_loss`; the sparse path is tested against it."""
    x, y = batch.x, sae.target_of(batch)
    z = pre_acts(sae, x)
    codes = F.jumprelu(z, threshold, cfg.bandwidth)
    skip = sae.skip(x)
    y_hat = shards.summed(codes @ sae.W_dec, ctx.latents) + (sae.b_dec if skip is None else sae.b_dec + skip)
    mse = F.mse_per_token(y, y_hat).mean()
    # With θ >= 0 this equals the count of non-zero codes, but carries the θ pseudo-derivative.
    l0 = shards.summed(F.heaviside_step(z, threshold, cfg.bandwidth).sum(-1).mean(), ctx.latents)
    loss = mse + ctx.sparsity_scale * cfg.l0_coef * l0
    return LossOut(loss, y_hat, Codes(codes), {"mse": mse.detach(), "l0": l0.detach()})
