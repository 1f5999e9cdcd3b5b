"""ReLU SAE with an Lp^p penalty whose p is annealed from 1 towards a floor (p-annealing; Karvonen et
al. 2024, "Measuring Progress in Dictionary Learning for Language Model Interpretability with Board
Game Models", after dictionary_learning's ``PAnnealTrainer``).

    f     = ReLU((x − b_dec) W_enc + b_enc)
    x̂     = f W_dec + b_dec
    loss  = ||x − x̂||² + s · λ · Σ_i f_i^p                    (unit-norm decoder rows)

``s`` is the loop's sparsity warm-up scale. p starts at ``p_start`` (1: the plain L1 SAE) and takes the
``n_p_values`` values linspace(p_start, p_end) at the steps linspace(a, total_steps), rounded down,
with a = min(anneal_start, total_steps // 2). As in the paper's runs the last value falls on the final
step, so training ends at the second-to-last value (≈0.29 with the defaults). Lower p penalises
small codes relatively more and large ones less, moving the penalty towards L0 and away from the
shrinkage of L1.

λ is rescaled at each change p → p′ so that the penalty keeps its size:

    λ ← λ · mean(Σ f^p) / mean(Σ f^p′)      over the last ``rescale_batches`` batches before the change

The schedule of p is a pure function of the step (:func:`p_schedule`); λ and the recent Lp values
are training state kept in the buffers ``sparsity_coef`` and ``lp_history`` (so a resumed run
continues exactly; they are ``training_state``: checkpoints keep them, saved folders hold only the
SAELens ``standard`` weights W_enc, W_dec, b_enc, b_dec). Both are logged: the terms ``p`` and
``sparsity_coef`` show the schedule in the training log. At inference this is a plain ReLU SAE.

Defaults: λ = 0.1 for activations scaled to E||x||² = 1, p from 1 to 0.2 in 10 values from step
1000, as the paper's Othello configs; the learning rate is saekit's default
(:func:`saekit.sae.functional.default_lr`; dictionary_learning's is 1e-3, the paper used 3e-4 for
300M tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from saekit.sae import functional as F
from saekit.sae.base import SAE, OptimDefaults, SAEConfig
from saekit.sae.registry import register
from saekit.strict import refuse_unused
from saekit.types import ActBatch, Codes, LossOut, StepCtx


@dataclass(frozen=True)
class PAnnealConfig(SAEConfig):
    sparsity_coef: float = 0.1
    """Initial weight λ of the Lp^p penalty (p = 1 until the annealing starts), for activations scaled
    to unit mean squared norm; rescaled automatically at every change of p."""
    p_start: float = 1.0
    """First value of p."""
    p_end: float = 0.2
    """Floor of p: the last of the n_p_values values, reached on the final step."""
    n_p_values: int = 10
    """Number of values p takes, evenly spaced from p_start to p_end (1: no annealing)."""
    anneal_start: int = 1000
    """Step of the first scheduled value; the values after it follow evenly up to the end of the run
    (capped at half the run, so short runs anneal too)."""
    rescale_batches: int = 10
    """Batches before each change of p whose Lp values set the rescaled λ."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.sparsity_coef >= 0:
            raise ValueError(f"sparsity_coef must be >= 0, got {self.sparsity_coef!r}")
        if not 0 < self.p_end <= self.p_start <= 1:
            raise ValueError(f"need 0 < p_end <= p_start <= 1, got p_start={self.p_start!r}, p_end={self.p_end!r}")
        if self.n_p_values < 1:
            raise ValueError(f"n_p_values must be >= 1, got {self.n_p_values}")
        if self.anneal_start < 0:
            raise ValueError(f"anneal_start must be >= 0, got {self.anneal_start}")
        if self.rescale_batches < 1:
            raise ValueError(f"rescale_batches must be >= 1, got {self.rescale_batches}")
        if self.n_p_values == 1:
            refuse_unused(self, ("p_end", "anneal_start", "rescale_batches"), "n_p_values is 1 (p stays at p_start)")


class PStep(NamedTuple):
    """Where a step stands in the schedule of p."""

    index: int
    """Which of the n_p_values values is in force."""
    p: float
    next_p: float | None
    """The value after it; None for the last one."""
    next_step: int | None
    """The step at which next_p takes over."""


def p_schedule(step: int, total_steps: int, *, p_start: float, p_end: float, n_values: int, anneal_start: int) -> PStep:
    """The value of p at ``step``: value i = p_start + (p_end − p_start)·i/(n−1) holds from step
    s_i = a + ⌊i·(total − a)/(n − 1)⌋, a = min(anneal_start, total // 2); p_start before s_0."""
    if n_values == 1:
        return PStep(0, p_start, None, None)
    a = min(anneal_start, total_steps // 2)
    values = [p_start + (p_end - p_start) * i / (n_values - 1) for i in range(n_values)]
    steps = [a + (i * (total_steps - a)) // (n_values - 1) for i in range(n_values)]
    index = max(0, sum(s <= step for s in steps) - 1)
    if index + 1 < n_values:
        return PStep(index, values[index], values[index + 1], steps[index + 1])
    return PStep(index, values[index], None, None)


@register("p_anneal")
class PAnnealSAE(SAE):
    config_class = PAnnealConfig
    saelens_architecture = "standard"
    training_state = ("sparsity_coef", "lp_history")
    cfg: PAnnealConfig
    sparsity_coef: Tensor
    lp_history: Tensor

    def __init__(self, cfg: PAnnealConfig, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg)
        W_enc, W_dec = F.tied_init(cfg.d_in, cfg.d_sae, generator)
        self.W_enc = nn.Parameter(W_enc)
        self.W_dec = nn.Parameter(W_dec)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("sparsity_coef", torch.tensor(float(cfg.sparsity_coef)))
        # Rows (Σf^p, Σf^p′) of recent batches, newest first; a row of zeros is empty.
        self.register_buffer("lp_history", torch.zeros(cfg.rescale_batches, 2))

    @classmethod
    def optim_defaults(cls, cfg: PAnnealConfig) -> OptimDefaults:
        return OptimDefaults(lr=cfg.lr or F.default_lr(cfg.d_sae))

    def schedule(self, ctx: StepCtx) -> PStep:
        c = self.cfg
        return p_schedule(ctx.step, ctx.total_steps, p_start=c.p_start, p_end=c.p_end, n_values=c.n_p_values, anneal_start=c.anneal_start)

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return ((x - self.b_dec) @ self.W_enc + self.b_enc).relu()

    def loss(self, batch: ActBatch, ctx: StepCtx) -> LossOut:
        x = batch.x
        codes = self.encode(x)
        x_hat = self.decode(codes)
        mse = F.mse_per_token(x, x_hat).mean()
        now = self.schedule(ctx)
        lp = F.lp_pow(codes, now.p)
        loss = mse + ctx.sparsity_scale * self.sparsity_coef * lp
        terms = {"mse": mse.detach(), "l0": F.l0_of(codes), **anneal_terms(codes, lp, now, self.sparsity_coef)}
        return LossOut(loss, x_hat, Codes(codes), terms)

    @torch.no_grad()
    def after_step(self, out: LossOut, ctx: StepCtx) -> None:
        anneal_after_step(self.cfg, self.sparsity_coef, self.lp_history, out, ctx)


def anneal_terms(acts: Tensor, lp: Tensor, now: PStep, sparsity_coef: Tensor) -> dict[str, Tensor]:
    """The logged terms of an annealed penalty on ``acts`` (``lp`` = mean Σ acts^p): ``lp``, ``lp_next``
    (mean Σ acts^p′ of the next value, which :func:`anneal_after_step` reads; ``lp`` when p is final),
    ``p`` and ``sparsity_coef``."""
    with torch.no_grad():
        lp_next = lp.detach() if now.next_p is None else F.lp_pow(acts.detach(), now.next_p)
    return {"lp": lp.detach(), "lp_next": lp_next, "p": torch.tensor(now.p), "sparsity_coef": sparsity_coef.detach().clone()}


@torch.no_grad()
def anneal_after_step(cfg: PAnnealConfig, sparsity_coef: Tensor, lp_history: Tensor, out: LossOut, ctx: StepCtx) -> None:
    """The λ side of p-annealing, for any SAE whose loss logged :func:`anneal_terms`: keep the
    (Σf^p, Σf^p′) rows of the last ``rescale_batches`` batches before a change of p, and at the change
    rescale λ (the buffer ``sparsity_coef``) by their ratio of means."""
    def at(step: int) -> PStep:
        return p_schedule(step, ctx.total_steps, p_start=cfg.p_start, p_end=cfg.p_end, n_values=cfg.n_p_values, anneal_start=cfg.anneal_start)

    now = at(ctx.step)
    if now.next_p is not None and now.next_step is not None and ctx.step >= now.next_step - cfg.rescale_batches:
        row = torch.stack([out.terms["lp"], out.terms["lp_next"]]).to(lp_history)
        if ctx.comm.distributed:  # means over the rank's rows: their mean is the whole batch's
            row = ctx.comm.sum_(row) / ctx.comm.world_size
        lp_history.copy_(torch.cat([row[None], lp_history[:-1]]))
    after = at(ctx.step + 1)
    if after.index == now.index:
        return
    filled = (lp_history > 0).all(-1)
    if after.index == now.index + 1 and bool(filled.any()):
        current, following = lp_history[filled].mean(0)
        sparsity_coef.mul_(current / following)
    lp_history.zero_()
