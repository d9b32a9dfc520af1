"""``spread.Spread``: when the first call's wait over ``addresses=`` stops.

The probing itself runs against real front ends in
tests/integration/test_client_addresses.py; here, the rule on its own: stop
once every address answered, at once for a server that does not name
itself, never for a single address, and back off on repeats.
"""

from __future__ import annotations

from seqinfer.client.spread import SERVER_ID, Spread


def _from(name: str) -> tuple[tuple[str, str], ...]:
    return (("other", "x"), (SERVER_ID, name))


def test_stops_once_every_address_answered_and_backs_off_on_repeats() -> None:
    spread = Spread(3, timeout=60)
    assert spread.note(_from("a")) == 0.0  # new: probe again at once
    first = spread.note(_from("a"))  # a repeat: the others are still connecting
    second = spread.note(_from("a"))
    assert first is not None and second is not None and 0 < first < second
    assert spread.note(_from("b")) == 0.0
    assert not spread.done
    assert spread.note(_from("c")) is None
    assert spread.done and spread.seen == {"a", "b", "c"}


def test_a_server_that_does_not_name_itself_ends_the_wait() -> None:
    spread = Spread(2, timeout=60)
    assert spread.note((("other", "x"),)) is None
    assert spread.done and not spread.seen


def test_one_address_or_no_time_left_means_no_wait() -> None:
    assert Spread(1, timeout=60).done
    late = Spread(2, timeout=0)
    assert late.left() <= 0
    assert late.note(_from("a")) is None and late.done
