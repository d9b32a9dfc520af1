"""The serving processes freeze their start-up heap (seqinfer.service.heap)."""

from __future__ import annotations

import subprocess
import sys

# Run in a child: freezing this test process would pin every later test's garbage.
CHILD = """
import gc
import torch  # the bulk of a serving process's start-up objects
import seqinfer.service.server  # noqa: F401
from seqinfer.service.heap import freeze_startup_heap

before = len(gc.get_objects())
freeze_startup_heap()
after = len(gc.get_objects())

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made while serving
del a, b
print(before, after, gc.get_freeze_count(), gc.collect())
"""


def test_start_up_objects_leave_the_collector_and_new_cycles_are_still_collected() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True
    )
    before, after, frozen, collected = map(int, done.stdout.split())
    assert before > 50_000  # torch, grpc, numpy, protobuf: what full collections walked
    assert frozen > before // 2
    assert after < before // 20  # what a full collection walks now
    assert collected >= 2  # the cycle made after the freeze
