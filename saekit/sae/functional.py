"""Pure maths shared by the architectures: selection rules, the JumpReLU estimator, decoder
normalisation, initialisation, the geometric median, learned thresholds and the Zipf deficits of
aux_zipf_loss. The TopK family's losses themselves run on the sparse path (:mod:`saekit.sae.sparse`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from saekit._fast import row_topk
from saekit.comm import LOCAL, Comm
from saekit.types import Codes, StepCtx

# ---------------------------------------------------------------------------------------------
# Reconstruction and sparsity measures used inside losses


def mse_per_token(x: Tensor, x_hat: Tensor) -> Tensor:
    """Squared error summed over the activation dimension: one value per token."""
    return (x_hat - x).pow(2).sum(-1)


def site_norms(W_dec: Tensor, n_sites: int) -> Tensor:
    """[d_sae, n_sites] the norm of each latent's decoder vector at each site of a crosscoder, whose
    decoder rows are its sites' vectors side by side (``W_dec [d_sae, n_sites · d]``)."""
    return W_dec.reshape(W_dec.shape[0], n_sites, -1).norm(dim=-1)


def l0_of(codes: Tensor) -> Tensor:
    """Mean number of non-zero latents per token, detached."""
    return (codes != 0).sum(-1).float().mean().detach()


# ---------------------------------------------------------------------------------------------
# Selection rules


class TopKCodes(NamedTuple):
    """Sparse form of per-token TopK codes: ``values`` and ``indices`` are [..., k]."""

    values: Tensor
    indices: Tensor


def topk_codes(pre: Tensor, k: int) -> TopKCodes:
    """Keep the k largest pre-activations of each row, through a ReLU (indices ascending within a row;
    among equal pre-activations the choice is free). Differentiable in the kept values."""
    indices = row_topk(pre.reshape(-1, pre.shape[-1]), k).view(*pre.shape[:-1], k)
    return TopKCodes(pre.gather(-1, indices).relu(), indices)


def scatter_codes(sparse: TopKCodes, d_sae: int) -> Tensor:
    """Dense [..., d_sae] codes from (values, indices)."""
    dense = sparse.values.new_zeros(*sparse.values.shape[:-1], d_sae)
    return dense.scatter(-1, sparse.indices, sparse.values)


# ---------------------------------------------------------------------------------------------
# JumpReLU with straight-through pseudo-derivatives for the threshold (Rajamanoharan et al. 2024)


def affine_float32(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """``x @ W + b`` in float32 (or wider, if the inputs are), whatever autocast is active.

    What decides a learned threshold's pseudo-gradient, the pre-activations within ε/2 of θ, must be
    computed at a precision finer than ε: bfloat16's spacing near 0.25-0.5 is 0.002-0.004, wider than
    the default ε = 0.001, so in bfloat16 most thresholds there would never see a pre-activation in
    their window and would get exactly zero gradient forever."""
    dtype = torch.promote_types(torch.promote_types(x.dtype, W.dtype), torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        return torch.addmm(b.to(dtype), x.reshape(-1, x.shape[-1]).to(dtype), W.to(dtype)).view(*x.shape[:-1], W.shape[-1])



def rectangle(u: Tensor) -> Tensor:
    """Rectangle kernel K(u) = 1[|u| < 1/2]."""
    return (u.abs() < 0.5).to(u.dtype)


def jump_mask(z: Tensor, threshold: Tensor) -> Tensor:
    """Where JumpReLU_θ lets z through: z > θ and z > 0. For θ >= 0 this is z > θ; for a negative θ
    it is what SAELens and the Gemma Scope reference compute, ReLU(z) ⊙ 1[z > θ]."""
    return (z > threshold) & (z > 0)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * jump_mask(z, threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad_out * jump_mask(z, threshold).to(z.dtype)
        # ð/ðθ JumpReLU_θ(z) = -(θ/ε) K((z-θ)/ε)
        grad_theta = -(threshold / eps) * rectangle((z - threshold) / eps) * grad_out
        return grad_z, _sum_to(grad_theta, threshold.shape), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        # ∂/∂z H(z-θ) = 0 ; ð/ðθ H(z-θ) = -(1/ε) K((z-θ)/ε)
        grad_theta = -(1.0 / eps) * rectangle((z - threshold) / eps) * grad_out
        return torch.zeros_like(z), _sum_to(grad_theta, threshold.shape), None


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    return grad.reshape(-1, *shape).sum(0) if grad.shape != shape else grad


def jumprelu(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """ReLU(z) · H(z − θ) (= z · H(z − θ) for θ >= 0), with the rectangle-kernel pseudo-derivative for θ
    and the exact one for z."""
    return _JumpReLU.apply(z, threshold, bandwidth)


def heaviside_step(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """H(z − θ), giving no gradient to z and the rectangle-kernel pseudo-derivative to θ."""
    return _Step.apply(z, threshold, bandwidth)


# ---------------------------------------------------------------------------------------------
# Decoder geometry and initialisation


@torch.no_grad()
def normalize_rows_(W_dec: Tensor, eps: float = 1e-8) -> None:
    """Scale every decoder row (feature direction) to unit norm, in place."""
    W_dec.div_(W_dec.norm(dim=-1, keepdim=True).clamp_min(eps))


@torch.no_grad()
def remove_parallel_grad_(W_dec: Tensor) -> None:
    """Remove from W_dec.grad the component of each row parallel to that row (rows assumed unit norm),
    so that the optimiser step moves along the sphere and renormalising after it loses little."""
    if W_dec.grad is None:
        return
    # grad -= (grad · w / |w|²) w, row by row, without a normalised copy of W_dec or of the product.
    squared_norms = torch.linalg.vector_norm(W_dec, dim=-1).square_().clamp_min_(1e-16)
    along = torch.linalg.vecdot(W_dec.grad, W_dec).div_(squared_norms).neg_()
    W_dec.grad.addcmul_(W_dec, along.unsqueeze(-1))


def default_lr(d_sae: int) -> float:
    """The default Adam learning rate of every architecture: 8e-4 at 2^14 latents, ∝ 1/sqrt(d_sae).

    The width scaling is Gao et al.'s (2e-4 at 2^14 latents, for their batches of 131,072 tokens; also
    dictionary_learning's and sparsify's Adam default); the constant is four times theirs, because at
    their rate, and at the published rates of JumpReLU (7e-5) and Gated (5e-5), runs of thousands of
    steps end far from converged (docs/architectures.md, "Defaults"; tests/integration/test_planted_recovery.py pins
    it). The run's linear decay to 0 over its last fifth is what keeps long runs at this rate stable."""
    return 8e-4 / math.sqrt(d_sae / 2**14)


def tied_init(d_in: int, d_sae: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Decoder rows drawn Kaiming-uniform and scaled to unit norm; encoder = decoderᵀ.

    Returns ``(W_enc [d_in, d_sae], W_dec [d_sae, d_in])``.
    """
    bound = math.sqrt(6.0 / d_in)  # Kaiming uniform with gain sqrt(2) on fan_in = d_in
    W_dec = torch.empty(d_sae, d_in).uniform_(-bound, bound, generator=generator)
    normalize_rows_(W_dec)
    return W_dec.t().contiguous(), W_dec


def untied_init(d_in: int, d_out: int, d_sae: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A transcoder's initial weights: encoder columns and decoder rows drawn apart, each as in
    :func:`tied_init` (Kaiming-uniform, unit norm): the encoder reads one space and the decoder writes
    another, so tying them would mean nothing. Returns ``(W_enc [d_in, d_sae], W_dec [d_sae, d_out])``."""
    W_enc = tied_init(d_in, d_sae, generator)[0]
    return W_enc, tied_init(d_out, d_sae, generator)[1]


# ---------------------------------------------------------------------------------------------
# Geometric median (Weiszfeld), the b_dec initialisation of the TopK family


@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """Point minimising the sum of Euclidean distances to the rows of ``points`` [n, d]."""
    points = points.float()
    median = points.mean(0)
    for _ in range(max_iter):
        dist = (points - median).norm(dim=-1).clamp_min(1e-8)
        weights = 1.0 / dist
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - median).norm() <= tol * median.norm().clamp_min(1e-8):
            return new
        median = new
    return median


# ---------------------------------------------------------------------------------------------
# Learned inference thresholds of the batch-coupled selections (BatchTopK, Mutual / Feature Choice).
# A threshold entry of +inf means "not set yet": the latent is off at inference, in saekit and in any
# reader that computes ReLU(z) ⊙ 1[z > θ] (SAELens's jumprelu), and the EMA starts at the first
# observed value.

UNSET_THRESHOLD = float("inf")


def threshold_tracking(step: int, start_step: int, total_steps: int) -> bool:
    """Whether the threshold EMA runs at ``step``: from ``start_step``, capped at half the run so a
    short run still sets its threshold."""
    return step >= min(start_step, total_steps // 2)


def threshold_ema_weight(beta: float, total_steps: int) -> float:
    """The EMA weight actually used: ``beta``, raised so that the EMA's memory (about 1/weight steps)
    is at most a tenth of the run. With β = 0.001 a run of a few thousand steps would end with a
    threshold averaged over encoders long gone; the last tenth of the run is within its learning-rate
    decay, where the encoder the threshold will serve has settled."""
    return max(beta, min(1.0, 10.0 / max(1, total_steps)))


@torch.no_grad()
def ema_threshold_(threshold: Tensor, observed: Tensor, beta: float) -> None:
    """In place, entry by entry: θ ← (1 − β) θ + β · observed where θ is set (finite), θ ← observed
    where it is not (+inf); a NaN observation leaves θ as it is. ``observed`` broadcasts to θ's shape."""
    observed = observed.to(threshold.dtype).expand_as(threshold)
    updated = torch.where(threshold.isfinite(), threshold.lerp(observed, beta), observed)
    threshold.copy_(torch.where(observed.isnan(), threshold, updated))


@torch.no_grad()
def track_threshold_(threshold: Tensor, observed: Tensor, beta: float, start_step: int, ctx: StepCtx) -> None:
    """A learned inference threshold's step after ``ctx.step``: the EMA of :func:`ema_threshold_`
    towards ``observed`` (the smallest over the ranks of a distributed run) from ``start_step`` on
    (:func:`threshold_tracking`), at the weight :func:`threshold_ema_weight` gives ``beta``."""
    if threshold_tracking(ctx.step, start_step, ctx.total_steps):
        smallest = smallest_over_ranks(smallest_over_ranks(observed, ctx.comm), ctx.latents)
        ema_threshold_(threshold, smallest, threshold_ema_weight(beta, ctx.total_steps))


# ---------------------------------------------------------------------------------------------
# Feature Choice selection (Ayonrinde 2024): every latent chooses its tokens


def feature_capacities(n_tokens: int, k: int, d_sae: int, exponent: float = 0.0) -> Tensor:
    """[d_sae] tokens each latent may take from a batch of n: m_j = ⌊n·k · w_j⌋ with w_j ∝ (j+1)^(−exponent)
    summing to 1, clamped to 1..n. exponent 0 gives the uniform m = ⌊n·k / d_sae⌋; the batch spends
    at most the TopK budget n·k, plus the latents lifted to 1."""
    shape = torch.arange(1, d_sae + 1, dtype=torch.float64).pow(-exponent)
    capacities = torch.floor(n_tokens * k * shape / shape.sum()).long()
    return capacities.clamp(1, n_tokens)


def smallest_over_ranks(smallest: Tensor, comm: Comm) -> Tensor:
    """The smallest of every rank's ``smallest`` (NaN where no rank has one), elementwise."""
    if not comm.distributed:
        return smallest
    merged = comm.min_(smallest.nan_to_num(nan=float("inf")))
    return merged.masked_fill(merged.isinf(), float("nan"))


def feature_choice_mask(acts: Tensor, capacities: Tensor, comm: Comm = LOCAL) -> Tensor:
    """Mask of the ``capacities[j]`` largest entries of every column j (latent) of a [batch, d_sae]
    matrix, over the whole batch when its rows are split over ``comm``'s ranks. Ties at a latent's
    cut go to the earliest rows (rank by rank), so the mask is one function of the batch however it
    is split."""
    capacities = capacities.to(acts.device).clamp(max=acts.shape[0] * comm.world_size)
    most = int(capacities.max())
    top = acts.topk(min(most, acts.shape[0]), dim=0, sorted=True).values
    ranked = comm.gather(top).topk(most, dim=0, sorted=True).values if comm.distributed else top
    cut = ranked.gather(0, (capacities - 1)[None])  # [1, d_sae]: each latent's m_j-th largest
    greater, tied = acts > cut, acts == cut
    counts = comm.gather(torch.stack([greater.sum(0), tied.sum(0)])[None])  # [ranks, 2, d_sae]
    free = capacities - counts[:, 0].sum(0) - counts[: comm.rank, 1].sum(0)  # tied places left for this rank
    return greater | (tied & (tied.cumsum(0) <= free))


# ---------------------------------------------------------------------------------------------
# aux_zipf_loss (Ayonrinde 2024), PROVISIONAL reading: papers.md §3 marks its definition unverified.
# The loss is saekit.sae.sparse.aux_loss with the weights zipf_deficit(running density).


class RunningDensity(NamedTuple):
    """An exponential moving average of per-latent firing densities, bias-corrected while it fills:
    ``ema`` [d_sae] and ``seen`` (scalar) start at 0 and the estimate is ``ema / seen``."""

    ema: Tensor
    seen: Tensor

    @property
    def estimate(self) -> Tensor:
        return self.ema / self.seen


def update_density(running: RunningDensity, batch_density: Tensor, weight: float) -> RunningDensity:
    """The running density after one more batch: ema ← (1 − w) ema + w ρ_batch, seen ← (1 − w) seen + w.
    After the first batch the estimate is that batch's density; later batches count with weight w."""
    ema, seen = running
    return RunningDensity(ema * (1 - weight) + weight * batch_density.to(ema), seen * (1 - weight) + weight)


def zipf_deficit(density: Tensor, exponent: float) -> Tensor:
    """Per latent, how far its firing density falls short of a Zipf law, in [0, 1].

    Latents are ranked by density (rank r = 1 for the most frequent; ties keep index order); the
    target at rank r is ρ̂(r) = C · r^(−exponent), with C chosen so that Σ ρ̂ = Σ ρ (the same total
    budget). The deficit is max(0, 1 − ρ/ρ̂): 1 for a latent that never fired, 0 for one at or above
    its target. All zero when nothing fired.
    """
    order = density.argsort(descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(0, order, torch.arange(1, density.numel() + 1, device=density.device))
    shape = ranks.to(density.dtype).pow(-exponent)
    total = density.sum()
    if not total > 0:
        return torch.zeros_like(density)
    target = shape * (total / shape.sum())
    return (1 - density / target).clamp(0, 1)


ZIPF_STATE = ("zipf_density", "zipf_seen")
"""Buffers of the running firing density aux_zipf_loss uses: training state, left out of saved folders."""


def register_zipf_state(sae: torch.nn.Module, d_sae: int) -> None:
    """Give ``sae`` the (empty) running density of :data:`ZIPF_STATE`; architectures call it when their
    ``aux_zipf_coef`` is positive."""
    sae.register_buffer(ZIPF_STATE[0], torch.zeros(d_sae))
    sae.register_buffer(ZIPF_STATE[1], torch.zeros(()))


def zipf_running(sae: torch.nn.Module, codes: Codes, weight: float, comm: Comm) -> RunningDensity:
    """The running density of ``sae`` (registered by :func:`register_zipf_state`) updated with the
    batch's ``codes`` (the whole batch's density when its rows are split over ranks: equal slices, so
    the mean of the ranks' densities); ``commit_zipf_state_`` stores it after the step. The buffers are
    read by name, not through ``state_dict()``, which a fully sharded SAE answers with its shards even
    inside its loss (:mod:`saekit.training.fsdp`)."""
    density = comm.sum_(codes.density().clone()) / comm.world_size if comm.distributed else codes.density()
    return update_density(RunningDensity(sae.get_buffer(ZIPF_STATE[0]), sae.get_buffer(ZIPF_STATE[1])), density, weight)


@torch.no_grad()
def commit_zipf_state_(sae: torch.nn.Module, running: RunningDensity) -> None:
    sae.get_buffer(ZIPF_STATE[0]).copy_(running.ema)
    sae.get_buffer(ZIPF_STATE[1]).copy_(running.seen)


# ---------------------------------------------------------------------------------------------
# Lp^p sparsity (p-annealing, Karvonen et al. 2024)


def lp_pow(codes: Tensor, p: float) -> Tensor:
    """Σ_i |f_i|^p per token, averaged over tokens. Zero codes contribute 0 and no gradient (for p < 1
    the derivative p·f^(p−1) is infinite at 0)."""
    active = codes != 0
    base = torch.where(active, codes.abs(), torch.ones_like(codes))
    return (base.pow(p) * active).sum(-1).mean()
