"""The SAE contract every architecture fulfils.

Weights follow SAELens and Gemma Scope names and shapes, so saving and loading is a plain copy:
``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]`` (rows are feature directions), ``b_enc [d_sae]``,
``b_dec [d_out]``, ``threshold [d_sae]`` where the architecture has one, and ``W_skip [d_out, d_in]``
for a skip transcoder. An SAE reconstructs what it reads (``d_out = d_in``); a *transcoder*
(``transcoder = True``) reads one site and reconstructs another, ``site_out``, from the same tokens.

* ``encode(x)`` is per token: the code of a row never depends on the other rows of the batch.
  Architectures that couple tokens while training keep a learned threshold for inference.
* ``decode(codes)`` is the shared affine map ``codes @ W_dec + b_dec``; ``forward(x) = decode(encode(x))``
  plus ``skip(x)`` where the SAE has a skip term (a skip transcoder's ``x W_skipᵀ``).
* ``loss(batch, ctx) -> LossOut`` is the training objective; it may couple tokens. It reconstructs
  ``target_of(batch)``: the input rows for an SAE, the output site's rows for a transcoder.

Class attributes tell the training loop and the artefact writer what an architecture needs; shared
maths lives in :mod:`saekit.sae.functional`, not here.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saekit.errors import DataError
from saekit.types import ActBatch, LossOut, StepCtx


@dataclass(frozen=True)
class SAEConfig:
    """Fields every architecture has; each architecture's config adds its own hyper-parameters."""

    d_in: int
    """Width of the activations the SAE reads."""
    d_sae: int
    """Number of latents (dictionary size)."""
    lr: float | None = None
    """Adam learning rate; None takes the default, 8e-4 · sqrt(2^14 / d_sae) (saekit.sae.functional.default_lr)."""

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")


@dataclass(frozen=True)
class OptimDefaults:
    """Adam settings of an architecture (learning rate and betas)."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


class SAE(nn.Module, abc.ABC):
    """Abstract sparse autoencoder. Concrete architectures are registered with ``@register(name)``."""

    architecture: ClassVar[str]
    """Registry name, written into cfg.json (set by ``@register``)."""
    config_class: ClassVar[type[SAEConfig]]
    saelens_architecture: ClassVar[str]
    """Name of the SAELens inference class that computes the same ``encode``."""
    apply_b_dec_to_input: ClassVar[bool] = True
    """Whether ``encode`` subtracts ``b_dec`` from the input first (SAELens flag of the same name)."""
    unit_norm_decoder: ClassVar[bool] = True
    """Keep decoder rows at unit norm: the loop projects gradients and renormalises after each step."""
    b_dec_init: ClassVar[str] = "geometric_median"
    """How the loop initialises ``b_dec`` from the first batch: "geometric_median", "mean" or "zeros"."""
    scaled_params: ClassVar[tuple[str, ...]] = ("b_enc", "b_dec")
    """Parameters and buffers in activation units, those of the activations the SAE reconstructs (a
    transcoder's codes are in its output's units too): divided by the output's scale when folding it."""
    ratio_params: ClassVar[tuple[str, ...]] = ()
    """Weights that map input units to output units (a transcoder's ``W_enc`` and ``W_skip``): multiplied
    by s_in / s_out when folding the input's scale s_in and the output's s_out (:mod:`saekit.training.normalise`).
    An SAE has none: its input and output are the same activations."""
    transcoder: ClassVar[bool] = False
    """Whether the SAE reads one site and reconstructs another (``site_out``, ``d_out`` wide): the engine
    hands its loss that site's rows as ``ActBatch.target``, evaluation scores them and splices them."""
    uses_grad: ClassVar[bool] = False
    """Whether the selection reads the gradient of the model's loss at the site: in training from
    ``ActBatch.grad``, at inference through :meth:`encode_with_grad` (evaluation with a model computes
    it); ``encode(x)`` is then the rule without a gradient."""
    has_b_enc: ClassVar[bool] = True
    """Whether the SAE has the encoder bias ``b_enc [d_sae]`` (Gated has its gate and magnitude biases instead)."""
    has_threshold: ClassVar[bool] = False
    """Whether the SAE keeps a per-latent inference threshold ``threshold [d_sae]`` (JumpReLU's, or the
    learned global threshold of the architectures that couple tokens in training)."""
    training_state: ClassVar[tuple[str, ...]] = ()
    latent_axes: ClassVar[Mapping[str, int]] = {}
    """The state tensors with one entry per latent, and the axis it runs along: latent-sharded training
    (:mod:`saekit.training.latent_shards`) gives each rank a slice of them there and the whole of the
    others. Empty: the architecture cannot be latent-sharded (its loss would need :mod:`saekit.sae.shards`)."""
    """Buffers only training needs (schedules' state): kept in checkpoints, left out of saved SAE folders so
    that SAELens and other readers see just the inference tensors; a loaded SAE starts them afresh."""

    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_enc: nn.Parameter
    """Present where ``has_b_enc``."""
    b_dec: nn.Parameter

    def __init__(self, cfg: SAEConfig, generator: torch.Generator | None = None) -> None:
        """Every architecture is built as ``cls(cfg, generator=...)``; ``generator`` is the random source
        of its initialisation (None: torch's global one). This base only keeps ``cfg``."""
        super().__init__()
        self.cfg = cfg
        self.metadata: dict[str, Any] = {}
        """Small facts written into cfg.json: "site", "model", "normalization_factor", ..."""
        self.provenance: dict[str, Any] = {}
        """How the SAE was made (data, tokens, seed, training config, final metrics): provenance.json."""

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        """Width of what the SAE reconstructs: ``d_in`` for an SAE; a transcoder's output width."""
        return self.d_in

    @property
    def site(self) -> str | None:
        """The site (hook point) this SAE reads, when known."""
        return self.metadata.get("site")

    @property
    def site_out(self) -> str | None:
        """The site a transcoder reconstructs (``metadata["site_out"]``), when known; None for an SAE."""
        return self.metadata.get("site_out") if self.transcoder else None

    def require_site_out(self) -> str:
        """:attr:`site_out`, for code that needs it: a transcoder naming none is a DataError naming the fix."""
        if len(self.sites_out) > 1:
            raise DataError(
                f"this {self.architecture} transcoder writes sites {list(self.sites_out)}; this takes a transcoder of one "
                "output site (evaluate takes several)"
            )
        site = self.site_out
        if not site:
            raise DataError(
                f"this {self.architecture} transcoder names no output site; set sae.metadata['site_out'] to the site "
                "it reconstructs (site_out in a run config's [[sae]] table)"
            )
        return site

    @property
    def sites(self) -> tuple[str, ...]:
        """The sites the SAE reads, in the order of its input's blocks: a *crosscoder*'s several
        (``metadata["sites"]``: its input is their rows side by side, ``d_in / len(sites)`` wide each,
        and it reconstructs them all), or an SAE's one :attr:`site`; () when none is known."""
        if "sites" in self.metadata:
            return tuple(self.metadata["sites"])
        return (self.site,) if self.site else ()

    @property
    def crosscoder(self) -> bool:
        """Whether the SAE reads several sites side by side (``metadata["sites"]``)."""
        return len(self.sites) > 1

    @property
    def sites_out(self) -> tuple[str, ...]:
        """The sites the SAE reconstructs, in the order of its output's blocks: a cross-layer
        transcoder's several (``metadata["sites_out"]``), a transcoder's :attr:`site_out`, or an SAE's
        own :attr:`sites`; () when none is known."""
        if not self.transcoder:
            return self.sites
        if "sites_out" in self.metadata:
            return tuple(self.metadata["sites_out"])
        return (self.site_out,) if self.site_out else ()

    def param_masks(self) -> dict[str, Tensor]:
        """Parameters (by name) with entries that must stay zero, and the 0/1 mask of the others: the
        engine zeroes the masked entries' gradients before each update, so they stay zero (a cross-layer
        transcoder's blocks that do not exist). Default: none."""
        return {}

    def require_site(self) -> str:
        """:attr:`site`, for code that needs one: a missing site is a DataError naming the fix, and so
        is a crosscoder, whose several sites such code cannot take."""
        if self.crosscoder:
            raise DataError(
                f"this {self.architecture} SAE is a crosscoder reading sites {list(self.sites)}; this takes an SAE "
                "of one site (evaluate, the browser and saekit analyse crosscoder take crosscoders)"
            )
        site = self.site
        if not site:
            raise DataError(f"this {self.architecture} SAE names no site; set sae.metadata['site'] (or save it with one)")
        return site

    @abc.abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """[..., d_in] activations -> [..., d_sae] non-negative codes, row by row."""

    def encode_with_grad(self, x: Tensor, grad: Tensor) -> Tensor:
        """Codes of ``x`` chosen with ``grad`` = d(summed next-token loss)/dx, for architectures whose
        ``uses_grad`` is True; the others have no such rule."""
        raise TypeError(f"{self.architecture} SAEs do not select latents with a gradient (uses_grad is False)")

    def decode(self, codes: Tensor) -> Tensor:
        """[..., d_sae] codes -> [..., d_out] reconstruction."""
        return codes @ self.W_dec + self.b_dec

    def skip(self, x: Tensor) -> Tensor | None:
        """The part of the output computed from the input without the latents (a skip transcoder's
        ``x W_skipᵀ``, [..., d_out]); None where the SAE has none."""
        return None

    def reconstruct(self, x: Tensor, codes: Tensor) -> Tensor:
        """The output from the input rows ``x`` and their ``codes``: ``decode(codes)``, plus ``skip(x)``
        where the SAE has a skip term."""
        out = self.decode(codes)
        skip = self.skip(x)
        return out if skip is None else out + skip

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x, self.encode(x))

    def target_of(self, batch: ActBatch) -> Tensor:
        """The rows ``loss`` reconstructs: ``batch.x`` for an SAE; ``batch.target`` for a transcoder, one row
        per row of ``x``, ``d_out`` wide (a batch without target rows is one whose output site is its input
        site, as a one-site source gives: ``x`` itself, where ``d_out = d_in``). A DataError otherwise."""
        if not self.transcoder:
            return batch.x
        target = batch.x if batch.target is None else batch.target
        if target.shape[:-1] != batch.x.shape[:-1] or target.shape[-1] != self.d_out:
            given = "the batch's" if batch.target is not None else "no target rows (ActBatch.target), and its input"
            raise DataError(
                f"{self.architecture} transcoder expects target rows of shape {(*batch.x.shape[:-1], self.d_out)} "
                f"(one per input row, d_out={self.d_out} wide), but {given} rows have shape {tuple(target.shape)}"
            )
        return target

    @abc.abstractmethod
    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        """Training objective on one batch."""

    @classmethod
    @abc.abstractmethod
    def optim_defaults(cls, cfg: SAEConfig) -> OptimDefaults:
        """Adam settings for this architecture and size."""

    def lr_multipliers(self) -> dict[str, float]:
        """Parameters (by name) that learn at a multiple of the base learning rate; the rest learn at the
        base rate. Default: none."""
        return {}

    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        """Hook run by the loop after each optimiser step (threshold EMAs, clamping). Default: nothing."""

    def saelens_name(self) -> str:
        """The SAELens architecture written into cfg.json: ``saelens_architecture``, or its skip form for
        a skip transcoder (SAELens has a class for each)."""
        return self.saelens_architecture

    def extra_saelens_cfg(self) -> dict[str, Any]:
        """Keys SAELens's inference class needs in cfg.json beyond the common ones (e.g. ``k``)."""
        return {}

    def hparams(self) -> dict[str, Any]:
        """The architecture's hyper-parameters (its config without d_in / d_sae)."""
        return {f.name: getattr(self.cfg, f.name) for f in dataclasses.fields(self.cfg) if f.name not in ("d_in", "d_sae")}

    def extra_repr(self) -> str:
        out = f", d_out={self.d_out}" if self.transcoder else ""
        return f"architecture={self.architecture!r}, d_in={self.d_in}, d_sae={self.d_sae}{out}"

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise DataError(
                f"{self.architecture} SAE expects activations of width d_in={self.d_in}, got shape {tuple(x.shape)}"
            )

