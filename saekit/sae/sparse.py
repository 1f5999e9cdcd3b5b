"""Sparse training paths: a step that costs one dense matmul (the encoder pre-activations) and never
materialises a dense [batch, d_sae] gradient.

The plain dense TopK step runs five [batch × d_in × d_sae] products: the encoder, the decoder, and in
the backward pass the code gradient, the decoder gradient and the encoder gradient. Once the latents
a token uses are known, only the encoder product needs every latent; the other four touch the
``nnz`` selected (token, latent) pairs, ``nnz = batch · k`` for TopK:

* the pre-activations are computed without autograd; the selection (top-k, batch top-k, JumpReLU's
  active set) picks a :class:`Pattern`, the list of (row, column) pairs that carry a code;
* :func:`gather_pre` takes the pre-activations at the pattern with a backward that computes the
  encoder gradients from the ``nnz`` code gradients alone (sparse × dense products);
* :func:`sparse_decode` reconstructs from (values, pattern) with a backward that needs one dot product
  per pair for the code gradients and one sparse × dense product for the decoder gradient.

Everything is plain torch (embedding_bag over the pairs by row, and by column for the weight
gradients; sampled_addmm for the dot products), so it runs on any device; its results equal the dense
path's up to float rounding, which tests/sae/test_sparse.py checks for the loss and the gradient of
every parameter against the dense oracle of tests/sae/dense_reference.py. The architectures use it in
``loss`` (:func:`saekit.sae.topk_family.family_loss` for the TopK family, JumpReLU's sparse regime);
their public ``encode`` / ``decode`` stay dense, and ``LossOut.codes`` is a sparse CSR
tensor (:func:`sparse_codes`).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as tF

from saekit._fast import row_topk, scratch
from saekit.comm import LOCAL, Comm
from saekit.sae import shards


class ByColumn(NamedTuple):
    """A pattern's pairs in column-major order: ``order`` permutes the row-major pairs into it, ``rows``
    are their rows in that order and ``ccol`` [n_cols + 1] the column pointers."""

    order: Tensor
    rows: Tensor
    ccol: Tensor


@dataclass(frozen=True)
class Pattern:
    """The (row, column) pairs of a sparse [n_rows, n_cols] code matrix, in row-major order.

    rows: [nnz] int64, non-decreasing.     cols: [nnz] int64 (column order within a row is free).
    crow: [n_rows + 1] int64, ``rows`` as CSR row pointers (pairs of row r are crow[r]:crow[r+1]).
    """

    rows: Tensor
    cols: Tensor
    crow: Tensor
    n_rows: int
    n_cols: int

    @property
    def nnz(self) -> int:
        return self.cols.numel()

    @functools.cached_property
    def flat(self) -> Tensor:
        """[nnz] positions of the pairs in the flattened row-major matrix (a 1-d gather is cheaper than
        indexing with two index tensors)."""
        return self.rows * self.n_cols + self.cols

    @functools.cached_property
    def by_column(self) -> ByColumn:
        """The pairs grouped by column, computed once: both weight gradients of a step use it."""
        order = self.cols.argsort(stable=True)  # stable: a radix sort for integers, and deterministic
        counts = torch.bincount(self.cols, minlength=self.n_cols)
        return ByColumn(order, self.rows[order], torch.cat([counts.new_zeros(1), counts.cumsum(0)]))


def pattern_from_topk(indices: Tensor, n_cols: int, *, ascending: bool = False) -> Pattern:
    """Pattern of per-row top-k indices [n_rows, k]; ``ascending`` says they are already sorted within
    each row (as :func:`saekit._fast.row_topk` gives them), else they are sorted here."""
    n_rows, k = indices.shape
    cols = (indices if ascending else indices.sort(dim=-1).values).reshape(-1)
    rows = torch.arange(n_rows, device=indices.device).repeat_interleave(k)
    crow = torch.arange(0, n_rows * k + 1, k, device=indices.device)
    return Pattern(rows, cols, crow, n_rows, n_cols)


def pattern_from_flat(flat: Tensor, n_rows: int, n_cols: int) -> Pattern:
    """Pattern of flat indices into a row-major [n_rows, n_cols] matrix (any order, no repeats)."""
    # Stable: deterministic, and torch sorts integers by radix then.
    return _pattern_from_sorted(flat.sort(stable=True).values, n_rows, n_cols)


def pattern_from_mask(mask: Tensor) -> Pattern:
    """Pattern of the True entries of a [n_rows, n_cols] mask."""
    n_rows, n_cols = mask.shape
    return _pattern_from_sorted(mask.reshape(-1).nonzero().squeeze(-1), n_rows, n_cols)  # nonzero is row-major


def _pattern_from_sorted(flat: Tensor, n_rows: int, n_cols: int) -> Pattern:
    rows = torch.div(flat, n_cols, rounding_mode="floor")
    return Pattern(rows, flat - rows * n_cols, _row_pointers(rows, n_rows), n_rows, n_cols)


def _row_pointers(rows: Tensor, n_rows: int) -> Tensor:
    """CSR row pointers [n_rows + 1] of non-decreasing row indices."""
    return torch.cat([rows.new_zeros(1), torch.bincount(rows, minlength=n_rows).cumsum(0)])


class Grouped(NamedTuple):
    """A pattern whose rows are split by groups of columns (:func:`group_rows`): ``order`` permutes the
    pattern's pairs (and so its values) into ``pattern``'s order, None when that order is the same."""

    order: Tensor | None
    pattern: Pattern


def group_rows(pattern: Pattern, bounds: tuple[int, ...]) -> Grouped:
    """``pattern`` as a [n_rows · G, n_cols] pattern, G = len(bounds): pair (r, c) moves to row r · G + g,
    where column group g is [bounds[g − 1], bounds[g]) (the first from 0; ``bounds`` increase and end at
    n_cols). Decoded against the whole W_dec it gives, in one call, each row's part of the
    reconstruction from each group of latents; a Matryoshka SAE's nested prefixes are their cumulative
    sums over the groups. The pairs keep their order when each row's columns ascend (the selections'
    patterns), else they are sorted into it (``order``)."""
    n_groups = len(bounds)
    edges = torch.tensor(bounds[:-1], dtype=pattern.cols.dtype, device=pattern.cols.device)
    rows = pattern.rows * n_groups + torch.bucketize(pattern.cols, edges, right=True)
    order, cols = None, pattern.cols
    if rows.numel() > 1 and bool((rows[1:] < rows[:-1]).any()):
        order = rows.argsort(stable=True)
        rows, cols = rows[order], cols[order]
    n_rows = pattern.n_rows * n_groups
    return Grouped(order, Pattern(rows, cols, _row_pointers(rows, n_rows), n_rows, pattern.n_cols))


def batch_topk_flat(scores: Tensor, n_keep: int, per_row: int) -> Tensor:
    """Flat indices of the ``n_keep`` largest entries of a [n_rows, n_cols] matrix: the same set as
    ``scores.flatten().topk(n_keep)`` (up to ties), without a selection over the whole matrix.

    Each row's ``per_row`` largest entries are the candidates and the selection runs over them. A row
    that had every candidate selected may hold more entries above the cut, so such rows are taken
    whole and the selection is redone; every entry above the final cut is then a candidate, so the
    result is exact. A flat top-k over 19M entries costs several times a per-row top-k.
    """
    n_rows, n_cols = scores.shape
    per_row = min(n_cols, per_row)
    if per_row == n_cols or n_keep >= per_row * n_rows:
        return scores.flatten().topk(n_keep, sorted=False).indices
    cols = row_topk(scores, per_row)
    values = scores.gather(-1, cols)
    kept = values.flatten().topk(n_keep, sorted=False).indices
    rows = torch.div(kept, per_row, rounding_mode="floor")
    full = torch.bincount(rows, minlength=n_rows) >= per_row
    if not bool(full.any()):
        return rows * n_cols + cols.flatten()[kept]
    if int(full.sum()) * 8 > n_rows:  # the candidates would be a large part of the matrix anyway
        return scores.flatten().topk(n_keep, sorted=False).indices
    partial = ~full
    row_ids = torch.arange(n_rows, device=scores.device)
    candidates = torch.cat([
        (row_ids[partial, None] * n_cols + cols[partial]).flatten(),
        (row_ids[full, None] * n_cols + torch.arange(n_cols, device=scores.device)).flatten(),
    ])
    return candidates[scores.flatten()[candidates].topk(n_keep, sorted=False).indices]


def row_topk_pattern(scores: Tensor, k: int, latents: Comm) -> Pattern:
    """The pattern of each row's ``k`` largest ``scores`` over every rank's latents (``scores`` [rows,
    this rank's latents], no autograd), as this rank's pairs. Ties at a row's cut go to the lower rank
    (within a rank, to the earlier latent). One process: :func:`saekit._fast.row_topk`."""
    if not latents.distributed:
        return pattern_from_topk(row_topk(scores, k), scores.shape[-1], ascending=True)
    rows, width = scores.shape
    top = scores.topk(min(k, width), dim=-1, sorted=True)
    candidates = latents.gather(top.values.t().contiguous()).t()  # [rows, ranks · min(k, width)]
    cut = candidates.topk(k, dim=-1, sorted=True).values[:, -1:]  # each row's k-th largest
    greater, tied = top.values > cut, top.values == cut
    counts = latents.gather(torch.stack([greater.sum(-1), tied.sum(-1)])[None])  # [ranks, 2, rows]
    free = k - counts[:, 0].sum(0) - counts[: latents.rank, 1].sum(0)  # tied places left for this rank
    keep = greater | (tied & (tied.cumsum(-1) <= free[:, None]))
    flat = (torch.arange(rows, device=scores.device)[:, None] * width + top.indices)[keep]
    return pattern_from_flat(flat.sort().values, rows, width)


def densify(values: Tensor, pattern: Pattern) -> Tensor:
    """Dense [n_rows, n_cols] matrix with ``values`` at the pattern and zeros elsewhere."""
    dense = values.new_zeros(pattern.n_rows * pattern.n_cols)
    dense[pattern.flat] = values
    return dense.view(pattern.n_rows, pattern.n_cols)


def sparse_codes(values: Tensor, pattern: Pattern) -> Tensor:
    """The detached codes as a sparse CSR [n_rows, n_cols] tensor: what the sparse paths put in
    ``LossOut.codes``, so that no dense [batch, d_sae] matrix is filled each step. ``.to_dense()`` gives
    ``densify(values, pattern)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch calls sparse CSR "beta"
        return torch.sparse_csr_tensor(
            pattern.crow, pattern.cols, values.detach(), (pattern.n_rows, pattern.n_cols), check_invariants=False
        )


def fired_latents(values: Tensor, pattern: Pattern) -> Tensor:
    """[n_cols] bool: the columns with a non-zero value, ``(densify(values, pattern) != 0).any(0)``."""
    fired = torch.zeros(pattern.n_cols, dtype=torch.bool, device=values.device)
    return fired.index_fill_(0, pattern.cols[values.detach() != 0], True)


def l0_per_row(values: Tensor, pattern: Pattern) -> Tensor:
    """Mean count of non-zero values per row, detached: ``l0_of(densify(values, pattern))``."""
    return (values.detach() != 0).sum().float() / max(1, pattern.n_rows)


def pre_acts(x_in: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
    """``x_in @ W_enc + b_enc`` in one fused call, which saves a pass over the [batch, d_sae] result.

    Without autograd and autocast, and inside :func:`saekit._fast.scratch.reusing` (a training run),
    the result is written into a reused buffer: the caller must drop it, and any view of it, within the
    step.
    """
    plain = (
        torch.is_grad_enabled()
        or torch.is_autocast_enabled(x_in.device.type)
        or not (x_in.dtype == W_enc.dtype == b_enc.dtype)
    )
    if plain:
        return torch.addmm(b_enc, x_in, W_enc)
    out = scratch.buffer((x_in.shape[0], W_enc.shape[1]), W_enc.dtype, W_enc.device)
    return torch.addmm(b_enc, x_in, W_enc, out=out)


# ---------------------------------------------------------------------------------------------
# The three sparse products, each on the pattern's nnz pairs


BAG_CACHE_BYTES = 2 * 2**20
"""The most one block of a table takes (a core's L2 cache) in the CPU ``embedding_bag`` calls below: the pairs'
random rows then come from cache (docs/benchmarks.md); each output sums the same terms in the same order."""


def _bags(indices: Tensor, table: Tensor, offsets: Tensor, weights: Tensor) -> list[Tensor]:
    """``embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=weights)`` by blocks of 64, 32 or
    16 columns, the widest that fits BAG_CACHE_BYTES (else 16); off the CPU, one call over the whole table."""
    block = 64 if (cpu := table.device.type == "cpu") else max(1, table.shape[1])
    while cpu and block > 16 and table.shape[0] * block * table.element_size() > BAG_CACHE_BYTES:
        block //= 2
    bag = functools.partial(tF.embedding_bag, indices, offsets=offsets, mode="sum", per_sample_weights=weights)
    return [bag(table[:, start : start + block]) for start in range(0, max(1, table.shape[1]), block)]


def rows_times(pattern: Pattern, values: Tensor, table: Tensor) -> Tensor:
    """S @ table, where S is [n_rows, n_cols] with ``values`` at the pattern: out[r] = Σ v · table[c]."""
    return torch.cat(_bags(pattern.cols, table, pattern.crow[:-1], values.to(table.dtype)), dim=1)


def cols_times(pattern: Pattern, values: Tensor, dense: Tensor, *, transposed: bool = False) -> Tensor:
    """Sᵀ @ dense, [n_cols, d]: out[c] = Σ over the pairs (r, c) of v · dense[r]; ``transposed``: [d, n_cols],
    contiguous (W_enc's layout), each block transposed while in cache (cheaper than autograd's copy)."""
    by_column = pattern.by_column
    parts = _bags(by_column.rows, dense, by_column.ccol[:-1], values[by_column.order].to(dense.dtype))
    return torch.cat([part.t() for part in parts]) if transposed else torch.cat(parts, dim=1)


def pair_dots(pattern: Pattern, a: Tensor, b: Tensor) -> Tensor:
    """[nnz] dot products a[r] · b[c] over the pattern's pairs (a [n_rows, d], b [n_cols, d])."""
    if pattern.nnz == 0:
        return a.new_zeros(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch calls sparse CSR "beta"; tests check the result
        mask = torch.sparse_csr_tensor(
            pattern.crow, pattern.cols, a.new_zeros(pattern.nnz), (pattern.n_rows, pattern.n_cols), check_invariants=False
        )
    return torch.sparse.sampled_addmm(mask, a, b.t(), beta=0.0).values()


# ---------------------------------------------------------------------------------------------
# Autograd functions


class _GatherPre(torch.autograd.Function):
    """values = pre[pattern], where pre = (x − shift) W_enc + b_enc was computed without autograd."""

    @staticmethod
    def forward(ctx, pre: Tensor, x_in: Tensor, shift: Tensor | None, W_enc: Tensor, b_enc: Tensor, pattern: Pattern):
        ctx.pattern = pattern
        ctx.has_shift = shift is not None
        ctx.save_for_backward(x_in, W_enc)
        return pre.reshape(-1).index_select(0, pattern.flat)

    @staticmethod
    def backward(ctx, grad_values: Tensor):
        x_in, W_enc = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        grad_values = grad_values.to(W_enc.dtype)
        grad_x = grad_shift = grad_W = grad_b = None
        col_sums = W_enc.new_zeros(pattern.n_cols).index_add_(0, pattern.cols, grad_values)
        if ctx.needs_input_grad[4]:
            grad_b = col_sums
        if ctx.needs_input_grad[2]:
            # Every row of the batch subtracts the same shift: its gradient is −W_enc Σ_rows ∂pre.
            grad_shift = -(W_enc @ col_sums)
        if ctx.needs_input_grad[3]:
            grad_W = cols_times(pattern, grad_values, x_in.to(W_enc.dtype), transposed=True)
        if ctx.needs_input_grad[1]:
            grad_x = rows_times(pattern, grad_values, W_enc.t())
        return None, grad_x, grad_shift, grad_W, grad_b, None


class _Decode(torch.autograd.Function):
    """S @ W_dec for the sparse code matrix S (``values`` at ``pattern``)."""

    @staticmethod
    def forward(ctx, values: Tensor, W_dec: Tensor, pattern: Pattern):
        ctx.pattern = pattern
        ctx.save_for_backward(values, W_dec)
        return rows_times(pattern, values, W_dec)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, W_dec = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        grad_out = grad_out.to(W_dec.dtype)
        grad_values = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_values = pair_dots(pattern, grad_out, W_dec).to(values.dtype)
        if ctx.needs_input_grad[1]:
            grad_W = cols_times(pattern, values, grad_out)
        return grad_values, grad_W, None


def gather_pre(pre: Tensor, x_in: Tensor, shift: Tensor | None, W_enc: Tensor, b_enc: Tensor, pattern: Pattern) -> Tensor:
    """Pre-activations at the pattern, [nnz], differentiable in ``x_in``, ``shift``, ``W_enc``, ``b_enc``.

    ``pre`` must equal ``(x_in − shift) @ W_enc + b_enc`` (shift None: no subtraction), computed under
    ``torch.no_grad``; it is not differentiated. ``x_in`` is the encoder input after the shift.
    """
    return _GatherPre.apply(pre.detach(), x_in, shift, W_enc, b_enc, pattern)


def sparse_decode(values: Tensor, pattern: Pattern, W_dec: Tensor) -> Tensor:
    """[n_rows, d_in] = S @ W_dec without a dense S, differentiable in ``values`` and ``W_dec``."""
    return _Decode.apply(values, W_dec, pattern)


# ---------------------------------------------------------------------------------------------
# The auxiliary loss of the TopK family (AuxK and aux_zipf_loss)


def aux_loss(
    pre: Tensor, gather, x_hat: Tensor, x: Tensor, weights: Tensor | None, k_aux: int, W_dec: Tensor, comm: Comm, latents: Comm = LOCAL
) -> Tensor:
    """The auxiliary loss of the TopK family: latents with a positive weight reconstruct the residual
    x − x̂ (detached) from each token's ``min(k_aux, #latents)`` largest pre-activations among them,
    through a ReLU and times their latent's weight, decoded without b_dec; the summed squared error
    over the residual's total variance in the batch. 0 when no weight is positive (or ``weights`` is
    None).

    Weights of 1 on the dead latents make it AuxK with dictionary_learning's protocol
    (``trainers/top_k.py`` ``get_auxiliary_loss``), whose normalisation is Gao et al.'s (OpenAI's
    ``normalized_mse``); the family's default k_aux is d_in // 2, as dictionary_learning and sparsify
    (OpenAI: 256, the paper 512). sparsify differs in three ways, not followed here: it scales the
    term by min(#dead / k_aux, 1), divides by the total variance of x rather than of the residual,
    and decodes with b_dec. The Zipf deficits of :func:`saekit.sae.functional.zipf_deficit` as weights
    make it aux_zipf_loss (provisional reading, papers.md §3).

    ``comm``: the ranks the batch's rows are split over (``LOCAL`` in one process): the variance is the
    whole batch's, and each rank's error is scaled so that the mean over ranks is the one-process term.
    ``latents``: the ranks the latents are split over (:mod:`saekit.sae.shards`; ``weights`` and ``pre``
    are this rank's slice): the chosen latents are counted, selected and decoded over all of them.

    ``pre`` [batch, d_sae] holds the pre-activations without autograd; ``gather(pattern)`` returns
    them at a pattern with gradients (a closure over :func:`gather_pre`). The dense form of the same
    formula is the test oracle (tests/sae/dense_reference.py).
    """
    n_chosen = 0 if weights is None else int(latents.sum_((weights > 0).sum()))
    if weights is None or n_chosen == 0:
        return pre.new_zeros((), dtype=W_dec.dtype)
    residual = (x - x_hat).detach()
    chosen = (weights > 0).nonzero().squeeze(-1)
    k = min(k_aux, n_chosen)
    if latents.distributed:
        pattern = row_topk_pattern(pre.masked_fill(weights <= 0, float("-inf")), k, latents)
    elif 4 * chosen.numel() < pre.shape[-1]:
        # Few latents: select among their columns only instead of masking the whole matrix.
        pattern = pattern_from_topk(chosen[pre.index_select(-1, chosen).topk(k, dim=-1, sorted=False).indices], pre.shape[-1])
    else:
        pattern = pattern_from_topk(pre.masked_fill(weights <= 0, float("-inf")).topk(k, dim=-1, sorted=False).indices, pre.shape[-1])
    values = gather(pattern).relu() * weights.to(pre.dtype)[pattern.cols]
    residual_hat = shards.summed(sparse_decode(values, pattern, W_dec), latents)
    if not comm.distributed:
        variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
        return (residual_hat - residual).pow(2).sum() / variance
    # The whole batch's variance; the rank's error times W, so that the mean over ranks is the ratio.
    mean = comm.sum_(residual.sum(0)) / (residual.shape[0] * comm.world_size)
    variance = comm.sum_((residual - mean).pow(2).sum()).clamp_min(1e-12)
    return comm.world_size * (residual_hat - residual).pow(2).sum() / variance
