"""Activations with planted ground truth: sparse Zipfian codes on random unit directions.

The generic linear-superposition generator of Toy Models of Superposition and MFR (papers.md §C4, §11):

    x   = Σ_i c_i · f_i + ε         f_i ∈ R^d unit rows of ``true_features``, ε ~ N(0, noise_std² I)
    c_i = a_i · m_i                 a_i ~ Bernoulli(p_i), m_i ~ U[magnitude_min, magnitude_max]
    p_i ∝ (i + 1)^(−zipf_exponent)  scaled so that Σ_i p_i = mean_active

so feature 0 is the most frequent and the expected number of active features per token is
``mean_active``. When scaling would push a probability above 1, the most frequent features are capped
at 1 and the rest rescaled (water-filling), which keeps both the expectation and the Zipf order.

Correlated groups: features ``g·group_size … (g+1)·group_size − 1`` form group ``g`` (consecutive ranks,
so members have similar frequencies). Feature i fires when ``u < p_i``; a grouped feature takes its
``u`` from a uniform shared by the whole group with probability √group_correlation, otherwise from its
own. Each marginal p_i is unchanged, members fire together more often than independently, and two
members with equal p have firing indicators with Pearson correlation exactly ``group_correlation``.

Randomness: the directions depend only on ``config.seed``; training batch ``i`` of ``batches(seed=s)``
only on ``(s, i)``; the evaluation stream of ``sample`` / ``iter_rows`` on its own seed, drawn from a
stream disjoint from the training batches so an evaluation set never repeats training data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saekit.errors import ConfigError, DataError
from saekit.sources.order import seeded_generator
from saekit.sources.tensor import _check_positive
from saekit.strict import from_dict, to_dict
from saekit.types import ActBatch

# Tags that keep the three random streams apart.
_DIRECTIONS, _TRAIN, _EVAL = 0, 1, 2
EVAL_BLOCK = 4096
"""Rows per independently seeded block of the evaluation stream: ``sample(n)`` is the first n rows of
the blocks, so it does not depend on the chunk size anything is read with."""


@dataclass(frozen=True)
class SyntheticConfig:
    d: int = 64
    """Width of the activations."""
    n_features: int = 512
    """Number of ground-truth features (directions)."""
    mean_active: float = 5.0
    """Expected number of active features per token."""
    zipf_exponent: float = 1.0
    """Firing probability of feature i is proportional to (i + 1)^-zipf_exponent; 0 gives uniform."""
    magnitude_min: float = 0.5
    """Lower end of the uniform distribution of an active feature's coefficient."""
    magnitude_max: float = 1.5
    """Upper end of that distribution; equal to magnitude_min for constant coefficients."""
    n_groups: int = 0
    """Number of correlated groups (0: all features independent)."""
    group_size: int = 0
    """Features per group; groups are consecutive blocks of features starting at feature 0."""
    group_correlation: float = 0.0
    """Correlation in [0, 1] of the firing of two group members with the same firing probability."""
    noise_std: float = 0.0
    """Standard deviation of dense Gaussian noise added to every coordinate."""
    seed: int = 0
    """Seed of the true directions (batches take their own seed)."""
    site: str = "synthetic"
    """Name of the single site the source yields."""

    def __post_init__(self) -> None:
        checks = [
            (self.d >= 1, f"d must be >= 1, got {self.d}"),
            (self.n_features >= 1, f"n_features must be >= 1, got {self.n_features}"),
            (
                0 < self.mean_active <= self.n_features,
                f"mean_active must be in (0, n_features={self.n_features}], got {self.mean_active}",
            ),
            (self.zipf_exponent >= 0, f"zipf_exponent must be >= 0, got {self.zipf_exponent}"),
            (
                0 <= self.magnitude_min <= self.magnitude_max and self.magnitude_max > 0,
                f"need 0 <= magnitude_min <= magnitude_max and magnitude_max > 0, "
                f"got [{self.magnitude_min}, {self.magnitude_max}]",
            ),
            (self.n_groups >= 0 and self.group_size >= 0, "n_groups and group_size must be >= 0"),
            (
                self.n_groups * self.group_size <= self.n_features,
                f"n_groups * group_size = {self.n_groups * self.group_size} exceeds n_features = {self.n_features}",
            ),
            (0 <= self.group_correlation <= 1, f"group_correlation must be in [0, 1], got {self.group_correlation}"),
            (
                self.group_correlation == 0 or self.n_groups * self.group_size > 0,
                "group_correlation > 0 needs n_groups > 0 and group_size > 0",
            ),
            (self.noise_std >= 0, f"noise_std must be >= 0, got {self.noise_std}"),
            (bool(self.site), "site must be a non-empty name"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"SyntheticConfig: {message}")


class SyntheticSample(NamedTuple):
    """Activations with the codes that made them.

    x:     [n, d] activations.
    codes: [n, n_features] ground-truth coefficients (0 where a feature is inactive).
    """

    x: Tensor
    codes: Tensor


def zipf_probabilities(n_features: int, exponent: float, mean_active: float) -> Tensor:
    """Firing probabilities p_i ∝ (i+1)^-exponent with Σ p_i = mean_active and every p_i <= 1.

    Features whose scaled probability would exceed 1 are capped at 1 and the remaining mass is spread
    over the others in proportion to their Zipf weight. Returns float64 [n_features], non-increasing.
    """
    if not 0 < mean_active <= n_features:
        raise ValueError(f"mean_active must be in (0, {n_features}], got {mean_active}")
    weights = torch.arange(1, n_features + 1, dtype=torch.float64).pow(-exponent)
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = Σ_{i >= k} w_i
    for n_capped in range(n_features):
        scale = (mean_active - n_capped) / float(tail[n_capped])
        if scale * float(weights[n_capped]) <= 1:
            break
    probs = (scale * weights).clamp(max=1.0)
    probs[:n_capped] = 1.0
    return probs


class SyntheticSource:
    """An :class:`~saekit.types.ActivationSource` with known features; see the module docstring."""

    def __init__(self, config: SyntheticConfig | None = None, **fields: Any) -> None:
        """``SyntheticSource(cfg)``, ``SyntheticSource(d=16, n_features=64)``, or a config plus overrides."""
        base = config or SyntheticConfig()
        self.config = from_dict(SyntheticConfig, {**to_dict(base), **fields}) if fields else base
        cfg = self.config
        directions = torch.randn(cfg.n_features, cfg.d, generator=seeded_generator(_DIRECTIONS, cfg.seed))
        self._features = directions / directions.norm(dim=1, keepdim=True)
        self._probs = zipf_probabilities(cfg.n_features, cfg.zipf_exponent, cfg.mean_active)
        self._n_grouped = cfg.n_groups * cfg.group_size if cfg.group_correlation > 0 else 0
        self._share_prob = math.sqrt(cfg.group_correlation)

    # ------------------------------------------------------------------ ground truth

    @property
    def true_features(self) -> Tensor:
        """[n_features, d] unit-norm feature directions (a copy)."""
        return self._features.clone()

    @property
    def firing_probabilities(self) -> Tensor:
        """[n_features] probability that each feature is active on a token (a copy)."""
        return self._probs.clone()

    # ------------------------------------------------------------------ ActivationSource protocol

    @property
    def sites(self) -> tuple[str, ...]:
        return (self.config.site,)

    def d_in(self, site: str) -> int:
        self._check_site(site)
        return self.config.d

    def batches(self, batch_size: int, *, seed: int, start: int = 0) -> Iterator[Mapping[str, ActBatch]]:
        """Endless training batches; batch i depends only on (seed, i), so ``start`` resumes exactly."""
        _check_positive(batch_size, "batch_size")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        return ({self.config.site: ActBatch(self.batch(i, batch_size, seed=seed).x)} for i in itertools.count(start))

    def describe(self) -> dict:
        return {"kind": "synthetic", **to_dict(self.config)}

    # ------------------------------------------------------------------ sampling

    def batch(self, index: int, batch_size: int, *, seed: int) -> SyntheticSample:
        """Training batch number ``index`` of ``batches(batch_size, seed=seed)``, with its true codes."""
        return self._generate(batch_size, seeded_generator(_TRAIN, seed, index))

    def sample(self, n: int, *, seed: int = 0) -> Tensor:
        """[n, d] evaluation activations (disjoint from every training batch)."""
        return self.sample_with_codes(n, seed=seed).x

    def sample_with_codes(self, n: int, *, seed: int = 0) -> SyntheticSample:
        """The first ``n`` rows of the evaluation stream ``seed``, with their true codes."""
        _check_positive(n, "n")
        parts = list(itertools.islice(self._eval_blocks(seed), math.ceil(n / EVAL_BLOCK)))
        return SyntheticSample(torch.cat([p.x for p in parts])[:n], torch.cat([p.codes for p in parts])[:n])

    def iter_rows(
        self, batch_size: int, *, site: str | None = None, max_rows: int | None = None, seed: int = 0
    ) -> Iterator[Tensor]:
        """The first ``max_rows`` rows of the evaluation stream ``seed`` in chunks of ``batch_size``;
        their concatenation equals ``sample(max_rows, seed=seed)`` whatever the chunk size."""
        _check_positive(batch_size, "batch_size")
        if site is not None:
            self._check_site(site)
        if max_rows is None:
            raise ValueError("a synthetic source is endless: give the number of rows to read (max_rows / max_tokens)")
        _check_positive(max_rows, "max_rows")
        return _rechunk((block.x for block in self._eval_blocks(seed)), batch_size, max_rows)

    # ------------------------------------------------------------------ internals

    def _eval_blocks(self, seed: int) -> Iterator[SyntheticSample]:
        return (self._generate(EVAL_BLOCK, seeded_generator(_EVAL, seed, j)) for j in itertools.count())

    def _generate(self, n: int, gen: torch.Generator) -> SyntheticSample:
        cfg = self.config
        u = torch.rand(n, cfg.n_features, generator=gen)
        if self._n_grouped:
            shared = torch.rand(n, cfg.n_groups, generator=gen).repeat_interleave(cfg.group_size, dim=1)
            use_shared = torch.rand(n, self._n_grouped, generator=gen) < self._share_prob
            u[:, : self._n_grouped] = torch.where(use_shared, shared, u[:, : self._n_grouped])
        active = u < self._probs
        magnitude = torch.empty(n, cfg.n_features).uniform_(cfg.magnitude_min, cfg.magnitude_max, generator=gen)
        codes = torch.where(active, magnitude, torch.zeros(()))
        x = codes @ self._features
        if cfg.noise_std > 0:
            x = x + cfg.noise_std * torch.randn(n, cfg.d, generator=gen)
        return SyntheticSample(x, codes)

    def _check_site(self, site: str) -> None:
        if site != self.config.site:
            raise DataError(f"synthetic source has no site {site!r}; its site is {self.config.site!r}")

    def __repr__(self) -> str:
        return f"SyntheticSource({self.config})"


def _rechunk(blocks: Iterator[Tensor], batch_size: int, total: int) -> Iterator[Tensor]:
    """Re-cut a stream of row blocks into chunks of ``batch_size`` rows, stopping after ``total`` rows."""
    buffer: Tensor | None = None  # rows received but not yet emitted
    emitted = 0
    for block in blocks:
        buffer = block if buffer is None else torch.cat([buffer, block])
        start = 0
        while emitted < total:
            size = min(batch_size, total - emitted)
            if buffer.shape[0] - start < size:
                break
            yield buffer[start : start + size]
            start, emitted = start + size, emitted + size
        if emitted >= total:
            return
        buffer = buffer[start:]
