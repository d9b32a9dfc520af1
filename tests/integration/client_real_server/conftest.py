"""One real server for the whole package, and a client per test.

Package scope: starting the server once is what these tests did as one
module; they use their own session ids, so sharing it hides nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from seqinfer.client import Client
from tests.integration.client_real_server.served import BENCH, TOKENS
from tests.support import running_server


@pytest.fixture(scope="package")
def server() -> Any:
    with running_server([BENCH, TOKENS]) as srv:
        yield srv


@pytest.fixture
def client(server: Any) -> Any:
    with Client(server.address, timeout=30) as c:
        yield c
