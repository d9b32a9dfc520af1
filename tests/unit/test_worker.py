"""SerialWorker: one ordered thread for slab access, idle tracking, per-thread set-up."""

from __future__ import annotations

import threading

from seqinfer.service.worker import SerialWorker


def test_jobs_run_in_order_on_one_initialised_thread_and_idle_tracks_them():
    seen: list[str] = []
    worker = SerialWorker("w", initializer=lambda: seen.append(threading.current_thread().name))
    gate = threading.Event()
    order: list[int] = []
    assert worker.idle()
    blocked = worker.submit(gate.wait)
    futures = [worker.submit(order.append, i) for i in range(5)]
    assert not worker.idle()
    gate.set()
    blocked.result(5)
    for future in futures:
        future.result(5)
    assert order == [0, 1, 2, 3, 4]
    assert worker.idle()
    assert len(seen) == 1 and seen[0].startswith("w") and seen[0] != threading.current_thread().name
    worker.shutdown()
