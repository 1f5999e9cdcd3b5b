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

This selection is also Mutual Choice's (Ayonrinde 2024: the batch budget n·k spent freely across
tokens and latents), registered as ``mutual_choice`` beside ``batch_topk``: one class, two names.

Defaults follow dictionary_learning: AuxK weight 1/32 with k_aux = d_in // 2, unit-norm decoder,
geometric-median ``b_dec``; the learning rate is saekit's default (:func:`saekit.sae.functional.default_lr`,
four times dictionary_learning's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor

from saekit.sae import functional as F
from saekit.sae import sparse as S
from saekit.sae import topk_family as family
from saekit.sae.base import SAE, OptimDefaults
from saekit.sae.registry import alias, register
from saekit.types import ActBatch, LossOut, StepCtx


@dataclass(frozen=True)
class BatchTopKConfig(family.TopKFamilyConfig):
    """The TopK family's fields (k read as a mean over the batch) and the inference threshold's."""

    threshold_ema: float = 0.001
    """β of the inference-threshold EMA, θ ← (1 − β) θ + β · (smallest kept activation of the batch);
    raised to 10 / total_steps in runs shorter than 10,000 steps (memory at most a tenth of the run)."""
    threshold_start_step: int = 1000
    """Step from which the threshold is tracked (capped at half the run, so short runs set it too)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_threshold_fields(self.threshold_ema, self.threshold_start_step)


def check_threshold_fields(ema: float, start_step: int) -> None:
    """The inference-threshold fields of the batch-coupled selections (BatchTopK, Feature Choice)."""
    if not 0 < ema <= 1:
        raise ValueError(f"threshold_ema must be in (0, 1], got {ema!r}")
    if start_step < 0:
        raise ValueError(f"threshold_start_step must be >= 0, got {start_step}")


def batch_topk(k: int) -> family.Selection:
    """BatchTopK's selection: the n·k largest pre-activations of a batch of n tokens. Selecting on pre
    rather than ReLU(pre) keeps the same positive entries (ReLU is monotone); where fewer than n·k are
    positive, the extra picks get a zero code either way."""

    def select(pre: Tensor, batch: ActBatch, ctx: StepCtx) -> S.Pattern:
        # The matrix is split over ranks by rows (data parallel) or by latents (latent-sharded); the
        # count kept is the whole matrix's either way.
        rows, width = pre.shape[0] * ctx.comm.world_size, pre.shape[1] * ctx.latents.world_size
        n_keep = min(rows * width, rows * k)
        comm = ctx.comm if ctx.comm.distributed else ctx.latents
        if not comm.distributed:
            return S.pattern_from_flat(S.batch_topk_flat(pre, n_keep, per_row=2 * k), *pre.shape)
        # The whole batch's n·k largest: each rank's own largest are its candidates; their values,
        # gathered, give the global cut. Ties at the cut go to the earliest entries, rank by rank.
        flat = S.batch_topk_flat(pre, min(pre.numel(), n_keep), per_row=2 * k).sort().values
        values = pre.flatten()[flat]
        cut = comm.gather(values).topk(n_keep, sorted=False).values.min()
        greater, tied = values > cut, values == cut
        counts = comm.gather(torch.stack([greater.sum(), tied.sum()])[None])  # [ranks, 2]
        free = n_keep - counts[:, 0].sum() - counts[: comm.rank, 1].sum()
        return S.pattern_from_flat(flat[greater | (tied & (tied.cumsum(0) <= free))], *pre.shape)

    return select


@final
@register("batch_topk")
class BatchTopKSAE(SAE):
    config_class = BatchTopKConfig
    saelens_architecture = "jumprelu"
    scaled_params = ("b_enc", "b_dec", "threshold")
    has_threshold = True
    training_state = F.ZIPF_STATE
    latent_axes = {**family.LATENT_AXES, "threshold": 0}
    cfg: BatchTopKConfig
    threshold: Tensor

    def __init__(self, cfg: BatchTopKConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        family.init_parameters(self, cfg, generator)
        self.register_buffer("threshold", torch.full((cfg.d_sae,), F.UNSET_THRESHOLD))

    @classmethod
    def optim_defaults(cls, cfg: BatchTopKConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    @property
    def threshold_set(self) -> bool:
        """Whether the inference threshold has been learned (see the module docstring)."""
        return bool(self.threshold.isfinite().all())

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return family.threshold_codes(self, x, self.threshold)

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        self._check_input(batch.x)
        return family.family_loss(self, self.cfg, batch, ctx, batch_topk(self.cfg.k))

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        family.after_step(self, self.cfg, out, ctx)
        F.track_threshold_(self.threshold, out.codes.smallest_positive(), self.cfg.threshold_ema, self.cfg.threshold_start_step, ctx)


alias("mutual_choice", "batch_topk")
