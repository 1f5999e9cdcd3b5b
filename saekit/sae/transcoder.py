"""Transcoders and skip transcoders (Dunefsky, Chlenski & Nanda 2024, "Transcoders find interpretable
LLM feature circuits"; Paulo, Shabalin & Belrose 2025, "Transcoders beat sparse autoencoders for
interpretability").

A transcoder reads one site and reconstructs another from the same tokens; the canonical pair is the
input and the output of one block's MLP, ``layers.{i}.mlp_in`` -> ``layers.{i}.mlp_out``, where it
stands in for the MLP with a sparse computation:

    f     = σ(x W_enc + b_enc)                  x [.., d_in]: the rows of the site it reads
    ŷ     = f W_dec + b_dec  (+ x W_skipᵀ)       ŷ [.., d_out]: the rows y of the site it writes
    loss  = ||y − ŷ||² + the activation's own terms

σ is one of saekit's activation rules with that SAE's own loss, written once and shared: TopK and
BatchTopK (the TopK family's loss with AuxK, :mod:`saekit.sae.topk_family`), ReLU with the
decoder-norm-weighted L1 (:func:`saekit.sae.relu.l1_loss`), JumpReLU with the L0 penalty
(:func:`saekit.sae.jumprelu.jumprelu_loss`). Each transcoder is the SAE of the same rule with three
differences: the loss compares with the output site's rows (``ActBatch.target``; an SAE is the case
y = x), the encoder reads x without subtracting ``b_dec`` (which lives in the output's space;
``apply_b_dec_to_input`` is False, as in SAELens's transcoders), and encoder and decoder are drawn
apart at initialisation (:func:`saekit.sae.functional.untied_init`).

``skip = true`` adds the linear skip connection of Paulo et al.: ``W_skip [d_out, d_in]``, initialised
to zero and learned with the rest, so that the latents explain what a linear map of the input cannot.
It is a field, not another architecture: one class per activation rule covers both forms.

Sites and units: ``metadata["site"]`` is the site read, ``metadata["site_out"]`` the site written
(``site`` and ``site_out`` in a run config's ``[[sae]]`` table; SAELens's ``hook_name`` and
``hook_name_out``). The engine normalises each site by its own factor (s_in, s_out) and the codes
live in the output's units, so folding the factors back divides ``b_enc``, ``b_dec`` and any threshold
by s_out and multiplies ``W_enc`` and ``W_skip`` by s_in / s_out (``ratio_params``), leaving the
decoder rows as trained.

Saved for SAELens as ``transcoder`` / ``skip_transcoder`` (ReLU) and ``jumprelu_transcoder`` /
``jumprelu_skip_transcoder`` (JumpReLU, and BatchTopK with its learned threshold, as BatchTopK SAEs are
saved as ``jumprelu``), with ``d_out`` and ``metadata.hook_name_out``. SAELens 6.54 has no TopK
transcoder, so a ``topk_transcoder`` folder names SAELens class ``topk_transcoder``, which SAELens
refuses; saekit reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor, nn

from saekit.sae import functional as F
from saekit.sae import jumprelu, relu
from saekit.sae import topk_family as family
from saekit.sae.base import SAE, OptimDefaults, SAEConfig
from saekit.sae.batch_topk import batch_topk, check_threshold_fields
from saekit.sae.registry import register
from saekit.types import ActBatch, LossOut, StepCtx

RATIO_PARAMS = ("W_enc", "W_skip")
"""A transcoder's weights from input to output units (``W_skip`` where it has one)."""

_SAELENS_SKIP = {"transcoder": "skip_transcoder", "jumprelu_transcoder": "jumprelu_skip_transcoder"}
"""SAELens's class for the skip form of each of its transcoder classes."""


@dataclass(frozen=True)
class TranscoderFields(SAEConfig):
    """The fields every transcoder has besides its activation rule's."""

    d_out: int | None = None
    """Width of the site the transcoder reconstructs; None: d_in (an MLP's input and output are both the
    model's width). A run config fills it from the data's site_out."""
    skip: bool = False
    """Learn a skip connection x W_skipᵀ (W_skip [d_out, d_in], starting at zero): a skip transcoder,
    saved for SAELens in the skip form of its class (skip_transcoder, jumprelu_skip_transcoder)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_out is not None and (not isinstance(self.d_out, int) or isinstance(self.d_out, bool) or self.d_out <= 0):
            raise ValueError(f"d_out must be a positive integer (or None for d_in), got {self.d_out!r}")
        if not isinstance(self.skip, bool):
            raise ValueError(f"skip must be true or false, got {self.skip!r}")

    @property
    def resolved_d_out(self) -> int:
        """``d_out``, or ``d_in`` when it is None."""
        return self.d_in if self.d_out is None else self.d_out


def init_skip(sae: SAE, cfg: TranscoderFields) -> None:
    """``W_skip [d_out, d_in]`` at zero when ``cfg.skip``; otherwise no such parameter."""
    skip = nn.Parameter(torch.zeros(cfg.resolved_d_out, cfg.d_in)) if cfg.skip else None
    sae.register_parameter("W_skip", skip)


def skip_term(W_skip: Tensor | None, x: Tensor) -> Tensor | None:
    """``x W_skipᵀ``, or None without a skip connection."""
    return None if W_skip is None else x @ W_skip.t()


def saelens_name(architecture: str, skip: bool) -> str:
    """The SAELens class of a transcoder saved as ``architecture``, in its skip form when it has one."""
    return _SAELENS_SKIP.get(architecture, architecture) if skip else architecture


# ---------------------------------------------------------------------------------------------
# TopK and BatchTopK


@dataclass(frozen=True)
class TopKTranscoderConfig(family.TopKFamilyConfig, TranscoderFields):
    """The TopK family's fields and the transcoder's."""


@final
@register("topk_transcoder")
class TopKTranscoder(SAE):
    config_class = TopKTranscoderConfig
    saelens_architecture = "topk_transcoder"
    apply_b_dec_to_input = False
    transcoder = True
    ratio_params = RATIO_PARAMS
    training_state = F.ZIPF_STATE
    cfg: TopKTranscoderConfig
    W_skip: nn.Parameter | None

    def __init__(self, cfg: TopKTranscoderConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        family.init_parameters(self, cfg, generator)
        init_skip(self, cfg)

    @property
    def d_out(self) -> int:
        return self.cfg.resolved_d_out

    @classmethod
    def optim_defaults(cls, cfg: TopKTranscoderConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return F.scatter_codes(F.topk_codes(family.pre_acts(self, x), self.cfg.k), self.d_sae)

    def skip(self, x: Tensor) -> Tensor | None:
        return skip_term(self.W_skip, x)

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        self._check_input(batch.x)
        return family.family_loss(self, self.cfg, batch, ctx, family.per_row_topk(self.cfg.k))

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        family.after_step(self, self.cfg, out, ctx)

    def saelens_name(self) -> str:
        return saelens_name(self.saelens_architecture, self.cfg.skip)

    def extra_saelens_cfg(self) -> dict:
        return {"d_out": self.d_out, "k": self.cfg.k, "rescale_acts_by_decoder_norm": False}


@dataclass(frozen=True)
class BatchTopKTranscoderConfig(family.TopKFamilyConfig, TranscoderFields):
    """The TopK family's fields (k read as a mean over the batch), the transcoder's and BatchTopK's
    inference-threshold fields."""

    threshold_ema: float = 0.001
    """β of the inference-threshold EMA, as BatchTopK's: θ ← (1 − β) θ + β · (smallest kept activation
    of the batch); raised to 10 / total_steps in runs shorter than 10,000 steps."""
    threshold_start_step: int = 1000
    """Step from which the threshold is tracked (capped at half the run, so short runs set it too)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_threshold_fields(self.threshold_ema, self.threshold_start_step)


@final
@register("batch_topk_transcoder")
class BatchTopKTranscoder(SAE):
    config_class = BatchTopKTranscoderConfig
    saelens_architecture = "jumprelu_transcoder"
    apply_b_dec_to_input = False
    transcoder = True
    ratio_params = RATIO_PARAMS
    scaled_params = ("b_enc", "b_dec", "threshold")
    has_threshold = True
    training_state = F.ZIPF_STATE
    cfg: BatchTopKTranscoderConfig
    threshold: Tensor
    W_skip: nn.Parameter | None

    def __init__(self, cfg: BatchTopKTranscoderConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        family.init_parameters(self, cfg, generator)
        init_skip(self, cfg)
        self.register_buffer("threshold", torch.full((cfg.d_sae,), F.UNSET_THRESHOLD))

    @property
    def d_out(self) -> int:
        return self.cfg.resolved_d_out

    @classmethod
    def optim_defaults(cls, cfg: BatchTopKTranscoderConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return family.threshold_codes(self, x, self.threshold)

    def skip(self, x: Tensor) -> Tensor | None:
        return skip_term(self.W_skip, x)

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        self._check_input(batch.x)
        return family.family_loss(self, self.cfg, batch, ctx, batch_topk(self.cfg.k))

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        family.after_step(self, self.cfg, out, ctx)
        F.track_threshold_(self.threshold, out.codes.smallest_positive(), self.cfg.threshold_ema, self.cfg.threshold_start_step, ctx)

    def saelens_name(self) -> str:
        return saelens_name(self.saelens_architecture, self.cfg.skip)

    def extra_saelens_cfg(self) -> dict:
        return {"d_out": self.d_out}


# ---------------------------------------------------------------------------------------------
# ReLU and JumpReLU


@dataclass(frozen=True)
class ReLUTranscoderConfig(relu.ReLUConfig, TranscoderFields):
    """ReLU's fields (the L1 weight, the decoder's initial norm) and the transcoder's."""


@final
@register("relu_transcoder")
class ReLUTranscoder(SAE):
    config_class = ReLUTranscoderConfig
    saelens_architecture = "transcoder"
    apply_b_dec_to_input = False
    unit_norm_decoder = False
    transcoder = True
    ratio_params = RATIO_PARAMS
    cfg: ReLUTranscoderConfig
    W_skip: nn.Parameter | None

    def __init__(self, cfg: ReLUTranscoderConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        relu.init_parameters(self, cfg.init_decoder_norm, F.untied_init(cfg.d_in, cfg.resolved_d_out, cfg.d_sae, generator))
        init_skip(self, cfg)

    @property
    def d_out(self) -> int:
        return self.cfg.resolved_d_out

    @classmethod
    def optim_defaults(cls, cfg: ReLUTranscoderConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return (x @ self.W_enc + self.b_enc).relu()

    def skip(self, x: Tensor) -> Tensor | None:
        return skip_term(self.W_skip, x)

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        self._check_input(batch.x)
        return relu.l1_loss(self, self.cfg.l1_coef, batch, ctx)

    def saelens_name(self) -> str:
        return saelens_name(self.saelens_architecture, self.cfg.skip)

    def extra_saelens_cfg(self) -> dict:
        return {"d_out": self.d_out}


@dataclass(frozen=True)
class JumpReLUTranscoderConfig(jumprelu.JumpReLUConfig, TranscoderFields):
    """JumpReLU's fields (L0 weight, threshold and bandwidth, their learning rate) and the transcoder's."""


@final
@register("jumprelu_transcoder")
class JumpReLUTranscoder(SAE):
    config_class = JumpReLUTranscoderConfig
    saelens_architecture = "jumprelu_transcoder"
    apply_b_dec_to_input = False
    unit_norm_decoder = False
    b_dec_init = "zeros"
    transcoder = True
    ratio_params = RATIO_PARAMS
    scaled_params = ("b_enc", "b_dec", "threshold")
    has_threshold = True
    cfg: JumpReLUTranscoderConfig
    threshold: nn.Parameter
    W_skip: nn.Parameter | None

    def __init__(self, cfg: JumpReLUTranscoderConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        jumprelu.init_parameters(self, cfg, F.untied_init(cfg.d_in, cfg.resolved_d_out, cfg.d_sae, generator))
        init_skip(self, cfg)

    @property
    def d_out(self) -> int:
        return self.cfg.resolved_d_out

    @classmethod
    def optim_defaults(cls, cfg: JumpReLUTranscoderConfig) -> OptimDefaults:
        return jumprelu.jumprelu_optim_defaults(cfg)

    def lr_multipliers(self) -> dict[str, float]:
        return {"threshold": self.cfg.threshold_lr_scale}

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return jumprelu.jumprelu_codes(self, self.threshold, self.cfg.bandwidth, x)

    def skip(self, x: Tensor) -> Tensor | None:
        return skip_term(self.W_skip, x)

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        self._check_input(batch.x)
        return jumprelu.jumprelu_loss(self, self.cfg, self.threshold, batch, ctx)

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        self.threshold.clamp_(min=0.0)

    def saelens_name(self) -> str:
        return saelens_name(self.saelens_architecture, self.cfg.skip)

    def extra_saelens_cfg(self) -> dict:
        return {"d_out": self.d_out}
