"""Tenants: who owns a session, the tokens that name them, and their quotas.

Every session belongs to the tenant that opened it; the engine keys its
table by (tenant, id) (``session_key``), so two tenants may use the same id
and a session of another tenant is, to a caller, exactly an id that never
existed. Without a token file every call is the anonymous tenant ``""``,
whose keys are the ids themselves.

The token file holds no secret in clear: one line per token,

    <sha256 hex of the token> <tenant> [max_sessions=N] [steps_per_second=R]
        [max_queued=N] [max_queued_bytes=N] [models=a,b]

with ``#`` comments and blank lines allowed. ``seqinfer token new`` prints a
fresh token and its line. A table is immutable: a reload (SIGHUP) builds a
new one and swaps it in whole, so a call sees either the old file or the new.
A presented token is hashed and compared with every entry in constant time
(``hmac.compare_digest``, no early exit), so the time of a refusal says
nothing about which hashes exist.

Plain code, no grpc: the gRPC side reads the token from the call's metadata
(``guard``), the engine side enforces the quotas (``admission``,
``engine_client``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from seqinfer.service.errors import TenantQuota, Unauthenticated

ANONYMOUS = ""
# Ids are printable (router.check_session_id), so this separator cannot occur
# in one: (tenant, id) keys of different tenants never collide.
_SEPARATOR = "\x1f"


def session_key(tenant: str, session_id: str) -> str:
    """The session table's key: the id itself for the anonymous tenant."""
    return session_id if not tenant else f"{tenant}{_SEPARATOR}{session_id}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the line."""


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    max_sessions: int = 0  # open sessions across all models; 0 = no quota
    steps_per_second: float = 0.0  # timesteps applied per second; 0 = no quota
    models: frozenset[str] | None = None  # the model names it may see and use; None = all
    # Requests and input bytes queued, all models; 0 = the server's default
    # (tenant_max_queued[_bytes]), which 0 makes no quota.
    max_queued: int = 0
    max_queued_bytes: int = 0


class TokenTable:
    def __init__(self, entries: list[tuple[bytes, Tenant]]) -> None:
        self._entries = entries
        self.tenants = {tenant.name: tenant for _, tenant in entries}

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: Path) -> TokenTable:
        try:
            text = path.read_text()
        except OSError as exc:
            raise TokenFileError(f"{path}: cannot read: {exc.strerror}") from exc
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            try:
                entries.append(_entry(words))
            except ValueError as exc:
                raise TokenFileError(f"{path}, line {number}: {exc}") from None
        if not entries:
            raise TokenFileError(f"{path}: no tokens (every call would be refused)")
        return cls(entries)

    def tenant_of(self, token: str | None) -> Tenant:
        """The tenant a presented token names; UNAUTHENTICATED for none or an unknown one."""
        if not token:
            raise Unauthenticated(
                "this server requires a bearer token (metadata authorization: Bearer <token>)"
            )
        digest = hashlib.sha256(token.encode()).digest()
        found: Tenant | None = None
        for expected, tenant in self._entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = tenant
        if found is None:
            raise Unauthenticated("the bearer token is not valid on this server")
        return found


_OPTIONS = ("max_sessions", "steps_per_second", "max_queued", "max_queued_bytes")


def _entry(words: list[str]) -> tuple[bytes, Tenant]:
    if len(words) < 2:
        raise ValueError("expected '<sha256 hex> <tenant> [key=value ...]'")
    digest_hex, name, *options = words
    if len(digest_hex) != 64:
        raise ValueError("the first field must be the 64 hex digits of the token's sha256")
    try:
        digest = bytes.fromhex(digest_hex)
    except ValueError:
        raise ValueError("the first field is not hexadecimal") from None
    if not name.isprintable() or _SEPARATOR in name:
        raise ValueError("the tenant name must be printable text")
    limits: dict[str, float] = {}
    models: frozenset[str] | None = None
    for option in options:
        key, _, value = option.partition("=")
        if key == "models":
            models = frozenset(filter(None, value.split(",")))
            if not models:
                raise ValueError("models= needs at least one model name (a,b,...)")
            continue
        if key not in _OPTIONS:
            raise ValueError(f"unknown option {key!r} ({', '.join(_OPTIONS)}, models)")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
        limits[key] = number
    return digest, Tenant(
        name,
        max_sessions=int(limits.get("max_sessions", 0)),
        steps_per_second=limits.get("steps_per_second", 0.0),
        models=models,
        max_queued=int(limits.get("max_queued", 0)),
        max_queued_bytes=int(limits.get("max_queued_bytes", 0)),
    )


class StepRate:
    """A tenant's steps-per-second quota: a token bucket holding one second's worth."""

    __slots__ = ("available", "rate", "updated")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.available = rate
        self.updated = time.monotonic()

    def take(self, tenant: str, timesteps: int) -> None:
        """Spend ``timesteps``, or refuse with TENANT_QUOTA and how long to wait."""
        now = time.monotonic()
        self.available = min(self.rate, self.available + (now - self.updated) * self.rate)
        self.updated = now
        # A request larger than the bucket may pass when it is full: else it
        # could never be served.
        if self.available >= timesteps or self.available >= self.rate:
            self.available -= timesteps
            return
        wait = (min(timesteps, self.rate) - self.available) / self.rate
        raise TenantQuota(
            f"tenant {tenant!r} is at its quota of {self.rate:g} steps per second; "
            f"nothing was applied, retry in {wait:.3f} s",
            quota="steps_per_second",
            limit=f"{self.rate:g}",
            retry_after_seconds=f"{wait:.3f}",
        )

    def give_back(self, timesteps: int) -> None:
        """Return what ``take`` spent on a step that was then not applied."""
        self.available = min(self.rate, self.available + timesteps)
