"""The TopK family: one loss, written once, and a selection rule per architecture.

Every member encodes ``pre = (x − b_dec) W_enc + b_enc``, keeps ReLU(pre) on a *selection* of
(token, latent) pairs and reconstructs from them:

    loss = ||y − ŷ||² + aux_coef · AuxK(dead latents) + aux_zipf_coef · aux_zipf(underused latents)

where y is what the member reconstructs: x for an SAE, the output site's rows for a transcoder
(:mod:`saekit.sae.transcoder`), whose encoder reads x without subtracting b_dec (b_dec lives in the
output's space) and whose ŷ adds the skip term ``x W_skipᵀ`` when it has one.

What differs is the selection (a :data:`Selection`): the k largest per token (``topk``), the
batch's n·k largest (``batch_topk``, registered as ``mutual_choice`` too, and
``matryoshka_batch_topk``), each latent's m_j largest (``feature_choice``), or the k best by a
gradient-aware score (``gradient_topk``); and, for Matryoshka alone, the reconstruction term (a
:data:`Reconstruct`: the sum of the nested prefixes' errors instead of ||x − x̂||²). The loss runs on
the sparse path of :mod:`saekit.sae.sparse` (one dense product: the pre-activations), for any
selection; its codes are always a sparse CSR tensor.

AuxK and aux_zipf_loss are one term with per-latent weights (:func:`saekit.sae.sparse.aux_loss`): 1
on dead latents for AuxK, the Zipf deficit of each latent's running firing density for aux_zipf.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as tF

from saekit.comm import Comm
from saekit.sae import functional as F
from saekit.sae import shards
from saekit.sae import sparse as S
from saekit.sae.base import SAE, SAEConfig
from saekit.strict import refuse_unused
from saekit.types import ActBatch, Codes, LossOut, StepCtx

Selection = Callable[[Tensor, ActBatch, StepCtx], S.Pattern]
"""``select(pre, batch, ctx)``: the (token, latent) pairs that carry a code, from the pre-activations
(computed without autograd) and the batch (its ``grad`` for gradient-aware rules); a selection that
couples the rows of a batch makes it global through ``ctx.comm`` (the rows may be split over ranks),
one that compares latents through ``ctx.latents`` (the latents may be: :mod:`saekit.sae.shards`)."""


class Reconstruction(NamedTuple):
    """A member's reconstruction term. x_hat: [rows, d_in], the reconstruction from every selected
    latent (``LossOut.x_hat``; AuxK reconstructs its residual). loss: the term added to the loss.
    terms: what the log shows of it, with ``"mse"`` = ||x − x_hat||² averaged over rows (the error of
    the full SAE: the engine's health check and end-to-end training read it)."""

    x_hat: Tensor
    loss: Tensor
    terms: dict[str, Tensor]


Reconstruct = Callable[[SAE, Tensor, S.Pattern, Tensor, Tensor, Comm], Reconstruction]
"""``reconstruct(sae, values, pattern, y, base, latents)``: the reconstruction term from the selected codes
(``values`` at ``pattern``, differentiable) of the rows ``y`` [rows, d_out] (x itself for an SAE); ``base``
is the reconstruction before any latent: ``b_dec``, plus the skip term [rows, d_out] of a skip
transcoder; ``latents``: the ranks the latents are split over (``StepCtx.latents``), whose parts of
the decoder's output are summed."""


LATENT_AXES = {"W_enc": 1, "W_dec": 0, "b_enc": 0}
"""Where the family's weights run over latents (``SAE.latent_axes``), for the members that may be latent-sharded."""


@dataclass(frozen=True)
class TopKFamilyConfig(SAEConfig):
    """The fields of every TopK-family architecture (each adds its own after these)."""

    k: int = 32
    """Active latents per token: exactly k (topk, gradient_topk), or k on average over a training batch
    (batch_topk, mutual_choice and matryoshka_batch_topk keep the batch's n·k largest; feature_choice shares
    n·k as capacities)."""
    aux_k: int | None = None
    """Dead latents used by the AuxK loss per token; None means half the width reconstructed (d_in // 2 for an SAE)."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss; 0 disables it."""
    aux_zipf_coef: float = 0.0
    """Weight of aux_zipf_loss (Ayonrinde 2024), AuxK extended to underutilised latents; 0 disables it.
    PROVISIONAL reading of the paper (see saekit.sae.functional.zipf_deficit): latents whose running
    firing density falls below a Zipf law with the same total reconstruct the residual, each weighted
    by its shortfall, with up to aux_k latents per token."""
    aux_zipf_exponent: float = 1.0
    """Exponent α of the Zipf target density C · rank^(−α) used by aux_zipf_loss (provisional)."""
    aux_zipf_ema: float = 0.01
    """Weight of each batch in the running firing density aux_zipf_loss compares with the Zipf law (an
    exponential moving average over about 1/aux_zipf_ema batches, bias-corrected while it fills)."""
    init_encoder_norm: float = 3**-0.5
    """Norm of every latent's encoder column at initialisation: ``W_enc = init_encoder_norm · W_decᵀ``
    (unit-norm decoder rows; a transcoder's encoder and decoder are drawn apart). 1/√3 is the norm of
    ``nn.Linear``'s default rows, EleutherAI sparsify's encoder: after the same tokens it reconstructs
    better than a unit-norm encoder (Gao et al.'s tied init) and than smaller ones, on language-model
    activations and on planted features (docs/architectures.md, "Defaults")."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}")
        if self.aux_k is not None and self.aux_k <= 0:
            raise ValueError(f"aux_k must be positive, got {self.aux_k}")
        if not self.init_encoder_norm > 0:
            raise ValueError(f"init_encoder_norm must be positive, got {self.init_encoder_norm!r}")
        for name in ("aux_coef", "aux_zipf_coef", "aux_zipf_exponent"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.aux_zipf_ema <= 1:
            raise ValueError(f"aux_zipf_ema must be in (0, 1], got {self.aux_zipf_ema!r}")
        if self.aux_coef == 0:
            refuse_unused(self, ("aux_k",), "aux_coef is 0")
        if self.aux_zipf_coef == 0:
            refuse_unused(self, ("aux_zipf_exponent", "aux_zipf_ema"), "aux_zipf_coef is 0")


def init_parameters(sae: SAE, cfg: TopKFamilyConfig, generator: torch.Generator | None) -> None:
    """The family's initialisation: W_enc = init_encoder_norm · W_decᵀ with unit-norm decoder rows (a
    transcoder's drawn apart, :func:`saekit.sae.functional.untied_init`), zero biases, and the running
    density of aux_zipf_loss when it is on."""
    if sae.transcoder:
        W_enc, W_dec = F.untied_init(sae.d_in, sae.d_out, cfg.d_sae, generator)
    else:
        W_enc, W_dec = F.tied_init(cfg.d_in, cfg.d_sae, generator)
    sae.W_enc = nn.Parameter(W_enc.mul_(cfg.init_encoder_norm))
    sae.W_dec = nn.Parameter(W_dec)
    sae.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
    sae.b_dec = nn.Parameter(torch.zeros(sae.d_out))
    if cfg.aux_zipf_coef > 0:
        F.register_zipf_state(sae, cfg.d_sae)


def pre_acts(sae: SAE, x: Tensor) -> Tensor:
    """``(x − b_dec) W_enc + b_enc`` (``x W_enc + b_enc`` where ``apply_b_dec_to_input`` is False, as for
    transcoders), with autograd (``encode``'s form)."""
    return (x - sae.b_dec if sae.apply_b_dec_to_input else x) @ sae.W_enc + sae.b_enc


def threshold_codes(sae: SAE, x: Tensor, threshold: Tensor) -> Tensor:
    """``encode`` of the members that learn inference thresholds: Z ⊙ 1[Z > θ] with Z = ReLU(pre), a
    JumpReLU (what SAELens's ``jumprelu`` computes from the saved folder)."""
    acts = pre_acts(sae, x).relu()
    return acts * (acts > threshold.to(acts.dtype))


def squared_error(sae: SAE, values: Tensor, pattern: S.Pattern, y: Tensor, base: Tensor, latents: Comm) -> Reconstruction:
    """The family's reconstruction term: ||y − ŷ||² averaged over rows, ŷ = f W_dec + base."""
    y_hat = shards.summed(S.sparse_decode(values, pattern, sae.W_dec), latents) + base
    mse = tF.mse_loss(y_hat, y, reduction="sum") / y.shape[0]  # Σ over the batch of ||ŷ − y||², over rows
    return Reconstruction(y_hat, mse, {"mse": mse.detach()})


def family_loss(
    sae: SAE, cfg: TopKFamilyConfig, batch: ActBatch, ctx: StepCtx, select: Selection, reconstruct: Reconstruct = squared_error
) -> LossOut:
    """The training loss of ``sae`` (its config ``cfg``) on the sparse path (see the module docstring). ``batch.x`` may have
    leading dimensions; they are flattened into rows, and ``x_hat`` has them again, ``d_out`` wide."""
    shape = batch.x.shape
    x = batch.x.reshape(-1, shape[-1])
    y = sae.target_of(batch).reshape(-1, sae.d_out)
    grad = batch.grad.reshape(-1, shape[-1]) if batch.grad is not None else None
    # b_dec's gradient through the encoder arrives as the shift's
    shift = shards.shared(sae.b_dec if sae.apply_b_dec_to_input else None, ctx.latents)
    x_in = x - shift.detach() if shift is not None else x
    with torch.no_grad():
        pre = S.pre_acts(x_in, sae.W_enc, sae.b_enc)
        pattern = select(pre, ActBatch(x, grad), ctx)

    def gather(p: S.Pattern) -> Tensor:
        return S.gather_pre(pre, x_in, shift, sae.W_enc, sae.b_enc, p)

    values = gather(pattern).relu()
    skip = sae.skip(x)
    y_hat, loss, terms = reconstruct(sae, values, pattern, y, sae.b_dec if skip is None else sae.b_dec + skip, ctx.latents)
    codes = Codes(S.sparse_codes(values, pattern), fired=S.fired_latents(values, pattern))
    k_aux = cfg.aux_k or sae.d_out // 2
    terms = {**terms, "l0": shards.summed(S.l0_per_row(values, pattern), ctx.latents)}
    if cfg.aux_coef > 0:
        dead = ctx.dead_mask.to(pre.dtype) if ctx.dead_mask is not None else None
        aux = S.aux_loss(pre, gather, y_hat, y, dead, k_aux, sae.W_dec, ctx.comm, ctx.latents)
        loss, terms["aux_k"] = loss + cfg.aux_coef * aux, aux.detach()
    if cfg.aux_zipf_coef > 0:
        density = F.zipf_running(sae, codes, cfg.aux_zipf_ema, ctx.comm).estimate
        zipf = S.aux_loss(pre, gather, y_hat, y, F.zipf_deficit(density, cfg.aux_zipf_exponent), k_aux, sae.W_dec, ctx.comm, ctx.latents)
        loss, terms["aux_zipf"] = loss + cfg.aux_zipf_coef * zipf, zipf.detach()
    # Rows in, rows out, as the engine gives them: y_hat itself, not a view of it (FSDP warns of views).
    x_hat = y_hat if len(shape) == 2 else y_hat.reshape(*shape[:-1], sae.d_out)
    return LossOut(loss, x_hat, codes, terms)


def after_step(sae: SAE, cfg: TopKFamilyConfig, out: LossOut, ctx: StepCtx) -> None:
    """The family's part of ``after_step``: the running density of aux_zipf_loss moves on."""
    if cfg.aux_zipf_coef > 0:
        F.commit_zipf_state_(sae, F.zipf_running(sae, out.codes, cfg.aux_zipf_ema, ctx.comm))


def per_row_topk(k: int) -> Selection:
    """TopK's selection: the k largest pre-activations of each row."""

    def select(pre: Tensor, batch: ActBatch, ctx: StepCtx) -> S.Pattern:
        return S.row_topk_pattern(pre, k, ctx.latents)

    return select
