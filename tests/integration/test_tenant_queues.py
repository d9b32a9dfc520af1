"""Per-tenant queue quotas and fairness over real gRPC, the engine held by a gate.

A tenant at its queued-requests quota gets RESOURCE_EXHAUSTED / TENANT_QUOTA
with a retry hint, nothing applied and no session left behind; another
tenant's step is still queued (which batch takes it is
tests/unit/test_fair_queues.py's business). Nothing waits on time: the gate
holds the engine, ``wait_until`` waits for the queue to reach a depth.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from seqinfer.service.tenants import new_token, token_hash
from seqinfer.v1 import seqinfer_pb2 as pb
from seqinfer.v1 import seqinfer_pb2_grpc as pb_grpc
from tests.support import error_reason, gated, make_model, running_server, to_tensor, wait_until

MODEL = make_model("dense", name="q", seed=5)
X = to_tensor(np.ones((1, 8), np.float32))


def _as(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _start(sid: str) -> pb.StepRequest:
    return pb.StepRequest(session_id=sid, start=True, model="q", inputs=X)


def test_a_tenant_at_its_queue_quota_is_refused_and_another_still_queues(tmp_path: Path):
    dave, erin, fay = new_token(), new_token(), new_token()
    path = tmp_path / "tokens"
    path.write_text(
        f"{token_hash(dave)} dave max_queued=3\n{token_hash(erin)} erin\n"
        f"{token_hash(fay)} fay max_queued_bytes=64\n"  # two steps of 1 x 8 float32
    )
    d, e, f = _as(dave), _as(erin), _as(fay)
    with running_server([MODEL], auth_token_file=path, max_batch_size=2) as server:
        queues = server.server.runtimes[0].scheduler.queues
        depth = lambda: server.run_sync(lambda: queues.depth)  # noqa: E731
        with grpc.insecure_channel(server.address) as channel:
            api = pb_grpc.SeqinferStub(channel)
            pool = ThreadPoolExecutor(8)
            with gated(server) as gate:
                held = pool.submit(api.Step, _start("d0"), metadata=d, timeout=60)
                gate.wait_entered(1)
                queued = [
                    pool.submit(api.Step, _start(f"d{i}"), metadata=d, timeout=60)
                    for i in (1, 2, 3)
                ]
                wait_until(lambda: depth() == 3, what="three of dave's steps queued")
                with pytest.raises(grpc.RpcError) as refused:
                    api.Step(_start("d4"), metadata=d, timeout=60)
                code, reason, metadata = error_reason(refused.value)
                assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TENANT_QUOTA")
                assert metadata["quota"] == "max_queued" and metadata["limit"] == "3"
                assert float(metadata["retry_after_seconds"]) > 0
                # Erin has no quota and is queued last, behind all of dave's.
                hers = pool.submit(api.Step, _start("e0"), metadata=e, timeout=60)
                wait_until(lambda: depth() == 4, what="erin's step queued")
                fays = [
                    pool.submit(api.Step, _start(f"f{i}"), metadata=f, timeout=60) for i in (1, 2)
                ]
                wait_until(lambda: depth() == 6, what="fay's 64 bytes queued")
                with pytest.raises(grpc.RpcError) as over_bytes:
                    api.Step(_start("f3"), metadata=f, timeout=60)
                code, reason, metadata = error_reason(over_bytes.value)
                assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TENANT_QUOTA")
                assert metadata["quota"] == "max_queued_bytes" and metadata["limit"] == "64"
                gate.open()
                replies = [r.result(60) for r in (held, *queued, hers, *fays)]
            pool.shutdown()
            assert all(r.step == 1 for r in replies)
            # The refused step created nothing.
            with pytest.raises(grpc.RpcError) as gone:
                api.GetSession(pb.GetSessionRequest(session_id="d4"), metadata=d)
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert gate.sizes[0] == 1 and sum(gate.sizes) == 7
