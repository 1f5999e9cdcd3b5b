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

Everything is plain torch (embedding_bag, sampled_addmm, sparse COO mm), so it runs on any device;
its results equal the dense path's up to float rounding, which tests/sae/test_sparse.py checks for the
loss and the gradient of every parameter. The architectures use it privately in ``loss``; their public
``encode`` / ``decode`` stay dense.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as tF


class Pattern(NamedTuple):
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


def pattern_from_topk(indices: Tensor, n_cols: int) -> Pattern:
    """Pattern of per-row top-k indices [n_rows, k] (sorted within each row)."""
    n_rows, k = indices.shape
    cols = indices.sort(dim=-1).values.reshape(-1)
    rows = torch.arange(n_rows, device=indices.device).repeat_interleave(k)
    crow = torch.arange(0, n_rows * k + 1, k, device=indices.device)
    return Pattern(rows, cols, crow, n_rows, n_cols)


def pattern_from_flat(flat: Tensor, n_rows: int, n_cols: int) -> Pattern:
    """Pattern of flat indices into a row-major [n_rows, n_cols] matrix (any order, no repeats)."""
    flat = flat.sort().values
    rows = torch.div(flat, n_cols, rounding_mode="floor")
    counts = torch.bincount(rows, minlength=n_rows)
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return Pattern(rows, flat - rows * n_cols, crow, n_rows, n_cols)


def pattern_from_mask(mask: Tensor) -> Pattern:
    """Pattern of the True entries of a [n_rows, n_cols] mask."""
    n_rows, n_cols = mask.shape
    return pattern_from_flat(mask.reshape(-1).nonzero().squeeze(-1), n_rows, n_cols)


def densify(values: Tensor, pattern: Pattern) -> Tensor:
    """Dense [n_rows, n_cols] matrix with ``values`` at the pattern and zeros elsewhere."""
    dense = values.new_zeros(pattern.n_rows * pattern.n_cols)
    dense[pattern.rows * pattern.n_cols + pattern.cols] = values
    return dense.view(pattern.n_rows, pattern.n_cols)


def fired_latents(values: Tensor, pattern: Pattern) -> Tensor:
    """[n_cols] bool: the columns with a non-zero value, ``(densify(values, pattern) != 0).any(0)``."""
    fired = torch.zeros(pattern.n_cols, dtype=torch.bool, device=values.device)
    return fired.index_fill_(0, pattern.cols[values.detach() != 0], True)


def l0_per_row(values: Tensor, pattern: Pattern) -> Tensor:
    """Mean count of non-zero values per row, detached: ``l0_of(densify(values, pattern))``."""
    return (values.detach() != 0).sum().float() / max(1, pattern.n_rows)


def pre_acts(x_in: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
    """``x_in @ W_enc + b_enc`` in one fused call, which saves a pass over the [batch, d_sae] result."""
    return torch.addmm(b_enc, x_in, W_enc)


# ---------------------------------------------------------------------------------------------
# The three sparse products, each on the pattern's nnz pairs


def rows_times(pattern: Pattern, values: Tensor, table: Tensor) -> Tensor:
    """S @ table, where S is [n_rows, n_cols] with ``values`` at the pattern: out[r] = Σ v · table[c]."""
    return tF.embedding_bag(
        pattern.cols, table, pattern.crow[:-1], mode="sum", per_sample_weights=values.to(table.dtype)
    )


def cols_times(pattern: Pattern, values: Tensor, dense: Tensor) -> Tensor:
    """Sᵀ @ dense, [n_cols, d]: out[c] = Σ over the pairs (r, c) of v · dense[r]."""
    index = torch.stack([pattern.cols, pattern.rows])
    st = torch.sparse_coo_tensor(
        index, values.to(dense.dtype), (pattern.n_cols, pattern.n_rows), check_invariants=False
    )
    return torch.sparse.mm(st, dense)


def pair_dots(pattern: Pattern, a: Tensor, b: Tensor) -> Tensor:
    """[nnz] dot products a[r] · b[c] over the pattern's pairs (a [n_rows, d], b [n_cols, d])."""
    if pattern.nnz == 0:
        return a.new_zeros(0)
    with warnings.catch_warnings():
        # torch calls sparse CSR "beta"; sampled_addmm is checked against the dense product in the tests.
        warnings.simplefilter("ignore", UserWarning)
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
        return pre[pattern.rows, pattern.cols]

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
            grad_W = cols_times(pattern, grad_values, x_in.to(W_enc.dtype)).t()
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
# Losses shared by the TopK family


def aux_k_loss(
    pre: Tensor,
    gather,
    residual: Tensor,
    dead_mask: Tensor | None,
    k_aux: int,
    W_dec: Tensor,
) -> Tensor:
    """Sparse form of :func:`saekit.sae.functional.aux_k_loss` (same value and gradients).

    ``pre`` [batch, d_sae] holds the pre-activations without autograd; ``gather(pattern)`` returns
    them at a pattern with gradients (a closure over :func:`gather_pre`).
    """
    if dead_mask is None or not bool(dead_mask.any()):
        return pre.new_zeros((), dtype=W_dec.dtype)
    k = min(k_aux, int(dead_mask.sum()))
    indices = pre.masked_fill(~dead_mask, float("-inf")).topk(k, dim=-1, sorted=False).indices
    pattern = pattern_from_topk(indices, pre.shape[-1])
    residual_hat = sparse_decode(gather(pattern).relu(), pattern, W_dec)
    variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
    return (residual_hat - residual).pow(2).sum() / variance
