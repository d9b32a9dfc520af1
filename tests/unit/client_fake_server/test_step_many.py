"""StepMany: per-item results and errors, handle counters, a retry that applies nothing twice."""

from __future__ import annotations

import grpc
import numpy as np

from seqinfer.client import Client, SessionNotFound, StepCall
from tests.unit.client_fake_server.fake_seqinfer import FakeSeqinfer, X


def test_step_many_mixed_results_and_counters(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    servicer, _ = fake
    a = client.open_session("toy")
    b = client.open_session("toy")
    servicer.fail("StepMany", grpc.StatusCode.UNAVAILABLE, after_apply=True)
    results = client.step_many(
        [
            (a, np.ones((2, 3))),
            (b, X),
            StepCall("missing", X, expected_step=0),
            StepCall("new", X, start=True, model="toy", expected_step=0),
        ]
    )
    ra, rb, rm, rn = results
    assert ra.step == 2 and rb.step == 1 and rn.created  # type: ignore[union-attr]
    assert ra.replayed  # type: ignore[union-attr]
    assert isinstance(rm, SessionNotFound)
    assert (a.step_count, b.step_count) == (2, 1)
    assert servicer.applied == 4  # the retried message applied nothing twice
