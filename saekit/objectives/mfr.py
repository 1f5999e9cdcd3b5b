"""Mutual feature regularisation (Marks, Paren, Krueger & Barez 2024, papers.md §11): SAEs trained side
by side on the same batches, with a penalty that pulls their dictionaries towards each other.

    MMCS_H(A, B) = mean_j cos(a_j, b_π(j)),  π = Hungarian matching of the rows on 1 − cos
    penalty      = coef · w(step) · mean over pairs (a, b) of the members of (1 − MMCS_H(W_dec^a, W_dec^b))
    w(step)      = ½ (1 + cos(π (T_w − step) / T_w)) for step < T_w, else 1      (cosine warm-up from 0)

The matching is recomputed every step without gradient; the cosines of the matched pairs carry the
gradient into both dictionaries. The features are the decoder rows (the official code ties its decoder
to the unit-normed encoder rows; here any architecture's ``W_dec`` is used). Dictionaries of different
sizes match min(d_sae) pairs, averaged over those.

Where this differs from the official trainer: the penalty is added once to the sum of the members'
losses (the official code adds it to each member's loss, which only doubles its gradient for two
SAEs; ``coef`` absorbs that), and its rule re-initialising a whole SAE whose firing rates drift far from
k/F is left out (dead latents are handled by each architecture's own auxiliary loss).

``coef`` is for saekit's normalised activations and per-token summed MSE (the official λ = 3 is for a
per-element mean MSE on unnormalised data). Hungarian matching needs scipy and costs O(d_sae³) per pair
per step: fine to a few thousand latents; ``matching = "max"`` (mean max cosine, no assignment) scales
further.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from saekit.errors import ConfigError
from saekit.objectives import GroupTerm
from saekit.sae.base import SAE
from saekit.strict import to_dict
from saekit.types import LossOut, StepCtx


@dataclass(frozen=True)
class MFRConfig:
    members: tuple[int, ...]
    """Indices (in the run's list of SAEs) of the SAEs pulled together; at least two."""
    coef: float = 0.1
    """λ of the penalty, for normalised activations (official synthetic config: 3 on an unnormalised
    per-element MSE)."""
    warmup_steps: int = 100
    """T_w of the cosine warm-up of the penalty from 0 to coef (official: 100)."""
    matching: Literal["hungarian", "max"] = "hungarian"
    """"hungarian": one-to-one matching of the rows (official, needs scipy); "max": each row of the first
    dictionary against its most similar row of the second (cheaper, not symmetric)."""

    def __post_init__(self) -> None:
        if len(set(self.members)) < 2:
            raise ConfigError(f"mfr: members must name at least two distinct SAEs, got {list(self.members)}")
        if not self.coef >= 0:
            raise ConfigError(f"mfr: coef must be >= 0, got {self.coef}")
        if self.warmup_steps < 0:
            raise ConfigError(f"mfr: warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.matching not in ("hungarian", "max"):
            raise ConfigError(f"mfr: matching must be 'hungarian' or 'max', got {self.matching!r}")


def cosine_warmup(step: int, warmup_steps: int) -> float:
    """w(step) = ½(1 + cos(π (T_w − step)/T_w)) below T_w, 1 from T_w on (0 at step 0)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (warmup_steps - step) / warmup_steps))


def matched_cosine(a: Tensor, b: Tensor, matching: str = "hungarian") -> Tensor:
    """MMCS between the rows of ``a`` [n, d] and ``b`` [m, d]: the mean cosine of matched rows, with
    the matching chosen without gradient and the cosines differentiable."""
    cos = nn.functional.normalize(a, dim=-1) @ nn.functional.normalize(b, dim=-1).T
    if matching == "max":
        return cos.max(dim=1).values.mean()
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("mfr: Hungarian matching needs scipy (pip install scipy), or use matching = 'max'") from exc
    rows, cols = linear_sum_assignment(cos.detach().float().cpu().numpy(), maximize=True)
    index = torch.as_tensor
    return cos[index(rows, device=cos.device), index(cols, device=cos.device)].mean()


class MFR:
    """The MFR penalty as a group term of :class:`saekit.training.objective.LocalObjective`."""

    reads_the_batch = False  # a function of the decoders alone: the same on every rank of a distributed run

    def __init__(self, config: MFRConfig | None = None, **fields) -> None:
        if config is None:
            fields["members"] = tuple(fields.get("members", ()))
            config = MFRConfig(**fields)
        elif fields:
            raise TypeError("give either an MFRConfig or keyword fields, not both")
        self.config = config

    @property
    def members(self) -> tuple[int, ...]:
        return tuple(self.config.members)

    def __call__(self, saes: Sequence[SAE], outs: Sequence[LossOut], ctx: StepCtx) -> GroupTerm:
        pairs = list(itertools.combinations(saes, 2))
        mmcs = torch.stack([matched_cosine(a.W_dec, b.W_dec, self.config.matching) for a, b in pairs]).mean()
        weight = self.config.coef * cosine_warmup(ctx.step, self.config.warmup_steps)
        penalty = weight * (1.0 - mmcs)
        return GroupTerm(penalty, {"mfr": penalty.detach(), "mfr_mmcs": mmcs.detach()})

    def describe(self) -> dict:
        return {"kind": "mfr", **to_dict(self.config)}

    def __repr__(self) -> str:
        return f"MFR({self.config})"
