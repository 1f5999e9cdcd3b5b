"""What a training step minimises: the one interface between the engine and an objective.

The engine (:mod:`saekit.training.engine`) owns everything that is the same for every objective:
the data stream, normalisation, optimisers, schedules, dead-latent counters, precision, checkpoints,
logs and provenance. An :class:`Objective` says which SAEs back-propagate together (its *units*) and
computes one unit's loss from a batch:

* :class:`LocalObjective` (the default): each SAE's own ``loss`` on its site's activations, plus any
  *group terms* over several SAEs (mutual feature regularisation), whose members then form one unit;
* :class:`saekit.objectives.e2e.E2EObjective`: the SAE's reconstruction spliced into the model it
  came from, KL of the next-token distributions (and later activations for e2e+ds).

A new objective is one class with these three methods; it never touches the loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from torch import Tensor

from saekit.comm import Comm
from saekit.errors import ConfigError
from saekit.objectives import GroupObjective
from saekit.types import ActBatch, LossOut, StepCtx

if TYPE_CHECKING:
    from saekit.training.run_state import Run


@dataclass(frozen=True)
class Unit:
    """SAEs trained with one backward pass: one SAE alone, or the members of linked group terms."""

    members: tuple[int, ...]
    groups: tuple[GroupObjective, ...] = ()


class UnitLoss(NamedTuple):
    """One unit's loss at one step: ``loss`` is back-propagated once; ``outs`` holds each member's
    ``LossOut`` (with the objective's own terms merged into its logged ``terms``)."""

    loss: Tensor
    outs: dict[int, LossOut]


class Objective(Protocol):
    """What the engine asks of an objective (see the module docstring)."""

    prefetch: bool
    """Whether the batch stream may be read ahead on another thread (False when the objective runs the
    source's own model, whose hooks cannot be shared between threads)."""

    @property
    def distributable(self) -> bool:
        """Whether a data-parallel run (:mod:`saekit.training.distributed`) computes this objective's
        loss as one process does."""
        ...

    def units(self, n_saes: int) -> list[Unit]:
        """The run's SAEs ``0..n_saes-1`` split into units, ordered by their first member."""
        ...

    def unit_loss(self, run: Run, unit: Unit, batch: Mapping[str, ActBatch], ctxs: Mapping[int, StepCtx]) -> UnitLoss:
        """The loss of ``unit`` on ``batch``; ``run.inputs(i, batch)`` gives SAE i its normalised input."""
        ...

    def describe(self) -> dict:
        """JSON-ready settings: part of the run's fingerprint (a resume must use the same ones) and of
        each SAE's provenance."""
        ...

    def shard(self, batch: Mapping[str, ActBatch], comm: Comm) -> Mapping[str, ActBatch]:
        """This rank's equal part of a global batch in a distributed run (rows, or whole contexts)."""
        ...

    def session(self) -> contextlib.AbstractContextManager[None]:
        """Entered around the training steps (e.g. the host model's parameters frozen)."""
        ...


class LocalObjective:
    """Each SAE's own loss on its site (the default), plus group terms over several SAEs."""

    prefetch = True

    def __init__(self, groups: Sequence[GroupObjective] = ()) -> None:
        self.groups = tuple(groups)

    @property
    def distributable(self) -> bool:
        return not any(group.reads_the_batch for group in self.groups)

    def shard(self, batch: Mapping[str, ActBatch], comm: Comm) -> Mapping[str, ActBatch]:
        return shard_rows(batch, comm)

    def units(self, n_saes: int) -> list[Unit]:
        return training_units(n_saes, self.groups)

    def unit_loss(self, run: Run, unit: Unit, batch: Mapping[str, ActBatch], ctxs: Mapping[int, StepCtx]) -> UnitLoss:
        outs: dict[int, LossOut] = {}
        with run.autocast():
            for i in unit.members:
                outs[i] = run.saes[i].loss(run.inputs(i, batch), ctxs[i])
        loss = sum(outs[i].loss.float() for i in unit.members)
        for group in unit.groups:
            with run.autocast():
                term = group([run.saes[m] for m in group.members], [outs[m] for m in group.members], ctxs[group.members[0]])
            loss = loss + term.loss.float()
            for m in group.members:
                outs[m] = outs[m]._replace(terms={**outs[m].terms, **term.terms})
        assert isinstance(loss, Tensor)
        return UnitLoss(loss, outs)

    def describe(self) -> dict:
        return {"groups": [g.describe() for g in self.groups]} if self.groups else {}

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        yield


def training_units(n_saes: int, groups: Sequence[GroupObjective]) -> list[Unit]:
    """Split SAEs ``0..n_saes-1`` into units: SAEs linked through any chain of shared group terms
    train together; the rest alone. Units are ordered by their first member."""
    parent = list(range(n_saes))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for j, group in enumerate(groups):
        members = tuple(group.members)
        if len(set(members)) < 2 or any(not 0 <= m < n_saes for m in members):
            raise ConfigError(
                f"group objective {j} ({type(group).__name__}) must name at least two distinct SAEs "
                f"among 0..{n_saes - 1}, got {list(members)}"
            )
        for m in members[1:]:
            parent[root(m)] = root(members[0])
    linked: dict[int, list[int]] = {}
    for i in range(n_saes):
        linked.setdefault(root(i), []).append(i)
    return [
        Unit(tuple(members), tuple(g for g in groups if root(g.members[0]) == root(members[0])))
        for members in sorted(linked.values())
    ]


def shard_rows(batch: Mapping[str, ActBatch], comm: Comm) -> dict[str, ActBatch]:
    """This rank's equal slice of the rows of a global batch (every site, gradients alongside)."""
    rows = comm.rows(next(iter(batch.values())).x.shape[0])
    return {site: ActBatch(b.x[rows], None if b.grad is None else b.grad[rows]) for site, b in batch.items()}
