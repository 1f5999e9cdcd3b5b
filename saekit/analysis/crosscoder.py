"""What a crosscoder's latents share between its sites (Lindsey et al. 2024, "Sparse Crosscoders for
Cross-Layer Features and Model Diffing"; papers.md).

A crosscoder's latent ``i`` writes one decoder vector per site, ``W_dec^s[i]``. Its per-site norms say
where it lives. For two sites ``a`` and ``b`` (a base and a fine-tuned model, two checkpoints, two
layers) the paper's *relative norm*

    r_i = ||W_dec^b[i]|| / (||W_dec^a[i]|| + ||W_dec^b[i]||)

is about 0 for a latent exclusive to ``a``, 1 for one exclusive to ``b`` and 0.5 for a shared one, and
the cosine between a shared latent's two vectors says whether it writes the same direction at both.
Over more sites, each latent's *share* at each site (its norm there over the sum of its norms) and the
number of sites it writes to (share >= ``writes_at``) describe the same thing.

Norms are measured in the units of training, where each site was scaled to unit mean squared norm
(``metadata["normalization_factors"]``): there, unlike in raw units, a site whose activations are ten
times larger does not make every latent look exclusive to it. Latents whose decoder vectors are all
zero are left out; a latent that never fired keeps its initial decoder, about equally long at every
site, and so reads as shared (judge sharing on a crosscoder with few dead latents).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.analysis.store import Stored
from saekit.errors import DataError
from saekit.eval.plots import pyplot, save_figure
from saekit.sae import functional as F
from saekit.sae.base import SAE


def site_norms(sae: SAE) -> Tensor:
    """[d_sae, n_sites] each latent's decoder norm at each of the crosscoder's sites, in the units of
    training (each site's block multiplied back by its normalisation factor, when the SAE records them)."""
    if not sae.crosscoder:
        raise DataError(f"this {sae.architecture} SAE reads one site; a crosscoder names several (metadata['sites'])")
    n = len(sae.sites)
    W = sae.W_dec.detach().float().cpu()
    factors = sae.metadata.get("normalization_factors")
    if factors is not None:
        W = W * torch.tensor(factors, dtype=W.dtype).repeat_interleave(sae.d_in // n)
    return F.site_norms(W, n)


def relative_norm(norms: Tensor, a: int, b: int) -> Tensor:
    """[d_sae] ``||d_b|| / (||d_a|| + ||d_b||)`` from per-site ``norms`` [d_sae, n_sites] (NaN where both are 0)."""
    return norms[:, b] / (norms[:, a] + norms[:, b])


@dataclass
class CrosscoderResult(Stored):
    """The per-site norms of a crosscoder's latents and what they say about sharing."""

    sites: list[str]
    pair: list[str]
    """The two sites compared by the relative norm (default the first and the last)."""
    exclusive_below: float
    shared_between: list[float]
    writes_at: float
    alive: int
    """Latents with a non-zero decoder; the counts below are over them."""
    exclusive_a: int
    """Latents with relative norm below ``exclusive_below``: writing (almost) only to ``pair[0]``."""
    exclusive_b: int
    """Latents with relative norm above 1 − ``exclusive_below``."""
    shared: int
    """Latents with relative norm within ``shared_between``."""
    shared_cosine_median: float
    """Median cosine between the two decoder vectors of the shared latents (NaN when there are none)."""
    sites_written: list[int]
    """How many latents write to 1, 2, ..., n_sites sites (share >= ``writes_at``)."""
    norms: Tensor
    """[d_sae, n_sites] decoder norms per site, in the units of training."""
    relative: Tensor
    """[d_sae] relative norm of ``pair`` (NaN for latents with no decoder)."""
    cosines: Tensor
    """[d_sae] cosine between each latent's decoder vectors at the two sites of ``pair``."""

    def summary(self) -> dict[str, Any]:
        return {
            "sites": " vs ".join(self.pair),
            "alive": self.alive,
            f"exclusive to {self.pair[0]}": self.exclusive_a,
            "shared": self.shared,
            f"exclusive to {self.pair[1]}": self.exclusive_b,
            "shared cosine (median)": round(self.shared_cosine_median, 3),
        }

    def plot(self, path: str | Path) -> Path | None:
        plt = pyplot()
        if plt is None:
            return None
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        r = self.relative[~torch.isnan(self.relative)]
        left.hist(r.numpy(), bins=50, range=(0.0, 1.0), color="tab:blue")
        left.set_title(f"a = {self.pair[0]}\nb = {self.pair[1]}", fontsize=8, loc="left")
        left.set_xlabel("relative decoder norm ||d_b|| / (||d_a|| + ||d_b||)  (0: only a, 1: only b)")
        left.set_ylabel("latents")
        left.set_yscale("log")
        counts = range(1, len(self.sites_written) + 1)
        right.bar(counts, self.sites_written, color="tab:green")
        right.set_xticks(list(counts))
        right.set_xlabel(f"sites a latent writes to (share of its decoder norm >= {self.writes_at:g})")
        right.set_ylabel("latents")
        return save_figure(plt, fig, path)


def analyse(
    sae: SAE,
    *,
    pair: tuple[str, str] | None = None,
    exclusive_below: float = 0.1,
    shared_between: tuple[float, float] = (0.3, 0.7),
    writes_at: float = 0.1,
) -> CrosscoderResult:
    """The sharing of ``sae``'s latents between its sites; ``pair`` names the two compared by the
    relative norm (default: its first and last site)."""
    norms = site_norms(sae)
    sites = list(sae.sites)
    a, b = (0, len(sites) - 1) if pair is None else (_index(sites, pair[0]), _index(sites, pair[1]))
    if a == b:
        raise DataError(f"the relative norm compares two different sites, got {sites[a]!r} twice")
    if not 0 < exclusive_below < shared_between[0] < shared_between[1] < 1 - exclusive_below:
        raise DataError(
            f"need 0 < exclusive_below < shared_between[0] < shared_between[1] < 1 - exclusive_below, got "
            f"{exclusive_below}, {list(shared_between)}"
        )
    alive = norms.sum(-1) > 0
    relative = relative_norm(norms, a, b)
    relative[~alive] = float("nan")
    n = len(sites)
    width = sae.d_in // n
    W = sae.W_dec.detach().float().cpu().reshape(sae.d_sae, n, width)
    cosines = torch.nn.functional.cosine_similarity(W[:, a], W[:, b], dim=-1)
    shared = alive & (relative >= shared_between[0]) & (relative <= shared_between[1])
    share = norms[alive] / norms[alive].sum(-1, keepdim=True)
    written = (share >= writes_at).sum(-1)
    return CrosscoderResult(
        sites=sites,
        pair=[sites[a], sites[b]],
        exclusive_below=exclusive_below,
        shared_between=list(shared_between),
        writes_at=writes_at,
        alive=int(alive.sum()),
        exclusive_a=int((alive & (relative < exclusive_below)).sum()),
        exclusive_b=int((alive & (relative > 1 - exclusive_below)).sum()),
        shared=int(shared.sum()),
        shared_cosine_median=float(cosines[shared].median()) if bool(shared.any()) else float("nan"),
        sites_written=[int((written == k).sum()) for k in range(1, n + 1)],
        norms=norms,
        relative=relative,
        cosines=cosines,
    )


def _index(sites: list[str], site: str) -> int:
    if site not in sites:
        raise DataError(f"site {site!r} is not one of the crosscoder's sites {sites}")
    return sites.index(site)
