"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse
Autoencoders"): one path decides *which* latents fire, another *how much*, sharing encoder directions.

    u       = (x − b_dec) W_enc                       (no b_enc: SAELens's gated layout)
    π_gate  = u + b_gate
    π_mag   = exp(r_mag) ⊙ u + b_mag
    f       = 1[π_gate > 0] ⊙ ReLU(π_mag)
    x̂       = f W_dec + b_dec
    x̂_gate  = ReLU(π_gate) sg(W_dec) + sg(b_dec)             (sg: stop-gradient)
    loss    = ||x − x̂||² + s · l1_coef · ||ReLU(π_gate)||₁ + ||x − x̂_gate||²

``s`` is the loop's sparsity warm-up scale. The L1 penalty sits on the gate path only, so it chooses
the support without shrinking the magnitudes; the auxiliary term ||x − x̂_gate||² gives the gate path
the reconstruction gradient that the step 1[π_gate > 0] cannot pass, through a frozen decoder so that
it trains only the encoder side.

The penalty is the plain L1 of dictionary_learning's ``GatedSAETrainer`` (gdm.py), not weighted by
decoder row norms: the decoder is kept at unit norm, where the weights are all 1, and the gradient of
such a weighting on W_dec is parallel to each row and would be projected away by the loop anyway.

Defaults follow dictionary_learning: W_enc = W_decᵀ with unit-norm rows, b_gate = b_mag = r_mag = 0,
Adam β = (0, 0.999), geometric-median ``b_dec``; the learning rate is saekit's default
(:func:`saekit.sae.functional.default_lr`; dictionary_learning's 5e-5 barely moves in a few thousand
steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from saekit.sae import functional as F
from saekit.sae.base import SAE, OptimDefaults, SAEConfig
from saekit.sae.registry import register
from saekit.types import ActBatch, Codes, LossOut, StepCtx


@dataclass(frozen=True)
class GatedConfig(SAEConfig):
    l1_coef: float = 0.3
    """Weight of the L1 penalty on the gate pre-activations, for activations scaled to unit mean squared
    norm (E||x||² = 1); the penalty grows like ||x|| and the error like ||x||², so a value tuned for
    activations of norm c is c times the equivalent one here. Larger values give a smaller L0; 0.3 gives
    an L0 in the tens on synthetic data."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.l1_coef >= 0:
            raise ValueError(f"l1_coef must be >= 0, got {self.l1_coef!r}")


class GatedPaths(NamedTuple):
    """Pre-activations of both paths, [..., d_sae] each."""

    gate: Tensor
    mag: Tensor


class GatedParts(NamedTuple):
    """What a gated loss is made of, its sparsity penalty aside."""

    codes: Tensor
    x_hat: Tensor
    gate_acts: Tensor
    """ReLU(π_gate): what the sparsity penalty is taken of."""
    mse: Tensor
    aux: Tensor
    """||x − x̂_gate||², through the frozen decoder."""


def gated_paths(x: Tensor, W_enc: Tensor, b_dec: Tensor, b_gate: Tensor, r_mag: Tensor, b_mag: Tensor) -> GatedPaths:
    """Both paths' pre-activations: u = (x − b_dec) W_enc, π_gate = u + b_gate, π_mag = exp(r_mag) ⊙ u + b_mag."""
    u = (x - b_dec) @ W_enc
    return GatedPaths(u + b_gate, u * r_mag.exp() + b_mag)


def gated_parts(x: Tensor, paths: GatedPaths, decode: Callable[[Tensor], Tensor], W_dec: Tensor, b_dec: Tensor) -> GatedParts:
    """The codes, reconstruction and loss terms of a gated SAE from its two paths (module docstring)."""
    codes = (paths.gate > 0).to(paths.mag.dtype) * paths.mag.relu()
    x_hat = decode(codes)
    gate_acts = paths.gate.relu()
    x_hat_gate = gate_acts @ W_dec.detach() + b_dec.detach()
    return GatedParts(codes, x_hat, gate_acts, F.mse_per_token(x, x_hat).mean(), F.mse_per_token(x, x_hat_gate).mean())


@register("gated")
class GatedSAE(SAE):
    config_class = GatedConfig
    saelens_architecture = "gated"
    scaled_params = ("b_gate", "b_mag", "b_dec")
    has_b_enc = False
    cfg: GatedConfig
    b_gate: nn.Parameter
    b_mag: nn.Parameter
    r_mag: nn.Parameter

    def __init__(self, cfg: GatedConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        init_parameters(self, generator)

    @classmethod
    def optim_defaults(cls, cfg: GatedConfig) -> OptimDefaults:
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
        l1 = parts.gate_acts.sum(-1).mean()
        loss = parts.mse + ctx.sparsity_scale * self.cfg.l1_coef * l1 + parts.aux
        terms = {"mse": parts.mse.detach(), "l1": l1.detach(), "aux": parts.aux.detach(), "l0": F.l0_of(parts.codes)}
        return LossOut(loss, parts.x_hat, Codes(parts.codes), terms)


def init_parameters(sae: SAE, generator: torch.Generator | None) -> None:
    """The Gated SAE's initialisation (and Gated + p-annealing's): ``W_enc = W_decᵀ`` with unit-norm
    decoder rows, zero biases and a zero ``r_mag`` (the magnitude path starts as the gate's)."""
    W_enc, W_dec = F.tied_init(sae.d_in, sae.d_sae, generator)
    sae.W_enc = nn.Parameter(W_enc)
    sae.W_dec = nn.Parameter(W_dec)
    sae.b_gate = nn.Parameter(torch.zeros(sae.d_sae))
    sae.b_mag = nn.Parameter(torch.zeros(sae.d_sae))
    sae.r_mag = nn.Parameter(torch.zeros(sae.d_sae))
    sae.b_dec = nn.Parameter(torch.zeros(sae.d_in))


def gated_codes(paths: GatedPaths) -> Tensor:
    """The codes of a Gated SAE: the magnitude path where the gate is open, ``1[gate > 0] · ReLU(mag)``."""
    gate, mag = paths
    return (gate > 0).to(mag.dtype) * mag.relu()
