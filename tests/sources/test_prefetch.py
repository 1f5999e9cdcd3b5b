"""Batches read ahead in a thread come out as the source yields them, errors included."""

from __future__ import annotations

import pytest
import torch

from saekit.sources.prefetch import Prefetcher
from saekit.types import ActBatch

pytestmark = pytest.mark.usefixtures("one_thread")


def numbered(n: int, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"batch {i} is broken")
        yield {"site": ActBatch(torch.full((2, 3), float(i)))}


def test_same_batches_in_the_same_order():
    with Prefetcher(numbered(7), depth=2) as batches:
        got = [int(b["site"].x[0, 0]) for b in batches]
    assert got == list(range(7))


def test_a_source_error_is_raised_at_its_position():
    batches = Prefetcher(numbered(6, fail_at=4), depth=3)
    assert [int(next(batches)["site"].x[0, 0]) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="batch 4 is broken"):
        next(batches)
    with pytest.raises(ValueError, match="batch 4 is broken"):  # again, rather than waiting forever
        next(batches)
    batches.close()


def test_close_stops_the_thread_and_the_source():
    closed = []

    def endless():
        try:
            i = 0
            while True:
                yield {"site": ActBatch(torch.tensor([[float(i)]]))}
                i += 1
        finally:
            closed.append(True)

    batches = Prefetcher(endless(), depth=2)
    assert int(next(batches)["site"].x) == 0
    batches.close()
    assert not batches._thread.is_alive() and closed == [True]


def test_training_from_a_cache_reads_ahead_and_ends_as_without(tmp_path):
    from saekit.sources.cache import CacheSource, write_cache
    from saekit.training import train

    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(0))
    chunks = ({"s": x[i : i + 128]} for i in range(0, 512, 128))
    write_cache(tmp_path / "cache", chunks, sites=["s"], d_in={"s": 8}, info={}, shard_tokens=256, dtype="float32")
    cached = CacheSource(tmp_path / "cache")
    assert cached.reads_from_disk
    import saekit

    def trained(source):
        sae = saekit.build_sae("topk", d_in=8, d_sae=16, k=2, seed=0)
        return train(sae, source, steps=6, batch_size=64, progress=False, norm_estimation_tokens=64).sae

    class Plain:  # the same cache without the read-ahead flag
        sites, d_in, describe = cached.sites, cached.d_in, cached.describe

        def batches(self, *a, **k):
            return cached.batches(*a, **k)

    a, b = trained(cached), trained(Plain())
    assert not torch.equal(a.W_dec, saekit.build_sae("topk", d_in=8, d_sae=16, k=2, seed=0).W_dec), "vacuous: nothing trained"
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
