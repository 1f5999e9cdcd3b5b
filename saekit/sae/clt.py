"""Cross-layer transcoders (Ameisen et al. 2025, "Circuit Tracing: Revealing Computational Graphs in
Language Models", Transformer Circuits Thread), with the TopK activation of EleutherAI's sparsify.

A CLT over L layers reads the input of every layer's MLP and writes the output of that MLP and of
every later one; a latent of layer l may contribute to all the MLP outputs from l on:

    a_l   = TopK_{k/L}(x_l W_enc^l + b_enc^l)                 l = 0 … L−1, n = d_sae / L latents each
    ŷ_m   = Σ_{l ≤ m} a_l W_dec^{l→m} + b_dec^m  (+ x_m W_skip^mᵀ)
    loss  = Σ_m ||y_m − ŷ_m||² + AuxK

saekit keeps it in the SAE contract's shapes. Its input row is the L sites side by side
(``metadata["sites"]``, ``d_in = L · d``), its output the L output sites (``metadata["sites_out"]``,
``d_out = L · d'``), and the latents of layer l are block l of ``d_sae = L · n``. So ``W_enc [d_in,
d_sae]`` is block-diagonal, ``W_dec [d_sae, d_out]`` block upper-triangular and ``W_skip`` block-diagonal:
the blocks that do not exist are zeros, and they stay zero because the engine zeroes their gradients
(``param_masks``). Then ``encode``, ``decode``, saving, loading and the analyses are any SAE's, exactly,
and training is the TopK family's sparse path (:func:`saekit.sae.topk_family.family_loss`) with a
per-layer selection: the k / L largest pre-activations of each layer's block (``k`` is, as for every
TopK SAE, the number of latents a token uses). The price of the plain
shapes: ``W_enc`` and the encoder product are L times what a block-wise store would need (``4 · L² · d
· n`` bytes for ``W_enc``), so this CLT is for small models and few layers.

Units, as for any SAE over several sites: each site is normalised by its own factor and the codes stay
in the units of training (:func:`saekit.training.normalise.rescale_sites_`). Evaluated with a model,
its outputs replace every MLP output at once, computed from the inputs of the clean pass (open loop:
:mod:`saekit.eval.crosscoder`). SAELens has no CLT class; saekit reads its folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor, nn

from saekit.sae import functional as F
from saekit.sae import sparse as S
from saekit.sae import topk_family as family
from saekit.sae.base import SAE, OptimDefaults
from saekit.sae.registry import register
from saekit.sae.transcoder import RATIO_PARAMS, TranscoderFields
from saekit.types import ActBatch, LossOut, StepCtx


@dataclass(frozen=True)
class TopKCLTConfig(family.TopKFamilyConfig, TranscoderFields):
    """The TopK family's fields (``k`` the latents of a token, ``k / n_layers`` at each layer), the
    transcoder's (``d_out`` in all, ``skip`` per layer) and the number of layers."""

    n_layers: int = 2
    """Layers L: the input and the output are L sites each, and each layer has d_sae / L latents."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.n_layers, bool) or not isinstance(self.n_layers, int) or self.n_layers < 1:
            raise ValueError(f"n_layers must be a positive integer, got {self.n_layers!r}")
        for name, width in (("d_in", self.d_in), ("d_out", self.resolved_d_out), ("d_sae", self.d_sae)):
            if width % self.n_layers:
                raise ValueError(f"{name}={width} must be a multiple of n_layers={self.n_layers} (one block per layer)")
        if self.k % self.n_layers:
            raise ValueError(f"k={self.k} must be a multiple of n_layers={self.n_layers}: each layer keeps k / n_layers latents")


def block_masks(n_layers: int, d_in: int, d_out: int, d_sae: int) -> dict[str, Tensor]:
    """The 0/1 masks of the blocks a CLT has: ``W_enc`` block-diagonal (layer l's latents read x_l),
    ``W_dec`` block upper-triangular (they write y_m for m ≥ l), ``W_skip`` block-diagonal (y_m from x_m)."""
    L = n_layers
    eye, upper = torch.eye(L), torch.ones(L, L).triu()
    return {
        "W_enc": torch.kron(eye, torch.ones(d_in // L, d_sae // L)),
        "W_dec": torch.kron(upper, torch.ones(d_sae // L, d_out // L)),
        "W_skip": torch.kron(eye, torch.ones(d_out // L, d_in // L)),
    }


def per_layer_topk(k: int, n_layers: int) -> family.Selection:
    """The CLT's selection: the k largest pre-activations of each of the ``n_layers`` blocks of latents."""

    def select(pre: Tensor, batch: ActBatch, ctx: StepCtx) -> S.Pattern:
        rows, d_sae = pre.shape
        n = d_sae // n_layers
        within = F.row_topk(pre.reshape(rows * n_layers, n), k).view(rows, n_layers, k)
        offsets = torch.arange(n_layers, device=pre.device).view(1, n_layers, 1) * n
        return S.pattern_from_topk((within + offsets).reshape(rows, n_layers * k), d_sae, ascending=True)

    return select


@final
@register("topk_clt")
class TopKCLT(SAE):
    config_class = TopKCLTConfig
    saelens_architecture = "topk_clt"
    apply_b_dec_to_input = False
    transcoder = True
    b_dec_init = "mean"
    ratio_params = RATIO_PARAMS
    training_state = F.ZIPF_STATE
    cfg: TopKCLTConfig
    W_skip: nn.Parameter | None

    def __init__(self, cfg: TopKCLTConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        family.init_parameters(self, cfg, generator)
        masks = block_masks(cfg.n_layers, cfg.d_in, self.d_out, cfg.d_sae)
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(self.d_out, cfg.d_in))
        else:
            self.register_parameter("W_skip", None)
            del masks["W_skip"]
        for name, mask in masks.items():  # not saved: they follow from the config
            self.register_buffer(f"{name}_mask", mask, persistent=False)
        with torch.no_grad():
            self.W_enc.mul_(masks["W_enc"]).div_(self.W_enc.norm(dim=0, keepdim=True)).mul_(cfg.init_encoder_norm)
            self.W_dec.mul_(masks["W_dec"])
            F.normalize_rows_(self.W_dec)

    @property
    def d_out(self) -> int:
        return self.cfg.resolved_d_out

    def param_masks(self) -> dict[str, Tensor]:
        return {name.removesuffix("_mask"): mask for name, mask in self.named_buffers() if name.endswith("_mask")}

    @classmethod
    def optim_defaults(cls, cfg: TopKCLTConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        pre = family.pre_acts(self, x)
        L = self.cfg.n_layers
        blocks = pre.reshape(*pre.shape[:-1], L, self.d_sae // L)
        return F.scatter_codes(F.topk_codes(blocks, self.cfg.k // L), self.d_sae // L).reshape(pre.shape)

    def skip(self, x: Tensor) -> Tensor | None:
        return None if self.W_skip is None else x @ self.W_skip.t()

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        self._check_input(batch.x)
        per_layer = self.cfg.k // self.cfg.n_layers
        return family.family_loss(self, self.cfg, batch, ctx, per_layer_topk(per_layer, self.cfg.n_layers))

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        family.after_step(self, self.cfg, out, ctx)

    def extra_saelens_cfg(self) -> dict:
        return {"d_out": self.d_out, "k": self.cfg.k, "n_layers": self.cfg.n_layers}
