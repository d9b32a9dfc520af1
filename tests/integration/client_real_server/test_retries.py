"""Exactly-once on the real server: a repeated request is replayed, a lost reply retried once."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from seqinfer.client import Client, RetryPolicy
from tests.integration.client_real_server.served import BENCH, frames, outputs
from tests.support import reference_run


def test_repeated_request_is_replayed_not_reapplied(client: Client) -> None:
    """What makes the client's retries exactly-once, checked on the real server."""
    s = client.open_session("bench-gru")
    x = frames(1)
    first = client.step(s.session_id, x, expected_step=0, request_id="r1")
    again = client.step(s.session_id, x, expected_step=0, request_id="r1")
    assert (first.step, again.step) == (1, 1)
    assert not first.replayed and again.replayed
    np.testing.assert_array_equal(outputs(first), outputs(again))
    assert client.get_session(s.session_id).step == 1
    s.close()


class _LoseFirstStepReply(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Lets the first Step reach the server, then reports UNAVAILABLE (a lost reply)."""

    def __init__(self) -> None:
        self.lost = False

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        if details.method.endswith("/Step") and not self.lost:
            self.lost = True
            outcome.result()  # the server applied it
            raise _Unavailable()
        return outcome


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "reply lost (test)"

    def trailing_metadata(self) -> None:
        return None


def test_retry_after_lost_reply_applies_once(server: Any) -> None:
    interceptor = _LoseFirstStepReply()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), interceptor)
    x = frames(2)
    want, _ = reference_run(BENCH, x)
    with Client(channel=channel, retry=RetryPolicy(initial_backoff=0.01)) as c:
        s = c.open_session("bench-gru")
        out = s.step(x[:1])
        assert interceptor.lost and out.replayed and out.step == 1
        np.testing.assert_allclose(outputs(out), want[0], atol=1e-5, rtol=0)
        # Had it been applied twice, this step's output would differ from torch's.
        np.testing.assert_allclose(s(x[1]), want[1], atol=1e-5, rtol=0)
        s.close()
    channel.close()
