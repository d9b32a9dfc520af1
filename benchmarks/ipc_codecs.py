"""Front end ⇄ engine envelopes: today's pickle (protocol 5) against msgspec msgpack.

python -m benchmarks.ipc_codecs

Encode + decode CPU time (best of many, `time.thread_time`) of the messages
that cross on every request: one StepCommand envelope (a single stream
step, the common case), 256 coalesced StepCommands (a busy loop turn), a
256-step columnar StepBatch (one StepMany) and 256 replies with a 64-float
output each. msgspec encodes the protocol dataclasses as they are
(arrays as raw bytes), which is what a switch would have to match. The
transport's own cost (≈63 µs a round trip with one in flight, ≈5 µs per
message pipelined, /work/shared/notes) is not in these figures.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from seqinfer.service import ipc
from seqinfer.service.protocol import StepBatch, StepCommand, TensorData
from seqinfer.v1 import seqinfer_pb2 as pb

N = 256
X = np.zeros((1, 64), "<f4").tobytes()


def _command(i: int) -> StepCommand:
    return StepCommand(
        f"session-{i}", f"req-{i}", TensorData(pb.DTYPE_FLOAT32, [1, 64], X), "bench-gru",
        expected_step=i,
    )  # fmt: skip


def _batch() -> StepBatch:
    return StepBatch(
        [f"session-{i}" for i in range(N)], [f"req-{i}" for i in range(N)], ["bench-gru"] * N,
        [""] * N, [False] * N, [None] * N, list(range(N)), [False] * N, [False] * N, [0] * N,
        [False] * N, [pb.DTYPE_FLOAT32] * N, [[1, 64]] * N, [X] * N,
    )  # fmt: skip


def _replies() -> list[tuple[int, tuple[str, str, int, bytes]]]:
    # A reply's payload as plain data (outputs as bytes): the same for both codecs.
    return [(i, (f"session-{i}", f"req-{i}", i, X)) for i in range(N)]


def _best(fn: Callable[[], Any], repeat: int = 300) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best * 1e6


def main() -> None:
    encoder, decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    single = ("steps", [(0, _command(0))])
    many = ("steps", [(i, _command(i)) for i in range(N)])
    batch = ("call", 1, "step_batch", (_batch(),))
    replies = ("replies", _replies())
    typed_single = msgspec.msgpack.Decoder(tuple[str, list[tuple[int, StepCommand]]])
    typed_many = typed_single
    cases = {
        "1 StepCommand": (single, typed_single),
        f"{N} StepCommands": (many, typed_many),
        f"StepBatch x{N}": (batch, None),
        f"{N} replies": (replies, None),
    }
    print("| message | pickle-5 µs | msgspec µs (typed decode where given) | msgspec / pickle |")
    print("|---|---|---|---|")
    for name, (message, typed) in cases.items():
        pickled = _best(lambda m=message: ipc.decode(ipc.encode(m)))
        dec = typed if typed is not None else decoder
        packed = _best(lambda m=message, d=dec: d.decode(encoder.encode(m)))
        assert pickle.loads(pickle.dumps(message, protocol=5)) == message
        print(f"| {name} | {pickled:.1f} | {packed:.1f} | {packed / pickled:.2f} |")


if __name__ == "__main__":
    main()
