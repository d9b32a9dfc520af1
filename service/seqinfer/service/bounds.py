"""Bounds on the numbers a caller sends, checked where a request enters the server.

The wire types are wider than anything the server can honour: a uint64 step
counter would overflow the reply's uint64 a step later, a double TTL can be
NaN or 1e308. Each client-supplied number is checked here, once, and refused
with INVALID_ARGUMENT naming its field, so that nothing downstream (the
scheduler's counter arithmetic, protobuf encoding, timestamps) meets a value
it cannot handle.
"""

from __future__ import annotations

from seqinfer.service.errors import InvalidInput

# Largest step counter a session can have. 2^53 - 1 is exact in every
# client's number type (JavaScript and JSON numbers are doubles) and leaves
# the uint64 wire field room to spare; at a million timesteps a second one
# session would take 285 years to reach it. The scheduler refuses a step that
# would pass it (STEP_LIMIT), so a counter can never overflow.
MAX_STEP = 2**53 - 1
# Longest idle TTL: about 31.7 years, "never" for any real session (0 also
# means never), and small enough for any timestamp arithmetic.
MAX_IDLE_TTL_SECONDS = 1e9


def check_step(value: int, field: str) -> int:
    """A client-supplied step counter (uint64 on the wire, so never negative)."""
    if value > MAX_STEP:
        raise InvalidInput(
            field, f"must be at most {MAX_STEP} (2^53 - 1), got {value}", max_step=MAX_STEP
        )
    return value


def check_ttl(value: float, field: str) -> float:
    # `not value >= 0` is also true for NaN.
    if not value >= 0 or value > MAX_IDLE_TTL_SECONDS:
        raise InvalidInput(
            field,
            f"must be a number of seconds in [0, {MAX_IDLE_TTL_SECONDS:.0f}] "
            f"(0: never expires), got {value}",
        )
    return value


def check_request_id(request_id: str, max_bytes: int) -> int:
    """The id's size in bytes; it is echoed in every reply and kept with the session."""
    size = utf8_size(request_id)
    if size > max_bytes:
        raise InvalidInput("request_id", f"is {size} bytes; the limit is {max_bytes}")
    return size


def utf8_size(text: str) -> int:
    # isascii() is O(1) on CPython: the common case costs no encoding.
    return len(text) if text.isascii() else len(text.encode())
