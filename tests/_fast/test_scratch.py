"""Reused per-step buffers: inside reusing(), the same tensor for the same shape; outside, plain tensors."""

from __future__ import annotations

import gc
import weakref

import torch

from saekit._fast import scratch

CPU = torch.device("cpu")


def test_the_same_shape_gets_the_same_buffer_inside_reusing():
    with scratch.reusing():
        first = scratch.buffer((4, 6), torch.float32, CPU)
        assert scratch.buffer((4, 6), torch.float32, CPU).data_ptr() == first.data_ptr()
        assert scratch.buffer((6, 4), torch.float32, CPU).data_ptr() != first.data_ptr()
        assert scratch.buffer((4, 6), torch.float64, CPU).data_ptr() != first.data_ptr()
    outside = scratch.buffer((4, 6), torch.float32, CPU)
    assert scratch.buffer((4, 6), torch.float32, CPU).data_ptr() != outside.data_ptr()


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
