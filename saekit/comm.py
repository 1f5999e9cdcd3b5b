"""The collective operations over the ranks of a distributed run that the engine and the
architectures need, and :data:`LOCAL`, the one-process run's, whose operations do nothing. Whatever
couples the rows of a batch (BatchTopK's and Feature Choice's selections, AuxK's variance, the
dead-latent counters) goes through the step's :class:`Comm` (``StepCtx.comm``), so that W ranks each
holding a slice of the batch compute what one process computes on all of it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from saekit.errors import ConfigError, DistributedError


@dataclass(frozen=True)
class Comm:
    """The collectives over the ranks of a run; with one rank every operation returns its input."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum_(self, t: Tensor) -> Tensor:
        """``t`` summed over ranks, in place."""
        return self._reduce_(t, torch.distributed.ReduceOp.SUM)

    def max_(self, t: Tensor) -> Tensor:
        """``t``'s elementwise maximum over ranks, in place."""
        return self._reduce_(t, torch.distributed.ReduceOp.MAX)

    def min_(self, t: Tensor) -> Tensor:
        """``t``'s elementwise minimum over ranks, in place."""
        return self._reduce_(t, torch.distributed.ReduceOp.MIN)

    def _reduce_(self, t: Tensor, op: torch.distributed.ReduceOp.RedOpType) -> Tensor:
        if self.distributed:
            with _collective(self, "all_reduce"):
                torch.distributed.all_reduce(t, op=op)
        return t

    def gather(self, t: Tensor) -> Tensor:
        """Every rank's ``t`` (equal shapes), concatenated along dim 0 in rank order."""
        if not self.distributed:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        with _collective(self, "all_gather"):
            torch.distributed.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def average_grads_(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over ranks (one collective for all of them)."""
        if not self.distributed:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.sum_(flat).div_(self.world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_(self, t: Tensor) -> Tensor:
        """Rank 0's ``t`` on every rank, in place."""
        if self.distributed:
            with _collective(self, "broadcast"):
                torch.distributed.broadcast(t, src=0)
        return t

    def gather_bytes(self, data: bytes, *, to_all: bool = False) -> list[bytes] | None:
        """Every rank's ``data`` (any lengths) in rank order, on rank 0 (None on the others), or on
        every rank with ``to_all``. Bytes, not objects: what crosses is a safetensors payload or JSON,
        never a pickle."""
        if not self.distributed:
            return [data]
        dist, device = torch.distributed, _backend_device()
        sizes = self.gather(torch.tensor([len(data)], device=device))
        padded = torch.zeros(int(sizes.max()), dtype=torch.uint8, device=device)
        if data:
            padded[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)] if to_all or self.rank == 0 else None
        with _collective(self, "all_gather" if to_all else "gather"):
            if to_all:
                assert parts is not None
                dist.all_gather(parts, padded)
            else:
                dist.gather(padded, parts, dst=0)
        if parts is None:
            return None
        return [part[: int(n)].cpu().numpy().tobytes() for part, n in zip(parts, sizes.tolist(), strict=True)]

    def barrier(self) -> None:
        if self.distributed:
            with _collective(self, "barrier"):
                torch.distributed.barrier()

    @contextlib.contextmanager
    def failures_within(self, name: str) -> Iterator[None]:
        """Around work that runs torch.distributed's collectives itself rather than through this
        object's (FSDP's gathers and reductions): an error raised inside torch.distributed as the
        DistributedError of a failed collective; any other error as it is."""
        try:
            yield
        except RuntimeError as exc:
            if not _raised_in_torch_distributed(exc):
                raise
            with _collective(self, name):
                raise

    def rows(self, n: int) -> slice:
        """This rank's slice of a global batch of ``n`` rows (``n`` must divide evenly)."""
        if n % self.world_size:
            raise ConfigError(f"a batch of {n} rows does not split evenly over {self.world_size} ranks; make batch_size a multiple of it")
        share = n // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)


def _backend_device() -> torch.device:
    """Where the group's collectives take their tensors: this rank's GPU under NCCL, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def _collective(comm: Comm, name: str) -> Iterator[None]:
    """A failed collective (a rank died, or did not answer within the timeout) as a DistributedError."""
    try:
        yield
    except RuntimeError as exc:  # torch.distributed's errors (DistBackendError, timeouts) are RuntimeErrors
        raise DistributedError(
            f"rank {comm.rank} of {comm.world_size}: {name} failed, so another rank died or did not answer in time "
            f"({exc}); resume the run from its last checkpoint"
        ) from exc


def _raised_in_torch_distributed(exc: BaseException) -> bool:
    """Whether the innermost Python frame ``exc`` passed through is torch.distributed's (a collective
    that failed), not the caller's code or another part of torch."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).is_relative_to(_TORCH_DISTRIBUTED)


_TORCH_DISTRIBUTED = Path(torch.distributed.__file__).parent


LOCAL = Comm()
"""One process: every collective is the identity."""
