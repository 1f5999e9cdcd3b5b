"""Crosscoders (Lindsey, Templeton, Marcus, Conerly, Batson & Olah 2024, "Sparse Crosscoders for
Cross-Layer Features and Model Diffing", Transformer Circuits Thread).

A crosscoder is one dictionary over several sites: the layers of one model (acausal: every site
read, every site written), or the same site of two models or checkpoints read on the same tokens
(model diffing). In saekit any SAE reads several sites when ``metadata["sites"]`` names them
(``sites = [...]`` in a run config's ``[[sae]]`` table): its input row is their rows side by side,
``x = [x_1, …, x_n]`` of width ``d_in = n · d``, each site normalised by its own factor, and it
reconstructs them all. So a TopK or BatchTopK SAE over several sites is a TopK / BatchTopK crosscoder
(the form of Minder et al. 2025). This class is the paper's own objective:

    f     = ReLU(Σ_s x_s W_enc^s + b_enc)          = ReLU(x W_enc + b_enc)
    x̂_s   = f W_dec^s + b_dec^s                     (x̂ = f W_dec + b_dec)
    loss  = Σ_s ||x_s − x̂_s||² + sparsity · l1_coef · Σ_i f_i Σ_s ||W_dec^s[i]||

The penalty weights each latent by the *sum* of its per-site decoder norms, an L1 norm over sites,
where a ReLU SAE over the same rows would take the L2 norm of the whole row: the L1 makes it cheaper
for a latent to write to few sites, which is what lets exclusive latents appear (the paper's point;
:mod:`saekit.analysis.crosscoder` reads them off the per-site norms). As in the paper the encoder reads
the input without subtracting ``b_dec``. Over one site the class is the ReLU SAE of
:mod:`saekit.sae.relu` without that subtraction.

Initialisation: the ReLU SAE's (random decoder rows of norm ``init_decoder_norm``, ``W_enc = W_decᵀ``,
zero ``b_enc``), with ``b_dec`` set by the loop to the mean of the first batch.

Units: a crosscoder's sites have one factor each, so no single raw unit exists for its codes; they stay
in the units of normalised training, and the factors are folded into the encoder's rows and the
decoder's columns (:func:`saekit.training.normalise.rescale_sites_`), recorded as
``metadata["normalization_factors"]``. SAELens has no crosscoder class: a saved crosscoder names class
``crosscoder`` (or its architecture's, with ``metadata.hook_names``), which saekit reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor

from saekit.sae import functional as F
from saekit.sae.base import SAE, OptimDefaults
from saekit.sae.registry import register
from saekit.sae.relu import ReLUConfig, init_parameters, l1_loss
from saekit.types import ActBatch, LossOut, StepCtx


@dataclass(frozen=True)
class CrosscoderConfig(ReLUConfig):
    """The ReLU SAE's fields (``l1_coef``, ``init_decoder_norm``); the sites come from the SAE's
    ``metadata["sites"]`` (a run config's ``sites``), ``d_in`` being their total width."""


@final
@register("crosscoder")
class Crosscoder(SAE):
    config_class = CrosscoderConfig
    saelens_architecture = "crosscoder"
    apply_b_dec_to_input = False
    unit_norm_decoder = False
    b_dec_init = "mean"
    cfg: CrosscoderConfig

    def __init__(self, cfg: CrosscoderConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        init_parameters(self, cfg.init_decoder_norm, F.tied_init(cfg.d_in, cfg.d_sae, generator))

    @classmethod
    def optim_defaults(cls, cfg: CrosscoderConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return (x @ self.W_enc + self.b_enc).relu()

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        n_sites = max(len(self.sites), 1)
        return l1_loss(self, self.cfg.l1_coef, batch, ctx, weights=F.site_norms(self.W_dec, n_sites).sum(-1))
