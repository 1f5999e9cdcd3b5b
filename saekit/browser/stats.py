"""Per-latent statistics of an SAE over a sample of tokens, streamed over batches of activations.

Two passes over the activation rows, each re-encoding one batch at a time so that the dense codes
``[rows, d_sae]`` never exist all at once:

1. a running top-N buffer per latent (``torch.topk`` over the buffer concatenated with the batch's
   codes), the firing count and activation sum, and a uniform random sample of each latent's firings
   (the ``reservoir`` firings with the smallest hash keys), from which the quantile examples are drawn;
2. the activation histogram on ``[0, max]`` (known after pass 1) and the latent's activation at every
   token of the context windows shown around each example.

Rows are the activations of consecutive contexts with their first ``skip`` positions left out:
row ``r`` is context ``r // (context - skip)``, position ``skip + r % (context - skip)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saekit.errors import DataError


class Layout(NamedTuple):
    """How activation rows map to token positions."""

    context: int
    """Tokens per context, BOS included."""
    skip: int
    """Leading positions of each context that have no activation row."""

    @property
    def per_context(self) -> int:
        return self.context - self.skip


@dataclass(frozen=True)
class StatsSettings:
    top_n: int = 20
    """Top-activating examples kept per latent."""
    quantile_bands: int = 4
    """Bands of equal probability mass of a latent's non-zero activations (4: quartiles)."""
    per_band: int = 5
    """Examples shown per quantile band."""
    reservoir: int = 40
    """Random firings sampled per latent; the quantile bands and their examples come from this sample."""
    random_windows: int = 20
    """Windows at uniformly random rows per latent, whatever the latent does there; automated
    interpretability (:mod:`saekit.interpret`) takes its non-activating contexts from those where the
    latent is zero throughout."""
    window_before: int = 10
    """Tokens shown before an example's token."""
    window_after: int = 3
    """Tokens shown after an example's token."""
    histogram_bins: int = 40
    """Bins of the activation histogram, from 0 to the latent's largest activation."""
    seed: int = 0
    """Seed of the hash that samples each latent's firings."""

    def __post_init__(self) -> None:
        for name in ("top_n", "quantile_bands", "per_band", "reservoir", "random_windows", "histogram_bins"):
            if getattr(self, name) < 1:
                raise DataError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.window_before < 0 or self.window_after < 0:
            raise DataError("window_before and window_after must be >= 0")

    @property
    def window(self) -> int:
        return self.window_before + 1 + self.window_after


@dataclass(frozen=True)
class LatentStats:
    """Everything the pages show that depends on the activations; L = d_sae. Missing entries
    (a latent that fired fewer times than there are slots) have value 0 and row -1."""

    n_rows: int
    """Activation rows (tokens) the statistics are over."""
    top_values: Tensor
    """[L, top_n] largest activations, descending."""
    top_rows: Tensor
    """[L, top_n] their rows."""
    quantile_values: Tensor
    """[L, bands, per_band] example activations, ascending by band."""
    quantile_rows: Tensor
    """[L, bands, per_band] their rows."""
    top_windows: Tensor
    """[L, top_n, window] the latent's activation on each token of each top example's window."""
    quantile_windows: Tensor
    """[L, bands, per_band, window] the same for the quantile examples."""
    random_rows: Tensor
    """[L, random_windows] uniformly random rows, drawn per latent from the seed."""
    random_windows: Tensor
    """[L, random_windows, window] the latent's activation on each token of each random row's window."""
    histogram: Tensor
    """[L, bins] counts of non-zero activations in equal bins of [0, max]."""
    fire_count: Tensor
    """[L] rows on which the latent is non-zero."""
    act_sum: Tensor
    """[L] sum of the latent's activations (float64)."""

    @property
    def max_act(self) -> Tensor:
        return self.top_values[:, 0]

    @property
    def density(self) -> Tensor:
        """[L] fraction of rows on which the latent fires."""
        return self.fire_count.double() / max(self.n_rows, 1)

    def tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in _TENSORS}


_TENSORS = (
    "top_values", "top_rows", "quantile_values", "quantile_rows", "top_windows", "quantile_windows",
    "random_rows", "random_windows", "histogram", "fire_count", "act_sum",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Pure building blocks


def merge_topk(values: Tensor, rows: Tensor, codes: Tensor, first_row: int) -> tuple[Tensor, Tensor]:
    """Running top-N: the N largest of ``values`` [L, N] and the batch ``codes`` [b, L], per latent,
    with the rows they came from (the batch's rows are ``first_row + i``)."""
    n = values.shape[1]
    best, where = torch.topk(torch.cat([values, codes.T], dim=1), n, dim=1)
    from_batch = where >= n
    new_rows = torch.where(from_batch, where - n + first_row, rows.gather(1, where.clamp(max=n - 1)))
    return best, new_rows


def firing_keys(rows: Tensor, latents: Tensor, seed: int) -> Tensor:
    """A pseudo-random key in [0, 1) for each (row, latent) firing: a pure function of the three, so
    the sample does not depend on the batch size."""
    mask = 0xFFFFFFFF
    h = (rows.long() * 0x2545F491 + latents.long() * 0x1B873593 + seed * 0x68E31DA4 + 0x7F4A7C15) & mask
    for mult, shift in ((0x5BD1E995, 15), (0x27D4EB2F, 13), (0x165667B1, 16)):
        h = ((h ^ (h >> shift)) * mult) & mask
    h = h ^ (h >> 16)
    return h.double() / 2.0**32


def merge_reservoir(
    keys: Tensor, rows: Tensor, values: Tensor, new_latents: Tensor, new_keys: Tensor, new_rows: Tensor, new_values: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per latent, keep the ``M`` firings with the smallest keys among the buffer ([L, M]; empty slots
    have key +inf) and the new firings (flat, with their latent). Sorting by (latent, key) and ranking
    within each latent does it for all latents at once."""
    n_latents, m = keys.shape
    held = torch.isfinite(keys)
    held_latents = torch.arange(n_latents, device=keys.device).unsqueeze(1).expand_as(keys)[held]
    latents = torch.cat([held_latents, new_latents])
    all_keys = torch.cat([keys[held], new_keys])
    all_rows = torch.cat([rows[held], new_rows])
    all_values = torch.cat([values[held], new_values])
    order = torch.argsort(latents.double() * 2.0 + all_keys)  # keys < 1 keep latents apart
    latents = latents[order]
    rank = torch.arange(len(latents), device=keys.device) - torch.searchsorted(latents, latents)
    keep = rank < m
    slot = (latents[keep], rank[keep])
    out_keys = torch.full_like(keys, float("inf"))
    out_rows = torch.full_like(rows, -1)
    out_values = torch.zeros_like(values)
    out_keys[slot] = all_keys[order][keep]
    out_rows[slot] = all_rows[order][keep]
    out_values[slot] = all_values[order][keep]
    return out_keys, out_rows, out_values


def quantile_examples(keys: Tensor, rows: Tensor, values: Tensor, bands: int, per_band: int) -> tuple[Tensor, Tensor]:
    """From each latent's random sample of firings, ``per_band`` examples spread evenly through each of
    ``bands`` bands of equal mass (by sample rank): [L, bands, per_band] values and rows. A latent with
    fewer sampled firings than slots repeats none: the surplus slots stay empty (0, -1)."""
    n_latents, m = keys.shape
    count = torch.isfinite(keys).sum(1)
    by_value, order = torch.where(torch.isfinite(keys), values, torch.inf).sort(dim=1)
    rows_sorted = rows.gather(1, order)
    frac = (torch.arange(bands).unsqueeze(1) + (torch.arange(per_band).unsqueeze(0) + 0.5) / per_band) / bands
    pos = (frac.to(keys.device).flatten().unsqueeze(0) * count.unsqueeze(1)).floor().long()  # [L, bands * per_band]
    valid = pos < count.unsqueeze(1)
    valid[:, 1:] &= pos[:, 1:] != pos[:, :-1]
    pos = pos.clamp(max=m - 1)
    q_values = torch.where(valid, by_value.gather(1, pos), 0.0)
    q_rows = torch.where(valid, rows_sorted.gather(1, pos), -1)
    return q_values.view(n_latents, bands, per_band), q_rows.view(n_latents, bands, per_band)


def window_rows(example_rows: Tensor, layout: Layout, before: int, after: int) -> Tensor:
    """[..., window] activation rows of the tokens around each example row (-1 where the position is
    outside the context, one of its skipped positions, or the example is empty)."""
    per = layout.per_context
    seq = example_rows.div(per, rounding_mode="floor")
    pos = example_rows % per + layout.skip
    q = pos.unsqueeze(-1) + torch.arange(-before, after + 1, device=example_rows.device)
    ok = (example_rows.unsqueeze(-1) >= 0) & (q >= layout.skip) & (q < layout.context)
    return torch.where(ok, seq.unsqueeze(-1) * per + q - layout.skip, -1)


def window_positions(example_rows: Tensor, layout: Layout, before: int, after: int) -> tuple[Tensor, Tensor]:
    """Context index and token positions [..., window] of each example's window (position -1: outside)."""
    per = layout.per_context
    seq = example_rows.div(per, rounding_mode="floor")
    q = (example_rows % per + layout.skip).unsqueeze(-1) + torch.arange(-before, after + 1)
    inside = (example_rows.unsqueeze(-1) >= 0) & (q >= 0) & (q < layout.context)
    return seq, torch.where(inside, q, -1)


# ---------------------------------------------------------------------------------------------
# The two passes


@torch.no_grad()
def compute_latent_stats(
    encode: Callable[[Tensor], Tensor],
    acts: Tensor,
    d_sae: int,
    layout: Layout,
    settings: StatsSettings = StatsSettings(),
    *,
    batch_size: int = 2048,
    device: str | torch.device = "cpu",
    progress: bool = False,
    label: str = "",
) -> LatentStats:
    """The statistics of the module docstring for ``acts`` [rows, d_in] (rows in the layout's order)."""
    n_rows = acts.shape[0]
    if n_rows == 0 or n_rows % layout.per_context:
        raise DataError(f"{n_rows} activation rows is not a positive multiple of {layout.per_context} rows per context")
    s = settings

    def batches(desc: str) -> Iterator[tuple[int, Tensor]]:
        starts = range(0, n_rows, batch_size)
        for start in tqdm(starts, desc=f"{label} {desc}".strip(), disable=not progress, leave=False):
            codes = encode(acts[start : start + batch_size].to(device)).float()
            if codes.shape[1] != d_sae:
                raise DataError(f"encode returned {codes.shape[1]} latents, expected {d_sae}")
            yield start, codes

    first = _first_pass(batches("pass 1/2"), d_sae, s, torch.device(device))
    generator = torch.Generator().manual_seed(s.seed)
    random_rows = torch.randint(0, n_rows, (d_sae, s.random_windows), generator=generator).to(first.top_rows.device)
    windows, histogram = _second_pass(batches("pass 2/2"), first, random_rows, layout, s)
    n_quantile = s.quantile_bands * s.per_band
    return LatentStats(
        n_rows=n_rows,
        top_values=first.top_values.cpu(),
        top_rows=first.top_rows.cpu(),
        quantile_values=first.quantile_values.cpu(),
        quantile_rows=first.quantile_rows.cpu(),
        top_windows=windows[:, : s.top_n].cpu(),
        quantile_windows=windows[:, s.top_n : s.top_n + n_quantile].reshape(d_sae, s.quantile_bands, s.per_band, s.window).cpu(),
        random_rows=random_rows.cpu(),
        random_windows=windows[:, s.top_n + n_quantile :].cpu(),
        histogram=histogram.view(d_sae, s.histogram_bins).cpu(),
        fire_count=first.fire_count.cpu(),
        act_sum=first.act_sum.cpu(),
    )


class _FirstPass(NamedTuple):
    top_values: Tensor
    top_rows: Tensor
    quantile_values: Tensor
    quantile_rows: Tensor
    fire_count: Tensor
    act_sum: Tensor


def _first_pass(batches: Iterable[tuple[int, Tensor]], d_sae: int, s: StatsSettings, device: torch.device) -> _FirstPass:
    """Top-N buffers, firing counts and sums, and the reservoir sample the quantile examples come from."""
    top_values = torch.zeros(d_sae, s.top_n, device=device, dtype=torch.float32)
    top_rows = torch.full((d_sae, s.top_n), -1, device=device, dtype=torch.long)
    res_keys = torch.full((d_sae, s.reservoir), float("inf"), device=device, dtype=torch.float64)
    res_rows = torch.full((d_sae, s.reservoir), -1, device=device, dtype=torch.long)
    res_values = torch.zeros(d_sae, s.reservoir, device=device, dtype=torch.float32)
    fire_count = torch.zeros(d_sae, device=device, dtype=torch.long)
    act_sum = torch.zeros(d_sae, device=device, dtype=torch.float64)
    for start, codes in batches:
        top_values, top_rows = merge_topk(top_values, top_rows, codes, start)
        r, lat = (codes > 0).nonzero(as_tuple=True)
        v = codes[r, lat]
        fire_count += torch.bincount(lat, minlength=d_sae)
        act_sum.index_add_(0, lat, v.double())
        rows = r + start
        res_keys, res_rows, res_values = merge_reservoir(
            res_keys, res_rows, res_values, lat, firing_keys(rows, lat, s.seed), rows, v
        )
    empty = top_values <= 0
    q_values, q_rows = quantile_examples(res_keys, res_rows, res_values, s.quantile_bands, s.per_band)
    return _FirstPass(top_values.masked_fill(empty, 0.0), top_rows.masked_fill(empty, -1), q_values, q_rows, fire_count, act_sum)


def _second_pass(
    batches: Iterable[tuple[int, Tensor]], first: _FirstPass, random_rows: Tensor, layout: Layout, s: StatsSettings
) -> tuple[Tensor, Tensor]:
    """The activation of every example window's tokens [L, E, W] (E: the top, quantile and random
    examples, in this order), and the histogram counts [L · bins]."""
    # Requests for (row, latent) activations of every window, sorted by row so that each batch
    # answers a contiguous slice of them.
    d_sae, device = first.top_values.shape[0], first.top_values.device
    examples = torch.cat([first.top_rows, first.quantile_rows.flatten(1), random_rows], dim=1)  # [L, E]
    wrows = window_rows(examples, layout, s.window_before, s.window_after)  # [L, E, W]
    wanted = wrows >= 0
    req_rows = wrows[wanted]
    req_lat = torch.arange(d_sae, device=device).view(-1, 1, 1).expand_as(wrows)[wanted]
    order = torch.argsort(req_rows)
    sorted_rows, sorted_lat = req_rows[order], req_lat[order]
    answers = torch.zeros(len(req_rows), device=device, dtype=torch.float32)
    max_act = first.top_values[:, 0]
    histogram = torch.zeros(d_sae * s.histogram_bins, device=device, dtype=torch.long)
    for start, codes in batches:
        lo, hi = torch.searchsorted(sorted_rows, torch.tensor([start, start + len(codes)], device=device)).tolist()
        answers[order[lo:hi]] = codes[sorted_rows[lo:hi] - start, sorted_lat[lo:hi]]
        r, lat = (codes > 0).nonzero(as_tuple=True)
        bins = (codes[r, lat] / max_act[lat] * s.histogram_bins).long().clamp(max=s.histogram_bins - 1)
        histogram += torch.bincount(lat * s.histogram_bins + bins, minlength=d_sae * s.histogram_bins)
    windows = torch.zeros(wrows.shape, device=device, dtype=torch.float32)
    windows[wanted] = answers
    return windows, histogram
