"""Shared by the training tests."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread_children(monkeypatch):
    """Processes a test starts (the ranks of a distributed run) use one thread each: on CI's few cores,
    ranks of several threads each would oversubscribe them."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
