"""The one way saekit orders data: seeded epochs.

A stream over ``n`` items (rows, contexts) visits them in epochs; epoch ``e`` is a random permutation
of all ``n`` items drawn from ``seeded_generator(*tag, seed, e)``, and the stream is the epochs one
after the other. Position ``p`` of the stream is therefore a pure function of ``(tag, seed, p)``: a
run that resumes at step ``i`` reads exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor


def seeded_generator(*keys: int) -> torch.Generator:
    """CPU generator seeded from a tuple of integers by hashing the whole tuple.

    A hash (rather than, say, ``seed * K + i``, or numpy's SeedSequence, which ignores trailing zero
    words) keeps streams for different keys independent and collision-free: (seed=1, i=0) and
    (seed=0, i=K), or (s,) and (s, 0), give different streams.
    """
    digest = hashlib.sha256(",".join(str(int(k)) for k in keys).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class EpochOrder:
    """Positions ``[first, first + count)`` of the seeded epoch stream over ``n`` items, as indices.

    ``tag`` (any integers) keeps streams of different uses apart. The last permutations drawn are kept,
    since consecutive reads touch at most the current and the next epoch.
    """

    def __init__(self, n: int, *tag: int) -> None:
        if n <= 0:
            raise ValueError(f"an epoch needs at least one item, got {n}")
        self.n = n
        self.tag = tag
        self._cache: dict[tuple[int, int], Tensor] = {}

    def permutation(self, seed: int, epoch: int) -> Tensor:
        key = (seed, epoch)
        if key not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = torch.randperm(self.n, generator=seeded_generator(*self.tag, seed, epoch))
        return self._cache[key]

    def take(self, seed: int, first: int, count: int) -> Tensor:
        pieces, pos, end = [], first, first + count
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            size = min(end - pos, self.n - offset)
            pieces.append(self.permutation(seed, epoch)[offset : offset + size])
            pos += size
        return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64)
