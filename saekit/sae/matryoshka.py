"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen & Nanda 2025; Nabeshima 2024): nested prefixes.

The papers: "Learning Multi-Level Features with Matryoshka Sparse Autoencoders" (ICML 2025) and
"Matryoshka Sparse Autoencoders" (LessWrong, 2024).

A BatchTopK SAE whose latents are ordered: the first m_1 of them must reconstruct the input on their
own, so must the first m_2 > m_1, and so on up to all d_sae. Training couples the tokens of a batch:

    Z     = ReLU((x − b_dec) W_enc + b_enc)                    [batch, d_sae]
    f     = Z on the batch·k largest entries of the whole of Z, 0 elsewhere (BatchTopK's selection)
    x̂_m   = f[:, :m] W_dec[:m] + b_dec                         for each prefix width m of ``widths``
    loss  = Σ_m ||x − x̂_m||² + aux_coef · AuxK + aux_zipf_coef · aux_zipf_loss

The last width is d_sae, so the widest prefix is the whole SAE: its x̂ is ``LossOut.x_hat``, its
error the log's ``mse``, and AuxK (and aux_zipf_loss) reconstruct its residual x − x̂, as in both
references. The log shows each narrower prefix's error as ``mse_<m>``. One batch top-k over all
latents is shared by every prefix: a prefix reconstructs from the selected latents that fall in it.
A latent in the first group is in every prefix and gets the gradient of each, so the first groups
learn the features that reconstruct most on their own (frequent, general ones) and the later groups
what the earlier ones leave (more specific ones); at inference the first m latents alone,
``encode(x)[..., :m] @ W_dec[:m] + b_dec``, are an SAE of width m.

The prefix errors are summed with weight 1, as SAELens's ``MatryoshkaBatchTopKTrainingSAE`` (its
BatchTopK loss plus one error per narrower width). dictionary_learning's ``MatryoshkaBatchTopKTrainer``
weights prefix i by w_i (default 1/n) and then averages over the n prefixes, 1/n² · Σ_m by default:
the same objective up to the weight of AuxK against the reconstruction terms (Adam ignores a common
scale). Neither reference has a default for the widths; saekit's, d_sae/16, d_sae/8, d_sae/4,
d_sae/2 and d_sae, doubles the prefix at each level. A list of widths must end at d_sae (SAELens
appends d_sae with a warning; here it is an error naming the fix).

Inference must not depend on the batch: the global threshold θ is learned exactly as BatchTopK's
(:mod:`saekit.sae.batch_topk`: same fields, same EMA of the smallest kept activation, θ = +inf until
set) and ``encode(x) = Z ⊙ 1[Z > θ]``. The folder is saved for SAELens as ``jumprelu`` with a [d_sae]
``threshold`` of equal entries, which is also how SAELens saves its own Matryoshka SAEs (its
``matryoshka_batchtopk`` is a training architecture only; its inference class is ``jumprelu``).

Each prefix adds one pass over the [batch, d_in] reconstruction; the groups' reconstructions come
from one sparse decode, which touches the selected pairs once (:func:`nested_squared_error`).
Defaults follow BatchTopK: AuxK weight 1/32 with k_aux = d_in // 2, unit-norm decoder, geometric-median
``b_dec``, the default learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor

from saekit.comm import Comm
from saekit.sae import functional as F
from saekit.sae import sparse as S
from saekit.sae import topk_family as family
from saekit.sae.base import SAE, OptimDefaults
from saekit.sae.batch_topk import batch_topk, check_threshold_fields
from saekit.sae.registry import register
from saekit.types import ActBatch, LossOut, StepCtx

DEFAULT_LEVELS = 5
"""Prefixes of the default widths: d_sae / 2^i for i = 4, 3, 2, 1, 0."""


@dataclass(frozen=True)
class MatryoshkaConfig(family.TopKFamilyConfig):
    """The TopK family's fields (k read as a mean over the batch, as BatchTopK), the nested prefixes and
    BatchTopK's inference-threshold fields."""

    widths: tuple[int, ...] | None = None
    """Prefix widths m_1 < m_2 < ... < d_sae: the first m latents of each prefix reconstruct the input on
    their own; the last must be d_sae. None: d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae (rounded down,
    widths under 1 dropped)."""
    threshold_ema: float = 0.001
    """β of the inference-threshold EMA, as BatchTopK's: θ ← (1 − β) θ + β · (smallest kept activation
    of the batch); raised to 10 / total_steps in runs shorter than 10,000 steps."""
    threshold_start_step: int = 1000
    """Step from which the threshold is tracked (capped at half the run, so short runs set it too)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.widths is not None:
            check_widths(self.widths, self.d_sae)
        check_threshold_fields(self.threshold_ema, self.threshold_start_step)

    @property
    def prefix_widths(self) -> tuple[int, ...]:
        """The widths in use: ``widths``, or the default its documentation gives."""
        if self.widths is not None:
            return self.widths
        return tuple(sorted({self.d_sae >> i for i in range(DEFAULT_LEVELS)} - {0}))


def check_widths(widths: tuple[int, ...], d_sae: int) -> None:
    """Refuse prefix widths that are not positive integers increasing strictly up to d_sae."""
    if not isinstance(widths, tuple) or not all(type(w) is int for w in widths):
        raise ValueError(f"widths must be a tuple of integers (prefix sizes ending at d_sae), got {widths!r}")
    if not widths:
        raise ValueError(f"widths must name at least one prefix width, the last being d_sae={d_sae}; got none")
    if widths[0] < 1:
        raise ValueError(f"widths must be positive, got {widths[0]} in {list(widths)}")
    for narrower, wider in zip(widths, widths[1:]):
        if wider <= narrower:
            raise ValueError(f"widths must increase strictly, got {wider} after {narrower} in {list(widths)}")
    if widths[-1] != d_sae:
        raise ValueError(
            f"the last of widths must be d_sae={d_sae} (the whole dictionary is the widest prefix), "
            f"got {list(widths)}; end the list with {d_sae}"
        )


def nested_squared_error(widths: tuple[int, ...]) -> family.Reconstruct:
    """Matryoshka's reconstruction term: Σ over the prefix widths m of ||x − x̂_m||² averaged over rows,
    x̂_m decoded from the selected latents below m alone (the module docstring).

    One sparse decode gives each row's part of the reconstruction from each group of latents between
    two widths (:func:`saekit.sae.sparse.group_rows`); the prefixes are their cumulative sums. Every
    selected pair is touched once, forward and backward, as in BatchTopK's single decode."""

    def reconstruct(sae: SAE, values: Tensor, pattern: S.Pattern, x: Tensor, base: Tensor, latents: Comm) -> family.Reconstruction:
        # ``latents`` is LOCAL: the groups are ranges of the whole dictionary, so Matryoshka is not latent-sharded.
        grouped = S.group_rows(pattern, widths)
        if grouped.order is not None:
            values = values[grouped.order]
        parts = S.sparse_decode(values, grouped.pattern, sae.W_dec).view(x.shape[0], len(widths), -1)
        x_hats = parts.cumsum(1) + base.unsqueeze(-2)  # [rows, prefixes, d_in]
        errors = (x_hats - x.unsqueeze(1)).pow(2).sum((0, 2)) / x.shape[0]
        detached = errors.detach()
        terms = {"mse" if width == sae.d_sae else f"mse_{width}": detached[i] for i, width in enumerate(widths)}
        # The widest prefix as its own tensor, not a strided view of them all (FSDP warns of views).
        return family.Reconstruction(x_hats[:, -1].contiguous(), errors.sum(), terms)

    return reconstruct


@final
@register("matryoshka_batch_topk")
class MatryoshkaBatchTopKSAE(SAE):
    config_class = MatryoshkaConfig
    saelens_architecture = "jumprelu"
    scaled_params = ("b_enc", "b_dec", "threshold")
    has_threshold = True
    training_state = F.ZIPF_STATE
    cfg: MatryoshkaConfig
    threshold: Tensor

    def __init__(self, cfg: MatryoshkaConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        family.init_parameters(self, cfg, generator)
        self.register_buffer("threshold", torch.full((cfg.d_sae,), F.UNSET_THRESHOLD))

    @classmethod
    def optim_defaults(cls, cfg: MatryoshkaConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return family.threshold_codes(self, x, self.threshold)

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        self._check_input(batch.x)
        reconstruct = nested_squared_error(self.cfg.prefix_widths)
        return family.family_loss(self, self.cfg, batch, ctx, batch_topk(self.cfg.k), reconstruct)

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        family.after_step(self, self.cfg, out, ctx)
        F.track_threshold_(self.threshold, out.codes.smallest_positive(), self.cfg.threshold_ema, self.cfg.threshold_start_step, ctx)
