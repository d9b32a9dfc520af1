"""The sync and async twins expose the same public methods with the same parameters.

Both twins spell their signatures out (for help(), IDEs and type checkers)
over one shared core, so nothing but this test stops them drifting apart:
a keyword added to ``Client.step`` and forgotten in ``AsyncClient.step``
(or in a stream's ``submit``, or in StepCall) fails here.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from seqinfer.client import (
    AsyncClient,
    AsyncSession,
    AsyncStepStream,
    Client,
    Session,
    StepCall,
    StepStream,
)
from seqinfer.client.messages import STEP_OPTIONS

Param = tuple[str, Any, Any]  # name, kind, default


def _public(cls: type) -> dict[str, list[Param]]:
    """Public methods (and ``__init__``) of a class, each as its parameters."""
    out: dict[str, list[Param]] = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name != "__init__":
            continue
        if not callable(member) or isinstance(member, type):
            continue
        sig = inspect.signature(member)
        out[name] = [(p.name, p.kind, p.default) for p in sig.parameters.values()]
    return out


# Differences the twins are meant to have: the async stream opens its call in
# an explicit ``start()`` (a constructor cannot await), and closes in
# ``aclose()`` (asyncio's name), which has no join timeout: the caller wraps
# it in asyncio.timeout instead.
STREAM_ONLY_SYNC = {"close"}
STREAM_ONLY_ASYNC = {"start", "aclose"}


@pytest.mark.parametrize(
    ("sync", "aio", "only_sync", "only_async"),
    [
        (Client, AsyncClient, set(), set()),
        (Session, AsyncSession, set(), set()),
        (StepStream, AsyncStepStream, STREAM_ONLY_SYNC, STREAM_ONLY_ASYNC),
    ],
    ids=["client", "session", "stream"],
)
def test_twins_have_the_same_public_methods_and_parameters(
    sync: type, aio: type, only_sync: set[str], only_async: set[str]
) -> None:
    s, a = _public(sync), _public(aio)
    assert set(s) - set(a) == only_sync
    assert set(a) - set(s) == only_async
    for name in set(s) & set(a):
        assert s[name] == a[name], f"{sync.__name__}.{name} vs {aio.__name__}.{name}"


def test_async_twins_methods_are_awaitable() -> None:
    """Every public method of an async twin is a coroutine (or an async context manager)."""
    plain_ok = {"stream"}  # stream() only builds the object; async with opens it
    for cls in (AsyncClient, AsyncSession, AsyncStepStream):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or name in plain_ok:
                continue
            if not callable(member) or isinstance(member, type):
                continue
            wrapped = inspect.unwrap(member)
            assert inspect.iscoroutinefunction(wrapped) or inspect.isasyncgenfunction(wrapped), (
                f"{cls.__name__}.{name} is not async"
            )


STEP_METHODS = [Client.step, AsyncClient.step, StepStream.submit, AsyncStepStream.submit]


@pytest.mark.parametrize("method", STEP_METHODS, ids=lambda m: m.__qualname__)
def test_every_step_method_takes_exactly_the_step_options(method: Any) -> None:
    """The keywords of each step method are StepCall's options, with StepCall's defaults."""
    params = inspect.signature(method).parameters
    keywords = [p for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    names = tuple(p.name for p in keywords if p.name != "timeout")
    assert names == STEP_OPTIONS
    defaults = {f.name: f.default for f in dataclasses.fields(StepCall)}
    for p in keywords:
        if p.name != "timeout":
            assert p.default == defaults[p.name], f"{method.__qualname__}({p.name}=)"


def test_step_options_are_stepcalls_fields_after_the_target() -> None:
    fields = [f.name for f in dataclasses.fields(StepCall)]
    assert fields[:2] == ["session_id", "inputs"]
    assert tuple(fields[2:]) == STEP_OPTIONS
    assert {"expected_step", "request_id", "dtype"} <= set(STEP_OPTIONS)


def test_the_parity_check_sees_a_difference() -> None:
    """The comparison itself can fail: a twin with one changed default differs."""

    class Drifted(AsyncClient):
        async def get_model(self, name: str, version: str = "latest", *, timeout=None):  # type: ignore[no-untyped-def, override]
            raise NotImplementedError

    assert _public(Client)["get_model"] != _public(Drifted)["get_model"]
