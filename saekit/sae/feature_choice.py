"""Feature Choice SAE (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature Choice
Sparse Autoencoders"): every latent chooses its tokens.

Training couples the tokens of a batch of n:

    Z     = ReLU((x − b_dec) W_enc + b_enc)                     [n, d_sae]
    m_j   = ⌊n·k · w_j⌋, w_j ∝ (j+1)^(−α), Σ w = 1 (at least 1)  the capacity of latent j
    f     = Z on the m_j largest entries of column j of Z, for every latent j; 0 elsewhere
    x̂     = f W_dec + b_dec
    loss  = the TopK family's (||x − x̂||² + aux_coef · AuxK + aux_zipf_coef · aux_zipf_loss)

TopK asks every token for exactly k latents; here every latent serves at most m_j tokens, so the
batch spends at most the same budget n·k, a token gets as many latents as choose it (possibly none),
and no latent can starve: each one takes its best tokens in every batch, so it fires whenever it
has a positive pre-activation anywhere in the batch.

Capacities: α = ``capacity_zipf_exponent`` = 1 (default) gives Zipf-shaped capacities (latent 0 the
largest); α = 0 gives every latent the same m = ⌊n·k / d_sae⌋. The paper sets Feature Choice's
capacities from a Zipf distribution (the paper's text could not be read here; its abstract says each
feature matches at most m tokens, and its OpenReview reviewers that "zipf distribution is used to set
the constraints for feature choice"; its exponent is not known to us, so 1 is our choice). A uniform
capacity caps every latent at a density of k / d_sae, so a feature more frequent than that must be
split over several latents: on planted Zipfian features (docs/architectures.md, "Defaults") uniform capacities
recovered 0.85 of them in 2,000 steps, Zipf-shaped ones 0.97. Latents learn which capacity suits
them: the most frequent features settle in the latents with the largest capacities.

Inference must not depend on the batch, so every latent learns its own threshold: after each step
from ``threshold_start_step`` on (capped at half the run, β raised as BatchTopK's),

    θ_j ← (1 − β) θ_j + β · (smallest positive activation latent j kept in the batch)

with θ_j starting at the first such value, and ``encode(x) = Z ⊙ 1[Z > θ]``: a JumpReLU with one
threshold per latent, saved for SAELens as ``jumprelu``. Since θ_j tracks the m_j-th largest of n
activations, a latent fires on about a fraction m_j/n of tokens at inference, which keeps the mean L0
near k. θ_j = +inf means "not set": such a latent is off at inference (in saekit and in SAELens, which
computes ReLU(z) ⊙ 1[z > θ] from the saved folder); a fresh SAE therefore encodes nothing, and a
latent that kept nothing positive while the threshold was tracked stays off.
The mechanism is BatchTopK's (:mod:`saekit.sae.batch_topk`), per latent instead of global.

The loss, AuxK and aux_zipf_loss are the TopK family's (:mod:`saekit.sae.topk_family`); Feature
Choice's part is its selection and its thresholds. Defaults follow the family: the default learning
rate, AuxK weight 1/32 with k_aux = d_in // 2, unit-norm decoder, geometric-median ``b_dec``.
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
from saekit.sae.batch_topk import check_threshold_fields
from saekit.sae.registry import register
from saekit.types import ActBatch, LossOut, StepCtx


@dataclass(frozen=True)
class FeatureChoiceConfig(family.TopKFamilyConfig):
    """The TopK family's fields (k read as the budget the capacities share), the capacities' shape and
    the inference thresholds' fields."""

    capacity_zipf_exponent: float = 1.0
    """Shape of the capacities: m_j ∝ (j+1)^(−exponent) (Zipf, as the paper); 0 gives every latent the
    same capacity m = max(1, ⌊n·k / d_sae⌋)."""
    threshold_ema: float = 0.001
    """β of each latent's inference-threshold EMA (raised to 10 / total_steps in short runs, as BatchTopK)."""
    threshold_start_step: int = 1000
    """Step from which the thresholds are tracked (capped at half the run, so short runs set them too)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.capacity_zipf_exponent >= 0:
            raise ValueError(f"capacity_zipf_exponent must be >= 0, got {self.capacity_zipf_exponent!r}")
        check_threshold_fields(self.threshold_ema, self.threshold_start_step)


def feature_choice(k: int, d_sae: int, exponent: float) -> family.Selection:
    """Feature Choice's selection: the m_j largest activations of every latent j in the batch."""

    def select(pre: Tensor, batch: ActBatch, ctx: StepCtx) -> S.Pattern:
        capacities = F.feature_capacities(pre.shape[0] * ctx.comm.world_size, k, d_sae, exponent)
        return S.pattern_from_mask(F.feature_choice_mask(pre.relu(), capacities, ctx.comm))

    return select


@final
@register("feature_choice")
class FeatureChoiceSAE(SAE):
    config_class = FeatureChoiceConfig
    saelens_architecture = "jumprelu"
    scaled_params = ("b_enc", "b_dec", "threshold")
    has_threshold = True
    training_state = F.ZIPF_STATE
    cfg: FeatureChoiceConfig
    threshold: Tensor

    def __init__(self, cfg: FeatureChoiceConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        family.init_parameters(self, cfg, generator)
        self.register_buffer("threshold", torch.full((cfg.d_sae,), F.UNSET_THRESHOLD))

    @classmethod
    def optim_defaults(cls, cfg: FeatureChoiceConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    @property
    def threshold_set(self) -> bool:
        """Whether any latent's inference threshold has been learned."""
        return bool(self.threshold.isfinite().any())

    def capacities(self, n_tokens: int) -> Tensor:
        """[d_sae] tokens each latent may take from a training batch of ``n_tokens``."""
        return F.feature_capacities(n_tokens, self.cfg.k, self.d_sae, self.cfg.capacity_zipf_exponent)

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return family.threshold_codes(self, x, self.threshold)

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        self._check_input(batch.x)
        select = feature_choice(self.cfg.k, self.d_sae, self.cfg.capacity_zipf_exponent)
        return family.family_loss(self, self.cfg, batch, ctx, select)

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        family.after_step(self, self.cfg, out, ctx)
        smallest = out.codes.smallest_positive(per_latent=True)
        F.track_threshold_(self.threshold, smallest, self.cfg.threshold_ema, self.cfg.threshold_start_step, ctx)
