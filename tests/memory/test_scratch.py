"""Reused per-step buffers: the same tensor while nobody holds it, a fresh one otherwise."""

from __future__ import annotations

import gc
import weakref

import torch

from saekit.memory import scratch

CPU = torch.device("cpu")


def test_a_dropped_buffer_is_handed_out_again_inside_reusing():
    with scratch.reusing():
        first = scratch.buffer((4, 6), torch.float32, CPU)
        address = first.data_ptr()
        del first
        again = scratch.buffer((4, 6), torch.float32, CPU)
        assert again.data_ptr() == address
        other_shape = scratch.buffer((6, 4), torch.float32, CPU)
        assert other_shape.data_ptr() != address


def test_a_held_buffer_is_never_handed_out_twice():
    with scratch.reusing():
        held = scratch.buffer((4, 6), torch.float32, CPU).fill_(1.0)
        fresh = scratch.buffer((4, 6), torch.float32, CPU).fill_(2.0)
        assert fresh.data_ptr() != held.data_ptr()
        assert bool((held == 1.0).all()), "the held buffer was overwritten"


def test_buffers_are_kept_only_inside_reusing_and_freed_on_exit():
    outside = scratch.buffer((4, 6), torch.float32, CPU)
    gone = weakref.ref(outside)
    del outside
    gc.collect()
    assert gone() is None, "a buffer handed out outside reusing() was kept"
    with scratch.reusing():
        kept = weakref.ref(scratch.buffer((4, 6), torch.float32, CPU))
        gc.collect()
        assert kept() is not None
    gc.collect()
    assert kept() is None, "the pool outlived reusing()"


def test_other_devices_get_plain_tensors():
    with scratch.reusing():
        meta = scratch.buffer((4, 6), torch.float32, torch.device("meta"))
        assert meta.device.type == "meta"
        assert scratch._pool.get() == {}
