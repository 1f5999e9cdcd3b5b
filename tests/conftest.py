"""Shared test set-up. Its presence puts tests/ on sys.path, so tests can `import tiny_lm`."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a module's tests on one thread: tiny models and matrices gain nothing from a second one,
    and on a busy machine OpenMP's spinning workers make every small matmul many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
