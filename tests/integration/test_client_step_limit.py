"""The Python client turns the server's STEP_LIMIT into ``StepLimit``, over real gRPC.

STEP_LIMIT is the one reason the server sends that the client once decoded
only by its code (as a plain ``SeqinferError``); a session at the maximum
step is refused with it on unary, StepMany and streamed steps alike.
"""

from __future__ import annotations

import numpy as np
import pytest

from seqinfer.client import Client, StepCall, StepGap, StepLimit
from tests.support import make_model, running_server

MODEL = make_model("dense", name="m", seed=31)
MAX_STEP = 2**53 - 1


def test_a_step_past_the_maximum_raises_step_limit_and_changes_nothing():
    state = np.full((2, 16), 0.25, np.float32)
    x = np.ones((1, 8), np.float32)
    with running_server([MODEL]) as server, Client(server.address) as client:
        client.import_state("edge", state, create=True, model="m", step=MAX_STEP)
        with pytest.raises(StepLimit) as info:
            client.step("edge", x)
        error = info.value
        assert not isinstance(error, StepGap)  # a handle must not adopt a counter from it
        assert error.reason == "STEP_LIMIT" and error.code.name == "FAILED_PRECONDITION"
        assert error.current_step == MAX_STEP == error.max_step
        (item,) = client.step_many([StepCall("edge", x)])
        assert isinstance(item, StepLimit) and item.current_step == MAX_STEP
        exported = client.export_state("edge")
        assert exported.session.step == MAX_STEP
        np.testing.assert_array_equal(exported.state, state)
        # reset starts the counter over, so the session goes on.
        assert client.step("edge", x, reset=True).step == 1
