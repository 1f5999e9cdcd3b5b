"""Seed stability (Paulo & Belrose, arXiv 2501.16615; papers.md §5): SAEs that differ only in their
initialisation seed, trained on the same stream, matched latent for latent.

For every pair of SAEs of one group (same architecture and hyper-parameters), the decoder rows are
matched one-to-one by the Hungarian algorithm on cosine similarity. A latent is *shared* when its
matched decoder cosine is at least ``threshold`` (0.7 in the paper); the others are *orphans*. The
encoder directions (columns of W_enc) of the same pairs are compared too, and a separate Hungarian
matching on the encoders is reported.

Training is not done here (analysis never imports the training loop): :func:`seed_suite` builds the
SAEs, ``saekit.train(list_of_saes, source)`` trains them side by side on one stream, and :func:`run`
compares them. ``saekit analyse seeds`` does all three.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saekit.analysis.matching import match_cosine, paired_cosine, similarity_stats
from saekit.analysis.store import Stored, cpu_float
from saekit.errors import DataError
from saekit.eval.plots import pyplot, save_figure
from saekit.sae.base import SAE
from saekit.sae.registry import build


@dataclass(frozen=True)
class PairResult:
    """One pair of seeds of one group."""

    seeds: list[int]
    decoder_shared: float
    """Fraction of latents whose Hungarian-matched decoder cosine is >= threshold."""
    decoder_mean: float
    encoder_shared_same_pairs: float
    """Fraction whose encoder cosine, for the decoder-matched pairs, is >= threshold."""
    both_shared: float
    """Fraction shared by both decoder and encoder (decoder-matched pairs)."""
    encoder_shared: float
    """Fraction shared under a Hungarian matching of the encoders themselves."""
    orphans: int
    """Latents of the first SAE with matched decoder cosine below the threshold."""


@dataclass(frozen=True)
class GroupResult:
    """All seed pairs of one group, and the histogram of matched decoder cosines over them."""

    name: str
    d_sae: int
    n_seeds: int
    shared_fraction: float
    """Mean decoder shared fraction over pairs."""
    shared_fraction_std: float
    mean_cosine: float
    encoder_shared_fraction: float
    orphan_fraction: float
    pairs: list[PairResult]
    hist_counts: list[int]
    hist_edges: list[float]
    matched_cosines: Tensor
    """[pairs · d_sae] matched decoder cosines, pair by pair."""


@dataclass
class SeedStabilityResult(Stored):
    threshold: float
    groups: list[GroupResult]

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "group": g.name,
                "d_sae": g.d_sae,
                "seeds": g.n_seeds,
                "shared": g.shared_fraction,
                "shared_std": g.shared_fraction_std,
                "mean_cos": g.mean_cosine,
                "encoder_shared": g.encoder_shared_fraction,
                "orphans": g.orphan_fraction,
            }
            for g in self.groups
        ]

    def plot(self, path: str | Path) -> Path | None:
        plt = pyplot()
        if plt is None:
            return None
        fig, ax = plt.subplots(figsize=(7, 4))
        for g in self.groups:
            edges = torch.tensor(g.hist_edges)
            centres = ((edges[1:] + edges[:-1]) / 2).numpy()
            total = max(sum(g.hist_counts), 1)
            ax.plot(centres, [c / total for c in g.hist_counts], drawstyle="steps-mid", label=f"{g.name}: {g.shared_fraction:.0%} shared")
        ax.axvline(self.threshold, color="k", linestyle="--", linewidth=1)
        ax.set_xlabel("cosine of Hungarian-matched decoder directions across seeds")
        ax.set_ylabel("fraction of latents")
        ax.legend()
        return save_figure(plt, fig, path)


def seed_suite(architecture: str, *, d_in: int, d_sae: int, seeds: Sequence[int], **hparams: Any) -> list[SAE]:
    """SAEs identical but for their initialisation seed (train them together with ``saekit.train``)."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise DataError(f"seed stability needs at least two distinct seeds, got {list(seeds)}")
    saes = []
    for seed in seeds:
        sae = build(architecture, d_in=d_in, d_sae=d_sae, seed=seed, **hparams)
        sae.metadata["init_seed"] = seed
        saes.append(sae)
    return saes


class PairComparison(NamedTuple):
    """A pair's numbers and its [d_sae] matched decoder cosines."""

    pair: PairResult
    cosines: Tensor


def compare_pair(a: SAE, b: SAE, threshold: float) -> PairComparison:
    """Hungarian-match the decoder rows (and separately the encoder columns) of two SAEs."""
    if a.W_dec.shape != b.W_dec.shape:
        raise DataError(f"seed pairs must have the same shape, got {tuple(a.W_dec.shape)} and {tuple(b.W_dec.shape)}")
    dec = match_cosine(a.W_dec, b.W_dec)
    enc_same = paired_cosine(a.W_enc.T[dec.rows], b.W_enc.T[dec.cols])
    enc = match_cosine(a.W_enc.T, b.W_enc.T)
    dec_ok, enc_ok = dec.score >= threshold, enc_same >= threshold
    pair = PairResult(
        seeds=[int(a.metadata.get("init_seed", -1)), int(b.metadata.get("init_seed", -1))],
        decoder_shared=float(dec_ok.double().mean()),
        decoder_mean=float(dec.score.mean()),
        encoder_shared_same_pairs=float(enc_ok.double().mean()),
        both_shared=float((dec_ok & enc_ok).double().mean()),
        encoder_shared=float((enc.score >= threshold).double().mean()),
        orphans=int((~dec_ok).sum()),
    )
    return PairComparison(pair, dec.score)


@torch.no_grad()
def run(groups: Mapping[str, Sequence[SAE]], threshold: float = 0.7, bins: int = 40) -> SeedStabilityResult:
    """Compare every pair of SAEs within each group (e.g. ``{"topk": [seed0, seed1], "relu": [...]}``)."""
    if not groups:
        raise DataError("no groups of SAEs to compare")
    out = []
    for name, saes in groups.items():
        if len(saes) < 2:
            raise DataError(f"group {name!r} has {len(saes)} SAE(s); seed stability needs at least two")
        pairs, cosines = [], []
        for a, b in itertools.combinations(saes, 2):
            pair, cos = compare_pair(a, b, threshold)
            pairs.append(pair)
            cosines.append(cos)
        all_cos = torch.cat(cosines)
        stats = similarity_stats(all_cos, threshold, bins)
        shared = torch.tensor([p.decoder_shared for p in pairs], dtype=torch.float64)
        d_sae = saes[0].d_sae
        out.append(
            GroupResult(
                name=name,
                d_sae=d_sae,
                n_seeds=len(saes),
                shared_fraction=float(shared.mean()),
                shared_fraction_std=float(shared.std()) if len(pairs) > 1 else 0.0,
                mean_cosine=stats.mean,
                encoder_shared_fraction=sum(p.encoder_shared for p in pairs) / len(pairs),
                orphan_fraction=sum(p.orphans for p in pairs) / (len(pairs) * d_sae),
                pairs=pairs,
                hist_counts=stats.hist_counts,
                hist_edges=stats.hist_edges,
                matched_cosines=cpu_float(all_cos),
            )
        )
    return SeedStabilityResult(threshold=threshold, groups=out)
