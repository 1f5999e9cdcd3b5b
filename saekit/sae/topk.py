"""TopK SAE with the AuxK loss on dead latents (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders").

    pre   = (x − b_dec) W_enc + b_enc
    f     = ReLU of the k largest entries of ``pre``, 0 elsewhere
    x̂     = f W_dec + b_dec
    loss  = ||x − x̂||² + aux_coef · AuxK

AuxK reconstructs the residual ``x − x̂`` from the ``aux_k`` most active dead latents, which gives
dead latents a gradient and brings them back; its protocol is dictionary_learning's (see
:func:`saekit.sae.functional.aux_k_loss`). Decoder rows stay unit norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from saekit._fast import row_topk
from saekit.sae import functional as F
from saekit.sae import sparse as S
from saekit.sae.base import SAE, OptimDefaults, SAEConfig
from saekit.sae.registry import register
from saekit.strict import refuse_unused
from saekit.types import ActBatch, LossOut, StepCtx

if TYPE_CHECKING:
    from saekit.sae.gradient_topk import GradientTopKConfig


@dataclass(frozen=True)
class TopKConfig(SAEConfig):
    k: int = 32
    """Active latents per token."""
    aux_k: int | None = None
    """Dead latents used by the AuxK loss; None means d_in // 2."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss; 0 disables it."""
    aux_zipf_coef: float = 0.0
    """Weight of aux_zipf_loss (Ayonrinde 2024), AuxK extended to underutilised latents; 0 disables it.
    PROVISIONAL reading of the paper (see saekit.sae.functional.aux_zipf_loss): latents whose running
    firing density falls below a Zipf law with the same total reconstruct the residual, each weighted
    by its shortfall, with up to aux_k latents per token."""
    aux_zipf_exponent: float = 1.0
    """Exponent α of the Zipf target density C · rank^(−α) used by aux_zipf_loss (provisional)."""
    aux_zipf_ema: float = 0.01
    """Weight of each batch in the running firing density aux_zipf_loss compares with the Zipf law (an
    exponential moving average over about 1/aux_zipf_ema batches, bias-corrected while it fills)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}")
        check_aux_k(self)
        if not self.aux_zipf_coef >= 0:
            raise ValueError(f"aux_zipf_coef must be >= 0, got {self.aux_zipf_coef!r}")
        if not self.aux_zipf_exponent >= 0:
            raise ValueError(f"aux_zipf_exponent must be >= 0, got {self.aux_zipf_exponent!r}")
        if not 0 < self.aux_zipf_ema <= 1:
            raise ValueError(f"aux_zipf_ema must be in (0, 1], got {self.aux_zipf_ema!r}")
        if self.aux_zipf_coef == 0:
            refuse_unused(self, ("aux_zipf_exponent", "aux_zipf_ema"), "aux_zipf_coef is 0")


def check_aux_k(cfg: TopKConfig | GradientTopKConfig) -> None:
    """The AuxK fields every TopK-family config declares: aux_k > 0 or None, aux_coef >= 0, and no
    aux_k when the loss is off."""
    if cfg.aux_k is not None and cfg.aux_k <= 0:
        raise ValueError(f"aux_k must be positive, got {cfg.aux_k}")
    if not cfg.aux_coef >= 0:
        raise ValueError(f"aux_coef must be >= 0, got {cfg.aux_coef}")
    if cfg.aux_coef == 0:
        refuse_unused(cfg, ("aux_k",), "aux_coef is 0")


@register("topk")
class TopKSAE(SAE):
    config_class = TopKConfig
    training_state = F.ZIPF_STATE
    saelens_architecture = "topk"
    cfg: TopKConfig

    def __init__(self, cfg: TopKConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        W_enc, W_dec = F.tied_init(cfg.d_in, cfg.d_sae, generator)
        self.W_enc = nn.Parameter(W_enc)
        self.W_dec = nn.Parameter(W_dec)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.aux_zipf_coef > 0:
            F.register_zipf_state(self, cfg.d_sae)

    @classmethod
    def optim_defaults(cls, cfg: TopKConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    def pre_acts(self, x: Tensor) -> Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return F.scatter_codes(F.topk_codes(self.pre_acts(x), self.cfg.k), self.d_sae)

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        x = batch.x
        self._check_input(x)
        if x.dim() != 2 or self.cfg.aux_zipf_coef > 0:
            return self._dense_loss(x, ctx)
        # Sparse path (saekit.sae.sparse): one dense product, then only the k chosen latents per token.
        x_in = x - self.b_dec.detach()
        with torch.no_grad():
            pre = S.pre_acts(x_in, self.W_enc, self.b_enc)
            pattern = S.pattern_from_topk(row_topk(pre, self.cfg.k), self.d_sae, ascending=True)
        return S.topk_family_loss(self, x, x_in, pre, pattern, ctx.dead_mask)

    def _dense_loss(self, x: Tensor, ctx: StepCtx) -> LossOut:
        """The plain dense computation of ``loss``; the sparse path is tested against it."""
        pre = self.pre_acts(x)
        codes = F.scatter_codes(F.topk_codes(pre, self.cfg.k), self.d_sae)
        x_hat = self.decode(codes)
        mse = F.mse_per_token(x, x_hat).mean()
        aux = F.aux_k_loss(pre, (x - x_hat).detach(), ctx.dead_mask, self.cfg.aux_k or self.d_in // 2, self.W_dec)
        loss = mse + self.cfg.aux_coef * aux
        terms = {"mse": mse.detach(), "aux_k": aux.detach(), "l0": F.l0_of(codes)}
        if self.cfg.aux_zipf_coef > 0:
            zipf = F.aux_zipf_loss(pre, (x - x_hat).detach(), F.zipf_running(self, codes, self.cfg.aux_zipf_ema).estimate, self.cfg.aux_k or self.d_in // 2, self.W_dec, self.cfg.aux_zipf_exponent)
            loss = loss + self.cfg.aux_zipf_coef * zipf
            terms["aux_zipf"] = zipf.detach()
        return LossOut(loss, x_hat, codes, terms)

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        if self.cfg.aux_zipf_coef > 0:
            F.commit_zipf_state_(self, F.zipf_running(self, out.codes, self.cfg.aux_zipf_ema))

    def extra_saelens_cfg(self) -> dict:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}
