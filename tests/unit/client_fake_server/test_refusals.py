"""Refused steps: the typed error says why, and the handle keeps the server's counter.

A STEP_GAP carries the server's `current_step` and the handle resyncs to it;
an invalid input names its field and leaves the counter where it was.
"""

from __future__ import annotations

import numpy as np
import pytest

from seqinfer.client import Client, InvalidInput, StepGap
from tests.unit.client_fake_server.fake_seqinfer import FakeSeqinfer, X


def test_step_gap_carries_current_step_and_resyncs_handle(
    fake: tuple[FakeSeqinfer, str], client: Client
) -> None:
    s = client.open_session("toy")
    client.step(s.session_id, np.ones((3, 3)))  # someone else steps it
    with pytest.raises(StepGap) as info:
        s.step(X)
    assert info.value.current_step == 3
    assert s.step_count == 3
    assert s.step(X).step == 4


def test_invalid_input_field(fake: tuple[FakeSeqinfer, str], client: Client) -> None:
    s = client.open_session("toy")
    with pytest.raises(InvalidInput) as info:
        s.step(np.ones((1, 5)))
    assert info.value.field == "inputs"
    assert s.step_count == 0
