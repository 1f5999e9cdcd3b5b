"""Objectives that need more than one SAE's own batch: several SAEs at once (MFR) or the host model
(end-to-end training).

A *group objective* is a term added to the losses of several SAEs that train side by side in
:func:`saekit.training.engine.run`. The engine computes the members' own losses, adds the group term, and
back-propagates the sum once, so the term's gradient reaches every member. Group objectives must be
pure functions of the members' parameters, their ``LossOut`` and the step: they hold no state of their
own, which keeps exact resume free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from torch import Tensor

from saekit.sae.base import SAE
from saekit.types import LossOut, StepCtx


class GroupTerm(NamedTuple):
    """A group objective's contribution at one step.

    loss:  scalar added once to the sum of the members' losses.
    terms: named detached scalars, logged with every member's metrics.
    """

    loss: Tensor
    terms: dict[str, Tensor]


@runtime_checkable
class GroupObjective(Protocol):
    """A loss term over several SAEs of one run (see the module docstring)."""

    @property
    def members(self) -> tuple[int, ...]:
        """Indices, in the run's list of SAEs, of the SAEs this term couples."""
        ...

    @property
    def reads_the_batch(self) -> bool:
        """Whether the term depends on the batch's rows (through ``outs``): such a term must make its
        batch statistics global (``ctx.comm``) before a distributed run may use it. A term of the
        weights alone is the same on every rank, and needs nothing."""
        ...

    def __call__(self, saes: Sequence[SAE], outs: Sequence[LossOut], ctx: StepCtx) -> GroupTerm:
        """The term for the members ``saes`` (in ``members`` order) and their losses ``outs``."""
        ...

    def describe(self) -> dict:
        """JSON-ready settings, part of the run's fingerprint (a resume must use the same ones)."""
        ...


__all__ = ["GroupObjective", "GroupTerm"]
