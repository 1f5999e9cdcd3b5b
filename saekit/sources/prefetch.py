"""Read the next batches in a background thread while the current step trains.

A cache on disk spends each batch in page faults and float16 → float32 conversion, and on a GPU any
host-side batch preparation leaves the device idle; a thread that stays ``depth`` batches ahead hides
both. The batches come out in exactly the order the source yields them, and an exception raised by
the source is raised again by ``next`` at the same position, so resuming and error messages are
unchanged. With ``pin_memory`` the tensors are page-locked, so the copy to the GPU can overlap compute
(``.to(device, non_blocking=True)``).

Sources that compute their batches on the CPU (a model's forward passes) are not prefetched when
training on the CPU: the thread would only compete with the training step for the same cores.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator, Mapping
from typing import Any

from saekit.types import ActBatch

_DONE = object()


class Prefetcher:
    """Iterator over ``batches`` (mappings site → ActBatch) read ``depth`` ahead by a daemon thread."""

    def __init__(self, batches: Iterator[Mapping[str, ActBatch]], depth: int = 2, pin_memory: bool = False) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._pin = pin_memory
        self._thread = threading.Thread(target=self._work, args=(iter(batches),), daemon=True, name="saekit-prefetch")
        self._thread.start()

    def _work(self, batches: Iterator[Mapping[str, ActBatch]]) -> None:
        try:
            for batch in batches:
                if self._pin:
                    batch = {site: _pinned(acts) for site, acts in batch.items()}
                if not self._put(batch):
                    break
            else:
                self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Raised(exc))
        finally:
            if isinstance(batches, Generator):  # a source may return any iterator; a generator holds its frame
                batches.close()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Mapping[str, ActBatch]:
        item = self._queue.get()
        if item is _DONE:
            self._queue.put(_DONE)  # later calls stop too
            raise StopIteration
        if isinstance(item, _Raised):
            self._queue.put(item)  # the thread has stopped: later calls raise again instead of waiting
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is reading) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _pinned(acts: ActBatch) -> ActBatch:
    return ActBatch(acts.x.pin_memory(), None if acts.grad is None else acts.grad.pin_memory())
