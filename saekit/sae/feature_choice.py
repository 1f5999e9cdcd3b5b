"""Feature Choice SAE (Ayonrinde 2024, "Adaptive Sparse Allocation with Mutual Choice & Feature Choice
Sparse Autoencoders"): every latent chooses its tokens.

Training couples the tokens of a batch of n:

    Z     = ReLU((x − b_dec) W_enc + b_enc)                     [n, d_sae]
    m_j   = ⌊n·k · w_j⌋, w_j ∝ (j+1)^(−α), Σ w = 1 (at least 1)  the capacity of latent j
    f     = Z on the m_j largest entries of column j of Z, for every latent j; 0 elsewhere
    x̂     = f W_dec + b_dec
    loss  = ||x − x̂||² + aux_coef · AuxK (+ aux_zipf_coef · aux_zipf_loss)

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
split over several latents: on planted Zipfian features (README, "Defaults") uniform capacities
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

Defaults follow the TopK family: the default learning rate, AuxK weight 1/32 with k_aux = d_in // 2,
unit-norm decoder, geometric-median ``b_dec``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saekit.sae import functional as F
from saekit.sae import sparse as S
from saekit.sae.base import SAE, OptimDefaults
from saekit.sae.batch_topk import BatchTopKConfig
from saekit.sae.registry import register
from saekit.types import ActBatch, LossOut, StepCtx


@dataclass(frozen=True)
class FeatureChoiceConfig(BatchTopKConfig):
    """BatchTopK's fields and checks; k sets the latents' capacities."""

    k: int = 32
    """Budget in active latents per token, on average: in a batch of n tokens latent j takes at most
    m_j tokens, its m_j largest activations, with Σ m_j ≈ n·k (uniform: m = max(1, ⌊n·k / d_sae⌋))."""
    capacity_zipf_exponent: float = 1.0
    """Shape of the capacities: m_j ∝ (j+1)^(−exponent) (Zipf, as the paper); 0 gives every latent the
    same capacity."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.capacity_zipf_exponent >= 0:
            raise ValueError(f"capacity_zipf_exponent must be >= 0, got {self.capacity_zipf_exponent!r}")


@register("feature_choice")
class FeatureChoiceSAE(SAE):
    config_class = FeatureChoiceConfig
    training_state = F.ZIPF_STATE
    saelens_architecture = "jumprelu"
    scaled_params = ("b_enc", "b_dec", "threshold")
    cfg: FeatureChoiceConfig
    threshold: Tensor

    def __init__(self, cfg: FeatureChoiceConfig, generator: torch.Generator | None = None) -> None:
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
    def optim_defaults(cls, cfg: FeatureChoiceConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    @property
    def threshold_set(self) -> bool:
        """Whether any latent's inference threshold has been learned."""
        return bool(self.threshold.isfinite().any())

    def post_relu(self, x: Tensor) -> Tensor:
        return ((x - self.b_dec) @ self.W_enc + self.b_enc).relu()

    def capacities(self, n_tokens: int) -> Tensor:
        """[d_sae] tokens each latent may take from a training batch of ``n_tokens``."""
        return F.feature_capacities(n_tokens, self.cfg.k, self.d_sae, self.cfg.capacity_zipf_exponent)

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        acts = self.post_relu(x)
        return acts * (acts > self.threshold.to(acts.dtype))

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        x = batch.x
        self._check_input(x)
        if x.dim() != 2 or self.cfg.aux_zipf_coef > 0:
            return self._dense_loss(x, ctx)
        # Sparse path (saekit.sae.sparse): one dense product, then only the tokens each latent took.
        x_in = x - self.b_dec.detach()
        with torch.no_grad():
            pre = S.pre_acts(x_in, self.W_enc, self.b_enc)
            pattern = S.pattern_from_mask(F.feature_choice_mask(pre.relu(), self.capacities(pre.shape[0])))
        return S.topk_family_loss(self, x, x_in, pre, pattern, ctx.dead_mask)

    def _dense_loss(self, x: Tensor, ctx: StepCtx) -> LossOut:
        """The plain dense computation of ``loss``; the sparse path is tested against it."""
        acts = self.post_relu(x)
        codes = acts * F.feature_choice_mask(acts, self.capacities(acts.shape[0]))
        x_hat = self.decode(codes)
        residual = (x - x_hat).detach()
        mse = F.mse_per_token(x, x_hat).mean()
        k_aux = self.cfg.aux_k or self.d_in // 2
        aux = F.aux_k_loss(acts, residual, ctx.dead_mask, k_aux, self.W_dec)
        loss = mse + self.cfg.aux_coef * aux
        terms = {"mse": mse.detach(), "aux_k": aux.detach(), "l0": F.l0_of(codes)}
        if self.cfg.aux_zipf_coef > 0:
            zipf = F.aux_zipf_loss(acts, residual, F.zipf_running(self, codes, self.cfg.aux_zipf_ema).estimate, k_aux, self.W_dec, self.cfg.aux_zipf_exponent)
            loss = loss + self.cfg.aux_zipf_coef * zipf
            terms["aux_zipf"] = zipf.detach()
        return LossOut(loss, x_hat, codes, terms)

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        if self.cfg.aux_zipf_coef > 0:
            F.commit_zipf_state_(self, F.zipf_running(self, out.codes, self.cfg.aux_zipf_ema))
        if F.threshold_tracking(ctx.step, self.cfg.threshold_start_step, ctx.total_steps):
            weight = F.threshold_ema_weight(self.cfg.threshold_ema, ctx.total_steps)
            F.ema_threshold_(self.threshold, F.smallest_kept(out.codes, per_latent=True), weight)
