"""Dark matter of an SAE (Engels, Riggs, Tegmark, arXiv 2410.14670; papers.md §2).

The SAE error e = x − x̂ is regressed on the input x by least squares (fit on a random half of the
tokens, scored on the other half):

* ``r2_vector``: the per-dimension R² of predicting the error vector, averaged over dimensions (the
  paper's R²_vec); ``r2_norm``: R² of predicting ||e||² (the paper's R²_norm).
* e_lin = the affine prediction, e_nl = e − e_lin. ``fvu_linear`` / ``fvu_nonlinear`` are their sums of
  squares over the total variance of x; ``fvu_plus_linear`` is the FVU of x̂ + e_lin (the linear part
  added back), which equals ``fvu_nonlinear``.
* Downstream (with a model): next-token loss with the site replaced by x̂, by x̂ + e_lin (only the
  nonlinear error left) and by x̂ + e_nl (only the linear error left).
* Per-token scaling: R² of predicting a larger SAE's per-token ||e|| from a smaller one's ||e||, and
  with the smaller one's ||e_nl|| as a second regressor.
* Two attempts to reduce the nonlinear error: gradient pursuit on the SAE's own decoder with each
  token's L0 kept, and an affine map from the previous layer's SAE reconstruction and error.

Two protocols (``protocol=``), recorded in every result:

* ``"saekit"`` (default): affine fits (with an intercept) of the error vector and of ||e||², on the
  positions ``>= skip_positions`` of each context the caller extracted (the CLI drops 2: BOS, and
  SmolLM2's position 1, whose massive activations would dominate the regressions).
* ``"paper"``: as the paper's code (JoshEngels/SAE-Dark-Matter ``sae_power_laws.py`` / ``utils.py``
  ``run_lstsq``): ``lstsq`` without a column of ones for both fits, and the first 200 positions of
  every context dropped (``num_cols_start = 200``; the CLI then reads contexts of 1024 tokens).

Either way R² is the paper's: per target dimension, around the target's mean, averaged over
dimensions, on held-out tokens. The regression direction differs from the paper's code (which
regresses −e); R² does not depend on it. The per-token scaling and previous-layer maps are affine in
both protocols (the paper's per-token regressions have a column of ones too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from saekit.analysis.acts import encode_rows
from saekit.analysis.pursuit import gradient_pursuit
from saekit.analysis.regression import AffineMap, Split, design, fit_affine, r2_per_dim, r2_pooled, split_tokens
from saekit.analysis.store import Stored, cpu_float
from saekit.errors import DataError
from saekit.eval.plots import pyplot, save_figure
from saekit.models.load import LoadedModel, as_module
from saekit.sae.base import SAE


class Protocol(NamedTuple):
    """How the error regressions are fitted and which positions of each context they read."""

    name: str
    intercept: bool
    """Whether the error-vector and error-norm fits have an intercept."""
    skip_positions: int
    """Leading positions of each context left out (what the activations given to :func:`run` lack)."""


PROTOCOLS = {"saekit": Protocol("saekit", True, 2), "paper": Protocol("paper", False, 200)}


class ErrorSplit(NamedTuple):
    """The regression of an error on the input and the linear / nonlinear parts on the test tokens."""

    fit: AffineMap
    r2_per_dim: Tensor
    e_lin: Tensor
    e_nl: Tensor


@dataclass(frozen=True)
class ScalingResult:
    """Per-token error-norm scaling between a smaller and a larger SAE of the same site."""

    r2_from_norm: float
    """R² of predicting the larger SAE's ||e|| from the smaller one's ||e|| (affine)."""
    r2_from_norm_and_nonlinear: float
    """The same with the smaller SAE's ||e_nl|| as a second regressor."""
    fvu_larger: float
    """FVU of the larger SAE on the test tokens."""


@dataclass(frozen=True)
class PursuitResult:
    """Gradient pursuit on the SAE's decoder at each token's own L0 (the SAE's encoder replaced)."""

    l0: float
    fvu_sae: float
    fvu_pursuit: float
    fvu_nonlinear_sae: float
    fvu_nonlinear_pursuit: float
    """FVU of the nonlinear part of the pursuit's error (its own regression on x)."""


@dataclass(frozen=True)
class PreviousLayerResult:
    """An affine map from the previous layer's SAE reconstruction and error to this layer's e_nl,
    fitted on the train tokens and scored on the test tokens."""

    r2: float
    """Pooled R² of the map on the test tokens: the fraction of e_nl it removes."""
    r2_from_activation: float
    """The same for an affine map from the previous layer's raw activation alone (the baseline that
    tells whether splitting it into SAE reconstruction and error adds anything)."""
    fvu_nonlinear: float
    """FVU of e_nl on the test tokens (the ``fvu_nonlinear`` of the whole result)."""
    fvu_nonlinear_after: float
    """FVU of what the map leaves of e_nl."""


@dataclass
class DarkMatterResult(Stored):
    """What :func:`run` measured; tensors go to safetensors, the rest to JSON."""

    name: str
    tokens_train: int
    tokens_test: int
    protocol: str
    """"saekit" or "paper" (see the module docstring)."""
    intercept: bool
    """Whether the error fits had an intercept (False in the paper's protocol)."""
    skip_positions: int
    """Leading positions of each context the activations lacked, as the caller stated."""
    l0: float
    fvu: float
    r2_vector: float
    r2_vector_pooled: float
    r2_norm: float
    fvu_linear: float
    fvu_nonlinear: float
    fvu_plus_linear: float
    r2_per_dim: Tensor
    downstream: dict[str, float] | None = None
    scaling: ScalingResult | None = None
    pursuit: PursuitResult | None = None
    previous: PreviousLayerResult | None = None

    def summary(self) -> dict[str, Any]:
        """The scalar numbers, flat, for tables."""
        keys = ("name", "protocol", "l0", "fvu", "r2_vector", "r2_norm", "fvu_linear", "fvu_nonlinear")
        out: dict[str, Any] = {k: getattr(self, k) for k in keys}
        for key, value in (self.downstream or {}).items():
            out[key] = value
        if self.scaling:
            out["scaling_r2"] = self.scaling.r2_from_norm
            out["scaling_r2_with_nl"] = self.scaling.r2_from_norm_and_nonlinear
        if self.pursuit:
            out["pursuit_fvu"] = self.pursuit.fvu_pursuit
            out["pursuit_fvu_nl"] = self.pursuit.fvu_nonlinear_pursuit
        if self.previous:
            out["prev_layer_r2_nl"] = self.previous.r2
            out["prev_act_r2_nl"] = self.previous.r2_from_activation
        return out

    def plot(self, path: str | Path) -> Path | None:
        plt = pyplot()
        if plt is None:
            return None
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        bars = {"FVU": self.fvu, "linear part": self.fvu_linear, "nonlinear part": self.fvu_nonlinear}
        if self.pursuit:
            bars["nonlinear after\ngradient pursuit"] = self.pursuit.fvu_nonlinear_pursuit
        if self.previous:
            bars["nonlinear after\nprevious-layer map"] = self.previous.fvu_nonlinear_after
        left.bar(list(bars), list(bars.values()), color="tab:blue")
        left.set_ylabel("fraction of variance of x")
        left.set_title(f"{self.name}: SAE error split")
        left.tick_params(axis="x", labelsize=7)
        right.hist(self.r2_per_dim.numpy(), bins=40, color="tab:orange")
        right.axvline(self.r2_vector, color="k", linestyle="--", label=f"mean R² = {self.r2_vector:.2f}")
        right.set_xlabel("R² of the error, per dimension")
        right.legend()
        return save_figure(plt, fig, path)


def error_split(x: Tensor, err: Tensor, split: Split, intercept: bool = True) -> ErrorSplit:
    """Regress ``err`` on ``x`` on the train tokens; linear and nonlinear parts on the test tokens."""
    fit = fit_affine(x[split.train], err[split.train], intercept=intercept)
    xt, et = x[split.test].double(), err[split.test].double()
    e_lin = fit(xt)
    return ErrorSplit(fit, r2_per_dim(et, e_lin), e_lin, et - e_lin)


def total_variance(x: Tensor) -> float:
    x = x.double()
    return float((x - x.mean(0)).pow(2).sum())


def norm_r2(x: Tensor, err: Tensor, split: Split, intercept: bool = True) -> float:
    """R² on the test tokens of an affine (or, without ``intercept``, linear) prediction of ||err||² from x."""
    target = err.double().pow(2).sum(-1)
    fit = fit_affine(x[split.train], target[split.train], intercept=intercept)
    return float(r2_per_dim(target[split.test], fit(x[split.test].double()))[0])


def analyse_error(
    x: Tensor,
    x_hat: Tensor,
    split: Split,
    name: str = "sae",
    l0: float = float("nan"),
    protocol: Protocol = PROTOCOLS["saekit"],
    skip_positions: int | None = None,
) -> DarkMatterResult:
    """The core numbers of the study from activations ``x`` and reconstructions ``x_hat`` [n, d];
    ``skip_positions`` (recorded only; default: the protocol's) says which positions ``x`` lacks."""
    if x.shape != x_hat.shape or x.dim() != 2:
        raise DataError(f"x and x_hat must both be [tokens, d], got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    err = (x.double() - x_hat.double())
    parts = error_split(x, err, split, protocol.intercept)
    xt = x[split.test]
    var = total_variance(xt)
    e_test = err[split.test]
    return DarkMatterResult(
        name=name,
        tokens_train=len(split.train),
        tokens_test=len(split.test),
        protocol=protocol.name,
        intercept=protocol.intercept,
        skip_positions=protocol.skip_positions if skip_positions is None else skip_positions,
        l0=l0,
        fvu=float(e_test.pow(2).sum()) / var,
        r2_vector=float(parts.r2_per_dim.mean()),
        r2_vector_pooled=r2_pooled(e_test, parts.e_lin),
        r2_norm=norm_r2(x, err, split, protocol.intercept),
        fvu_linear=float(parts.e_lin.pow(2).sum()) / var,
        fvu_nonlinear=float(parts.e_nl.pow(2).sum()) / var,
        fvu_plus_linear=float((xt.double() - (x_hat[split.test].double() + parts.e_lin)).pow(2).sum()) / var,
        r2_per_dim=cpu_float(parts.r2_per_dim),
    )


class ScalingR2(NamedTuple):
    """R² of the per-token error-norm regressions of :func:`norm_scaling`."""

    from_norm: float
    with_nonlinear: float


def norm_scaling(small_err: Tensor, small_nl: Tensor, large_err: Tensor) -> ScalingR2:
    """R² (on the test half of the test tokens) of predicting ||large_err|| from ||small_err||, and from
    ||small_err|| and ||small_nl|| together; fit on a random half of the rows, scored on the other."""
    inner = split_tokens(small_err.shape[0], 0.5, seed=1)
    target = large_err.double().norm(dim=-1)
    out = []
    for inputs in (design(small_err.norm(dim=-1)), design(small_err.norm(dim=-1), small_nl.norm(dim=-1))):
        fit = fit_affine(inputs[inner.train], target[inner.train])
        out.append(float(r2_per_dim(target[inner.test], fit(inputs[inner.test]))[0]))
    return ScalingR2(out[0], out[1])


def pursuit_result(
    sae: SAE, x: Tensor, codes: Tensor, x_hat: Tensor, split: Split, base: DarkMatterResult, protocol: Protocol
) -> PursuitResult:
    """Run gradient pursuit at each test token's L0 and split its error like the SAE's."""
    n_atoms = (codes != 0).sum(-1)
    pursued = torch.empty_like(x, dtype=torch.float64)
    for start in range(0, x.shape[0], 4096):
        sl = slice(start, start + 4096)
        pursued[sl] = gradient_pursuit(x[sl], sae.W_dec, sae.b_dec, n_atoms[sl]).x_hat
    gp = analyse_error(x, pursued, split, protocol=protocol)
    return PursuitResult(
        l0=float(n_atoms.double().mean()),
        fvu_sae=base.fvu,
        fvu_pursuit=gp.fvu,
        fvu_nonlinear_sae=base.fvu_nonlinear,
        fvu_nonlinear_pursuit=gp.fvu_nonlinear,
    )


def previous_layer_result(prev_x: Tensor, prev_x_hat: Tensor, e_nl: Tensor, split: Split, test_var: float) -> PreviousLayerResult:
    """Affine map from [x̂_prev, e_prev] to e_nl, fitted on ``split.train`` and scored on ``split.test``
    (all three tensors hold every row; ``test_var``: total variance of x on the test rows).

    The map has 2·d inputs, so it is fitted on the train half, where e_nl is the in-sample residual of
    the error regression: fitting it on part of the test half (the only place an out-of-sample e_nl
    exists) leaves too few tokens per input, and the overfit map scores below zero on real activations."""
    prev_x = prev_x.double()
    prev_err = prev_x - prev_x_hat.double()
    target = e_nl[split.test].double()
    r2 = []
    for inputs in (design(prev_x_hat, prev_err), design(prev_x)):
        fit = fit_affine(inputs[split.train], e_nl[split.train])
        r2.append((r2_pooled(target, fit(inputs[split.test])), target - fit(inputs[split.test])))
    return PreviousLayerResult(
        r2=r2[0][0],
        r2_from_activation=r2[1][0],
        fvu_nonlinear=float(target.pow(2).sum()) / test_var,
        fvu_nonlinear_after=float(r2[0][1].pow(2).sum()) / test_var,
    )


@torch.no_grad()
def run(
    sae: SAE,
    x: Tensor,
    *,
    name: str = "sae",
    test_fraction: float = 0.5,
    seed: int = 0,
    larger: SAE | None = None,
    previous: tuple[SAE, Tensor] | None = None,
    pursuit: bool = True,
    model: nn.Module | LoadedModel | None = None,
    tokens: Tensor | None = None,
    site: str | None = None,
    skip_positions: int | None = None,
    batch_size: int = 8,
    protocol: str = "saekit",
) -> DarkMatterResult:
    """The dark-matter study of ``sae`` on activations ``x`` [tokens, d] (see the module docstring).

    ``protocol``: "saekit" or "paper" (see the module docstring). ``skip_positions``: the leading
    positions of each context that ``x`` lacks and that the downstream splice leaves alone (default:
    the protocol's, 2 or 200), recorded in the result.

    ``larger``: a larger SAE of the same site (per-token scaling). ``previous``: an SAE of the previous
    layer and its activations on the same tokens, row for row. ``model``, ``tokens`` [contexts, T] and
    ``site``: the downstream next-token losses, with the affine map fitted here applied to positions
    ``>= skip_positions`` (which is what ``x`` should hold)."""
    if x.dim() != 2 or x.shape[1] != sae.d_in:
        raise DataError(f"activations must be [tokens, {sae.d_in}], got {tuple(x.shape)}")
    if protocol not in PROTOCOLS:
        raise DataError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    chosen = PROTOCOLS[protocol]
    skip_positions = chosen.skip_positions if skip_positions is None else skip_positions
    x = x.float()
    split = split_tokens(x.shape[0], test_fraction, seed)
    codes, x_hat = encode_rows(sae, x)
    l0 = float((codes[split.test] != 0).sum(-1).double().mean())
    result = analyse_error(x, x_hat, split, name=name, l0=l0, protocol=chosen, skip_positions=skip_positions)
    err = x.double() - x_hat.double()
    parts = error_split(x, err, split, chosen.intercept)
    var = total_variance(x[split.test])

    if larger is not None:
        large_hat = encode_rows(larger, x[split.test]).x_hat
        large_err = x[split.test].double() - large_hat.double()
        r2 = norm_scaling(err[split.test], parts.e_nl, large_err)
        result.scaling = ScalingResult(r2.from_norm, r2.with_nonlinear, float(large_err.pow(2).sum()) / var)
    if pursuit:
        result.pursuit = pursuit_result(sae, x, codes, x_hat, split, result, chosen)
    if previous is not None:
        prev_sae, prev_x = previous
        if prev_x.shape[0] != x.shape[0]:
            raise DataError(f"previous-layer activations have {prev_x.shape[0]} rows, this layer {x.shape[0]}")
        e_nl = err - parts.fit(x.double())  # in-sample residual on the train rows, held-out on the test rows
        result.previous = previous_layer_result(prev_x, encode_rows(prev_sae, prev_x.float()).x_hat, e_nl, split, var)
    if model is not None:
        if tokens is None or site is None:
            raise DataError("the downstream losses need tokens and site as well as the model")
        result.downstream = downstream(model, tokens, site, sae, parts.fit, skip_positions=skip_positions, batch_size=batch_size)
    return result


def downstream(
    model: nn.Module | LoadedModel, tokens: Tensor, site: str, sae: SAE, fit: AffineMap, *, skip_positions: int = 1, batch_size: int = 8
) -> dict[str, float]:
    """Next-token loss increases with the site replaced by x̂, x̂ + e_lin and x̂ + e_nl = x − e_lin."""
    model = as_module(model)
    from saekit.eval.downstream import as_function, downstream_metrics_many

    through = as_function(sae)

    def e_lin(h: Tensor) -> Tensor:
        return fit(h.reshape(-1, h.shape[-1]).double()).reshape(h.shape).to(h.dtype)

    recs = {
        "sae": through,
        "sae_plus_linear": lambda h: through(h) + e_lin(h),
        "sae_plus_nonlinear": lambda h: h - e_lin(h),
    }
    metrics = downstream_metrics_many(model, tokens, site, recs, skip_positions=skip_positions, batch_size=batch_size, progress=True)
    out = {"clean_ce": metrics["sae"].clean_ce}
    for key, m in metrics.items():
        out[f"delta_ce_{key}"] = m.delta_ce
    return out
