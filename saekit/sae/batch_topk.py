"""BatchTopK SAE (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders").

Training couples the tokens of a batch:

    Z     = ReLU((x − b_dec) W_enc + b_enc)                     [batch, d_sae]
    f     = Z on the batch·k largest entries of the whole of Z, 0 elsewhere
    x̂     = f W_dec + b_dec
    loss  = ||x − x̂||² + aux_coef · AuxK

so k is the *mean* number of active latents per token and each token gets as many as it needs.
Inference must not depend on the batch, so a global threshold θ is learned alongside: after each step
from ``threshold_start_step`` on,

    θ ← (1 − β) θ + β · min{ f_ij : f_ij > 0 }                   (θ starts at the first such minimum)

and ``encode(x) = Z ⊙ 1[Z > θ]``, a JumpReLU with one threshold shared by all latents; it is saved
for SAELens as ``jumprelu`` with ``threshold`` a full [d_sae] vector of equal entries.

Choices made here (dictionary_learning's ``BatchTopKTrainer`` is the reference):

* β is raised to 10 / total_steps when that is larger (:func:`saekit.sae.functional.threshold_ema_weight`),
  so that in a short run the threshold follows the encoder of the run's last tenth rather than
  averaging over encoders long gone.
* The EMA starts at ``min(threshold_start_step, total_steps // 2)``, so a short run still sets the
  threshold instead of never reaching the start step.
* A batch with no positive kept activation leaves θ unchanged (dictionary_learning would pull θ
  towards 0, which would switch every latent on at inference).
* θ starts at +inf, which marks it as not yet set: until it is, ``encode`` gives zero codes, exactly
  what SAELens's ``jumprelu`` (ReLU(z) ⊙ 1[z > θ]) computes from the saved folder. A run sets θ by
  half its length; an SAE saved before that encodes nothing, in saekit as in SAELens. The state thus
  lives in ``threshold`` alone: a run resumed from a state_dict continues the EMA exactly, and the
  saved folder has exactly the tensors SAELens's ``jumprelu`` expects (its strict ``load_state_dict``
  would refuse a separate flag tensor).

Defaults follow dictionary_learning: AuxK weight 1/32 with k_aux = d_in // 2, unit-norm decoder,
geometric-median ``b_dec``; the learning rate is saekit's default (:func:`saekit.sae.functional.default_lr`,
four times dictionary_learning's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saekit.sae import functional as F
from saekit.sae import sparse as S
from saekit.sae.base import SAE, OptimDefaults
from saekit.sae.registry import register
from saekit.sae.topk import TopKConfig
from saekit.types import ActBatch, LossOut, StepCtx


@dataclass(frozen=True)
class BatchTopKConfig(TopKConfig):
    """TopK's fields and checks (k, aux_k, aux_coef), k read as a mean, plus the threshold's."""

    k: int = 32
    """Mean active latents per token: a training batch of B tokens keeps its B·k largest activations."""
    threshold_ema: float = 0.001
    """β of the inference-threshold EMA, θ ← (1 − β) θ + β · (smallest kept activation of the batch);
    raised to 10 / total_steps in runs shorter than 10,000 steps (memory at most a tenth of the run)."""
    threshold_start_step: int = 1000
    """Step from which the threshold is tracked (capped at half the run, so short runs set it too)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.threshold_ema <= 1:
            raise ValueError(f"threshold_ema must be in (0, 1], got {self.threshold_ema!r}")
        if self.threshold_start_step < 0:
            raise ValueError(f"threshold_start_step must be >= 0, got {self.threshold_start_step}")


@register("batch_topk")
class BatchTopKSAE(SAE):
    config_class = BatchTopKConfig
    training_state = F.ZIPF_STATE
    saelens_architecture = "jumprelu"
    scaled_params = ("b_enc", "b_dec", "threshold")
    cfg: BatchTopKConfig
    threshold: Tensor

    def __init__(self, cfg: BatchTopKConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        W_enc, W_dec = F.tied_init(cfg.d_in, cfg.d_sae, generator)
        self.W_enc = nn.Parameter(W_enc)
        self.W_dec = nn.Parameter(W_dec)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.aux_zipf_coef > 0:
            F.register_zipf_state(self, cfg.d_sae)
        self.register_buffer("threshold", torch.full((cfg.d_sae,), F.UNSET_THRESHOLD))

    @classmethod
    def optim_defaults(cls, cfg: BatchTopKConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    @property
    def threshold_set(self) -> bool:
        """Whether the inference threshold has been learned (see the module docstring)."""
        return bool(self.threshold.isfinite().all())

    def post_relu(self, x: Tensor) -> Tensor:
        return ((x - self.b_dec) @ self.W_enc + self.b_enc).relu()

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        acts = self.post_relu(x)
        return acts * (acts > self.threshold.to(acts.dtype))

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        x = batch.x
        self._check_input(x)
        if x.dim() != 2 or self.cfg.aux_zipf_coef > 0:
            return self._dense_loss(x, ctx)
        # Sparse path (saekit.sae.sparse): one dense product, then only the batch·k kept activations.
        x_in = x - self.b_dec.detach()
        with torch.no_grad():
            pre = S.pre_acts(x_in, self.W_enc, self.b_enc)
            # Selecting on pre rather than ReLU(pre) keeps the same positive entries (ReLU is monotone);
            # where fewer than batch·k are positive, the extra picks get a zero code either way.
            n_keep = min(pre.numel(), pre.shape[0] * self.cfg.k)
            flat = S.batch_topk_flat(pre, n_keep, per_row=2 * self.cfg.k)
            pattern = S.pattern_from_flat(flat, *pre.shape)
        return S.topk_family_loss(self, x, x_in, pre, pattern, ctx.dead_mask)

    def _dense_loss(self, x: Tensor, ctx: StepCtx) -> LossOut:
        """The plain dense computation of ``loss``; the sparse path is tested against it."""
        acts = self.post_relu(x)
        codes = acts * F.batch_topk_mask(acts, self.cfg.k)
        x_hat = self.decode(codes)
        mse = F.mse_per_token(x, x_hat).mean()
        aux = F.aux_k_loss(acts, (x - x_hat).detach(), ctx.dead_mask, self.cfg.aux_k or self.d_in // 2, self.W_dec)
        loss = mse + self.cfg.aux_coef * aux
        terms = {"mse": mse.detach(), "aux_k": aux.detach(), "l0": F.l0_of(codes)}
        if self.cfg.aux_zipf_coef > 0:
            zipf = F.aux_zipf_loss(acts, (x - x_hat).detach(), F.zipf_running(self, codes, self.cfg.aux_zipf_ema).estimate, self.cfg.aux_k or self.d_in // 2, self.W_dec, self.cfg.aux_zipf_exponent)
            loss = loss + self.cfg.aux_zipf_coef * zipf
            terms["aux_zipf"] = zipf.detach()
        return LossOut(loss, x_hat, codes, terms)

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        if self.cfg.aux_zipf_coef > 0:
            F.commit_zipf_state_(self, F.zipf_running(self, out.codes, self.cfg.aux_zipf_ema))
        if F.threshold_tracking(ctx.step, self.cfg.threshold_start_step, ctx.total_steps):
            weight = F.threshold_ema_weight(self.cfg.threshold_ema, ctx.total_steps)
            F.ema_threshold_(self.threshold, F.smallest_kept(out.codes), weight)
