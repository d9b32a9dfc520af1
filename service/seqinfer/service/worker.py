"""The one thread that touches a model's slab, and when work may skip it.

Every slab access (batches, zeroing freed slots, growth, export/import/fork)
runs here in submission order: that ordering is what keeps a reused slot from
being written by a batch still in flight. A hand-off to a thread costs two
wake-ups, which at light load is most of a step's latency (and far more on a
busy machine, where each wake-up waits for a time slice), so a small batch
may run on the caller's thread instead, but only when nothing is queued or
running here, which preserves the order.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class SerialWorker:
    def __init__(self, name: str, initializer: Callable[[], object] | None = None) -> None:
        """``initializer`` runs first on the thread, e.g. to set per-thread torch threads."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=initializer)
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        with self._lock:
            self._pending += 1
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    def idle(self) -> bool:
        """Nothing queued or running: the caller may touch the slab itself right now."""
        with self._lock:
            return self._pending == 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
