"""A load generator for the seqinfer contract (and TorchServe's, for the peer).

It runs in separate processes from the server under test: one asyncio
``grpc.aio`` client per process, N concurrent sessions, each stepping one
timestep at a time (ping-pong) or with several steps in flight (pipelined),
over ``StreamSteps``, unary ``Step`` or ``StepMany``. It imports no torch.
"""

from benchmarks.loadgen.runner import run_load
from benchmarks.loadgen.spec import LoadResult, LoadSpec

__all__ = ["LoadResult", "LoadSpec", "run_load"]
