"""TopK SAE with the AuxK loss on dead latents (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders").

    pre   = (x − b_dec) W_enc + b_enc
    f     = ReLU of the k largest entries of ``pre``, 0 elsewhere
    x̂     = f W_dec + b_dec
    loss  = ||x − x̂||² + aux_coef · AuxK

AuxK reconstructs the residual ``x − x̂`` from the ``aux_k`` most active dead latents, which gives
dead latents a gradient and brings them back; its protocol is dictionary_learning's (see
:func:`saekit.sae.sparse.aux_loss`). Decoder rows stay unit norm. The loss, AuxK and the
optional aux_zipf_loss are the TopK family's (:mod:`saekit.sae.topk_family`); TopK's part is its
selection, the k largest pre-activations of each row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor

from saekit.sae import functional as F
from saekit.sae import topk_family as family
from saekit.sae.base import SAE, OptimDefaults
from saekit.sae.registry import register
from saekit.types import ActBatch, LossOut, StepCtx


@dataclass(frozen=True)
class TopKConfig(family.TopKFamilyConfig):
    """The TopK family's fields; TopK adds none."""


@final
@register("topk")
class TopKSAE(SAE):
    config_class = TopKConfig
    saelens_architecture = "topk"
    training_state = F.ZIPF_STATE
    latent_axes = family.LATENT_AXES
    cfg: TopKConfig

    def __init__(self, cfg: TopKConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        family.init_parameters(self, cfg, generator)

    @classmethod
    def optim_defaults(cls, cfg: TopKConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return F.scatter_codes(F.topk_codes(family.pre_acts(self, x), self.cfg.k), self.d_sae)

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        self._check_input(batch.x)
        return family.family_loss(self, self.cfg, batch, ctx, family.per_row_topk(self.cfg.k))

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        family.after_step(self, self.cfg, out, ctx)

    def extra_saelens_cfg(self) -> dict:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}
