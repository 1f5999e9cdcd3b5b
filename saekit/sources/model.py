"""Activations of a live language model as an :class:`~saekit.types.ActivationSource`.

The token contexts ``[n_seqs, context]`` are visited as an endless stream of epochs, each a seeded
shuffle of the contexts. The stream is cut into chunks of ``chunk_seqs`` contexts; one chunk is run
through the model (in forward batches of ``forward_batch`` contexts, every site from the same pass),
its first ``skip_positions`` positions (BOS) are dropped, and its rows are shuffled with a seed of
their own, so a batch mixes tokens of many documents. Batch ``i`` is rows ``[i·B, (i+1)·B)`` of that
row stream, a pure function of ``(seed, i)``: resuming at batch ``i`` recomputes one chunk and skips
into it.

Rows per chunk = ``chunk_seqs · (context − skip_positions)``, which is also the working memory per
site (in float32; one chunk is held at a time, plus the fewer than a batch of rows the last one left);
raise ``chunk_seqs`` for better mixing, lower it for many sites.

With ``with_grads=True`` every batch also carries ``ActBatch.grad``: the gradient, with respect to
each row, of the summed next-token loss of the row's forward batch (from the same hooks, see
:func:`~saekit.sources.hf.collect_activations_and_grads`), shuffled together with the activations.
The summed loss is used so that the gradient of a row does not depend on ``forward_batch``. Gradient
passes run the whole model and a backward pass, about three times the cost of an activation pass,
and double the chunk memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as tF
from torch import Tensor, nn

from saekit.comm import LOCAL, Comm
from saekit.errors import ConfigError, DataError
from saekit.models.load import LoadedModel, as_module
from saekit.sources.hf import check_token_ids, collect_activations, collect_activations_and_grads
from saekit.sources.order import EpochOrder, seeded_generator
from saekit.sources.sites import resolve_sites
from saekit.types import ActBatch

_EPOCH, _CHUNK = 11, 12  # tags that keep the two random streams apart
_GRAD = "grad:"


@dataclass(frozen=True)
class Chunk:
    """Activations of consecutive contexts of the stream, in stream order (not yet shuffled)."""

    index: int
    acts: dict[str, Tensor]
    """site -> [rows, d] float32 on the CPU, position-major within each context."""
    grads: dict[str, Tensor] | None = None
    """site -> [rows, d] gradients of the next-token loss, aligned with ``acts``; None without grads."""


class ModelSource:
    """Train SAEs straight from a model's forward passes (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module | LoadedModel,
        tokens: Tensor,
        sites: str | list[str],
        *,
        chunk_seqs: int = 64,
        forward_batch: int = 16,
        skip_positions: int = 1,
        with_grads: bool = False,
        description: dict | None = None,
        comm: Comm = LOCAL,
    ) -> None:
        if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64):
            raise DataError(f"tokens must be an integer tensor [n_seqs, context], got {tuple(tokens.shape)} {tokens.dtype}")
        check_token_ids(as_module(model), tokens)
        if not 0 <= skip_positions < tokens.shape[1]:
            raise ConfigError(f"skip_positions must be in 0..{tokens.shape[1] - 1}, got {skip_positions}")
        if chunk_seqs <= 0 or forward_batch <= 0:
            raise ConfigError("chunk_seqs and forward_batch must be positive")
        self.model = as_module(model).eval()
        self.tokens = tokens.long()
        self._sites = tuple(resolve_sites(self.model, sites))
        self.chunk_seqs = chunk_seqs
        self.forward_batch = forward_batch
        self.skip_positions = skip_positions
        self.with_grads = with_grads
        self.comm = comm
        """The ranks of a distributed run: each runs the model on its share of every chunk's contexts,
        and the rows are gathered, so every rank holds the chunk one process would compute."""
        self._description = description or {}
        self._last: tuple[tuple[int, int], Chunk] | None = None
        self._width = {site: acts.shape[-1] for site, acts in self._forward(self.tokens[:1, :2]).acts.items()}
        self._contexts = EpochOrder(self.tokens.shape[0], _EPOCH)

    @property
    def sites(self) -> tuple[str, ...]:
        return self._sites

    def d_in(self, site: str) -> int:
        if site not in self._width:
            raise ConfigError(f"site {site!r} is not one of this source's sites {list(self._sites)}")
        return self._width[site]

    @property
    def rows_per_chunk(self) -> int:
        return self.chunk_seqs * (self.tokens.shape[1] - self.skip_positions)

    def describe(self) -> dict:
        return {
            "kind": "model",
            **self._description,
            "sites": list(self._sites),
            "n_seqs": self.tokens.shape[0],
            "context": self.tokens.shape[1],
            "skip_positions": self.skip_positions,
            "chunk_seqs": self.chunk_seqs,
            **({"with_grads": True} if self.with_grads else {}),
        }

    # ------------------------------------------------------------------ the row stream

    def sequence_ids(self, chunk: int, seed: int) -> Tensor:
        """Indices of the contexts in ``chunk`` of the stream: epochs are seeded shuffles (EpochOrder)."""
        return self._contexts.take(seed, chunk * self.chunk_seqs, self.chunk_seqs)

    def chunk(self, index: int, seed: int) -> Chunk:
        """Activations of chunk ``index`` of the stream, rows in context order."""
        # The loop reads the first chunk up to three times (normalisation estimate, b_dec init,
        # training); one remembered chunk saves those forward passes.
        if self._last is None or self._last[0] != (index, seed):
            ids = self.sequence_ids(index, seed)
            if self.with_grads:
                acts, grads = self._rows_of(ids, with_grads=True)
                self._last = ((index, seed), Chunk(index, acts, grads))
            else:
                self._last = ((index, seed), Chunk(index, self.activations_of(ids)))
        return self._last[1]

    def activations_of(self, ids: Tensor) -> dict[str, Tensor]:
        """site -> [len(ids) · (context − skip_positions), d] float32 CPU rows of the contexts ``ids``."""
        return self._rows_of(ids, with_grads=False)[0]

    def _rows_of(self, ids: Tensor, *, with_grads: bool) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        if not self.comm.distributed:
            return self._own_rows_of(ids, with_grads=with_grads)
        share = -(-len(ids) // self.comm.world_size)
        mine = ids[self.comm.rank * share : (self.comm.rank + 1) * share]
        acts, grads = self._own_rows_of(mine, with_grads=with_grads)
        rows, per_seq = len(ids) * (self.tokens.shape[1] - self.skip_positions), self.tokens.shape[1] - self.skip_positions

        def gathered(part: dict[str, Tensor]) -> dict[str, Tensor]:
            # Equal shares for the gather: the last rank's may be short (or empty), so it is padded.
            padded = {site: part[site] if site in part else torch.zeros(0, self._width[site]) for site in self._sites}
            padded = {site: tF.pad(t, (0, 0, 0, share * per_seq - len(t))) for site, t in padded.items()}
            return {site: self.comm.gather(t)[:rows] for site, t in padded.items()}

        return gathered(acts), gathered(grads) if grads is not None else None

    def _own_rows_of(self, ids: Tensor, *, with_grads: bool) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        # Each forward batch is copied straight into its slice of the chunk: no list of parts and no
        # concatenation, which would hold the chunk twice.
        per_seq = self.tokens.shape[1] - self.skip_positions
        acts: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}
        # (Inside a training run the engine keeps large blocks in the heap for these passes: saekit._fast.)
        for start in range(0, len(ids), self.forward_batch):
            out = self._forward(self.tokens[ids[start : start + self.forward_batch]], with_grads=with_grads)
            begin = start * per_seq
            for site in self._sites:
                for into, value in ((acts, out.acts[site]), (grads, out.grads[site] if out.grads is not None else None)):
                    if value is None:
                        continue
                    rows = value[:, self.skip_positions :].reshape(-1, value.shape[-1])
                    if site not in into:
                        into[site] = torch.empty(len(ids) * per_seq, value.shape[-1], dtype=torch.float32)
                    into[site][begin : begin + len(rows)].copy_(rows)
        return acts, grads if with_grads else None

    def chunks_in_order(self, first: int = 0) -> Iterator[dict[str, Tensor]]:
        """Every context exactly once, in token order, ``chunk_seqs`` contexts at a time, starting at
        chunk ``first`` (what an activation cache stores)."""
        for start in range(first * self.chunk_seqs, self.tokens.shape[0], self.chunk_seqs):
            yield self.activations_of(torch.arange(start, min(start + self.chunk_seqs, self.tokens.shape[0])))

    def batches(self, batch_size: int, *, seed: int, start: int = 0) -> Iterator[Mapping[str, ActBatch]]:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rows = self.rows_per_chunk
        chunk_index, offset = divmod(start * batch_size, rows)
        # Rows not yet served, as (chunk tensors, row indices into them) in serving order: each batch is
        # gathered from the chunk itself, so no shuffled copy of a chunk is ever made. Gradients ride
        # under keys of their own, so they are cut exactly like the activations they belong to.
        pending: list[tuple[dict[str, Tensor], Tensor]] = []
        while True:
            chunk = self.chunk(chunk_index, seed)
            tensors = {**chunk.acts, **{_GRAD + site: g for site, g in (chunk.grads or {}).items()}}
            order = torch.randperm(rows, generator=seeded_generator(_CHUNK, seed, chunk_index))[offset:]
            pending.append((tensors, order))
            while sum(len(index) for _, index in pending) >= batch_size:
                cut = _take(pending, batch_size)
                yield {site: ActBatch(cut[site], cut.get(_GRAD + site)) for site in self._sites}
            chunk_index, offset = chunk_index + 1, 0
            # The rows this chunk has left (fewer than a batch) are copied out and the chunk is let go
            # before the next one is computed: one chunk in memory at a time, not two.
            left = sum(len(index) for _, index in pending)
            pending = [({key: _gather(pending, key) for key in tensors}, torch.arange(left))] if left else []
            del chunk, tensors
            self._last = None

    def iter_rows(self, batch_size: int, *, site: str | None = None, max_rows: int | None = None, seed: int = 0) -> Iterator[Tensor]:
        """Rows of one site once, in stream order (no row shuffle), for evaluation."""
        site = site or (self._sites[0] if len(self._sites) == 1 else None)
        if site is None or site not in self._sites:
            raise ConfigError(f"name one of the sites {list(self._sites)}")
        if max_rows is None:
            max_rows = self.tokens.shape[0] * (self.tokens.shape[1] - self.skip_positions)
        done, index = 0, 0
        while done < max_rows:
            rows = self.chunk(index, seed).acts[site][: max_rows - done]
            for begin in range(0, len(rows), batch_size):
                yield rows[begin : begin + batch_size]
            done += len(rows)
            index += 1

    def _forward(self, tokens: Tensor, *, with_grads: bool = False) -> _Pass:
        device = next(self.model.parameters()).device
        tokens = tokens.to(device)
        if not with_grads:
            with torch.no_grad():
                return _Pass(collect_activations(self.model, tokens, list(self._sites)), None)
        # d(summed loss)/dh: free of the batch size.
        out = collect_activations_and_grads(self.model, tokens, list(self._sites), reduction="sum")
        return _Pass(out.acts, out.grads)


def _take(pending: list[tuple[dict[str, Tensor], Tensor]], n: int) -> dict[str, Tensor]:
    """The next ``n`` rows of ``pending`` (at least ``n`` there), which keeps the rest."""
    pieces, need = [], n
    while need:
        source, index = pending[0]
        pieces.append((source, index[:need]))
        if len(index) <= need:
            pending.pop(0)
        else:
            pending[0] = (source, index[need:])
        need -= len(pieces[-1][1])
    return {key: _gather(pieces, key) for key in pieces[0][0]}


def _gather(pieces: list[tuple[dict[str, Tensor], Tensor]], key: str) -> Tensor:
    """The rows ``index`` of ``source[key]`` for each piece, one after the other (no extra copy when the
    batch comes from one chunk, as it nearly always does)."""
    if len(pieces) == 1:
        source, index = pieces[0]
        return source[key].index_select(0, index)
    return torch.cat([source[key].index_select(0, index) for source, index in pieces])


class _Pass(NamedTuple):
    acts: dict[str, Tensor]
    grads: dict[str, Tensor] | None
