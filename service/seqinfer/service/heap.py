"""The serving process's garbage-collector policy: start-up objects leave the collector.

A serving process imports torch, grpc, numpy and protobuf and loads its
models: some 200,000 objects that live as long as the process. CPython's
full (oldest-generation) collection walks every one of them, and with
single steps allocating futures, closures and messages it runs every few
seconds: measured under StreamSteps N=256 on bench-gru, 12 full collections
of ~120 ms each in 52 s, 28 µs of GC per step, the largest single cost after
the gRPC calls themselves, and a 120 ms pause in the step latency each time.
``gc.freeze()`` after start-up moves those objects to the permanent
generation, which no collection walks (they are still freed by reference
counting if they ever go); full collections then cost what the serving
objects cost (3 to 7 µs per step measured; docs/benchmarks.md).

Called by the process entry points only (``serve``, the engine process, the
front ends), once everything is loaded: a library user of ``SeqinferServer``
keeps their own process's policy, and the tests, which start hundreds of
servers in one process, do not pin each one's garbage.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect start-up garbage once, then exempt what is left from future collections."""
    gc.collect()
    gc.freeze()
