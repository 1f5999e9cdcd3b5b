"""Large CPU blocks are reused from step to step while training, and the default comes back after."""

from __future__ import annotations

import resource

import pytest
import torch

from saekit._fast.heap import _glibc, reuse_large_blocks

pytestmark = pytest.mark.usefixtures("one_thread")


def faults_of_a_fresh_64mb_block() -> int:
    """Minor page faults taken by allocating and filling a 64 MiB tensor right after freeing one."""
    block = torch.ones(16 * 2**20)
    del block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(16 * 2**20)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del block
    return faults


def five_tries() -> list[int]:
    # Several tries each: the kernel may reclaim or remap pages now and then (this machine runs a
    # proactive reclaimer), which a single measurement would mistake for the allocator's doing.
    return [faults_of_a_fresh_64mb_block() for _ in range(5)]


def assert_reused_then_mapped_afresh(inside: list[int]) -> None:
    """``inside`` were measured with the setting in effect; after it, blocks must be mapped afresh."""
    pages = 64 * 2**20 // resource.getpagesize()
    outside = five_tries()
    assert min(inside) < pages // 10, inside
    assert max(outside) > pages // 2, outside


@pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt is not available here")
def test_blocks_are_reused_inside_and_mapped_afresh_outside():
    with reuse_large_blocks(torch.device("cpu")) as applied:
        assert applied
        inside = five_tries()
    assert_reused_then_mapped_afresh(inside)


def test_nothing_is_changed_for_cuda_devices():
    with reuse_large_blocks(torch.device("cuda")) as applied:
        assert not applied


@pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt is not available here")
def test_an_inner_block_leaves_the_outer_one_in_effect():
    # ModelSource opens a block around its forward passes, inside the training loop's block.
    with reuse_large_blocks(torch.device("cpu")):
        with reuse_large_blocks(torch.device("cpu")) as inner:
            assert inner
        after_inner = five_tries()
    assert_reused_then_mapped_afresh(after_inner)
