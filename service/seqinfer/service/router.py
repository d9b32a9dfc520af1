"""Finds the model runtime for a command: by model name/version, or by session id (engine side).

Session ids are unique across all models of a server, so a step request
needs only the id. A tenant with a model allow-list (``models=`` in the
token file) is routed as if only those models were served: any other name
gets the very error, message included, of a name that is not served at all,
so the list of another tenant's models does not leak. Lookup asks each
model's table in turn: a server has a handful of models, and this keeps one
index per session, not two.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from seqinfer.service.bounds import utf8_size
from seqinfer.service.errors import (
    InvalidInput,
    ModelNotFound,
    SessionExists,
    SessionNotFound,
    echo,
)
from seqinfer.service.runtime import ModelRuntime
from seqinfer.service.sessions import Session
from seqinfer.service.tenants import session_key


def _version_key(version: str) -> tuple[tuple[int, object], ...]:
    # "10" sorts after "9"; non-numeric parts compare as text.
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-_]", version))


class Router:
    def __init__(
        self,
        runtimes: list[ModelRuntime],
        default_model: str,
        allowed: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """``allowed``: model names by tenant, for tenants limited to some (others see all)."""
        self.runtimes = runtimes
        self.default_model = default_model
        self.allowed: Mapping[str, frozenset[str]] = allowed or {}
        self._by_name: dict[str, list[ModelRuntime]] = {}
        for runtime in runtimes:
            self._by_name.setdefault(runtime.spec.name, []).append(runtime)
        for versions in self._by_name.values():
            versions.sort(key=lambda r: _version_key(r.spec.version), reverse=True)

    def visible(self, tenant: str = "") -> list[ModelRuntime]:
        """The runtimes a tenant may see and use."""
        allowed = self.allowed.get(tenant)
        if allowed is None:
            return self.runtimes
        return [r for r in self.runtimes if r.spec.name in allowed]

    def model(self, name: str, version: str = "", tenant: str = "") -> ModelRuntime:
        wanted = name or self.default_model
        allowed = self.allowed.get(tenant)
        versions = self._by_name.get(wanted) if allowed is None or wanted in allowed else None
        if not versions:
            names = self._by_name if allowed is None else allowed.intersection(self._by_name)
            raise ModelNotFound(
                f"no model named {echo(name)}; served: {', '.join(sorted(names))}",
                model=name,
            )
        if not version:
            return versions[0]
        for runtime in versions:
            if runtime.spec.version == version:
                return runtime
        raise ModelNotFound(
            f"model {echo(name)} has no version {echo(version)}; served: "
            f"{', '.join(r.spec.version for r in versions)}",
            model=name,
            version=version,
        )

    def find(self, session_id: str, tenant: str = "") -> tuple[ModelRuntime, Session]:
        key = session_key(tenant, session_id)
        for runtime in self.runtimes:
            session = runtime.table.by_id.get(key)
            if session is not None:
                return runtime, session
        raise self.missing(session_id, tenant)

    def missing(self, session_id: str, tenant: str = "") -> SessionNotFound:
        """The most specific reason any model remembers for this id (of this tenant)."""
        for runtime in self.runtimes:
            error = runtime.table.missing(session_id, tenant)
            if type(error) is not SessionNotFound:
                return error
        return SessionNotFound(f"session {echo(session_id)} not found", session_id=session_id)

    def ensure_unused(self, session_id: str, tenant: str = "") -> None:
        key = session_key(tenant, session_id)
        for runtime in self.runtimes:
            if key in runtime.table:
                raise SessionExists(
                    f"session {echo(session_id)} already exists (model {runtime.key})",
                    session_id=session_id,
                )


def check_session_id(session_id: str, field: str, max_bytes: int, *, required: bool) -> int:
    """The id's size in bytes (0 when absent and not required)."""
    if not session_id:
        if required:
            raise InvalidInput(field, "is required")
        return 0
    size = utf8_size(session_id)
    if size > max_bytes:
        raise InvalidInput(field, f"is {size} bytes; the limit is {max_bytes}")
    if not session_id.isprintable():
        raise InvalidInput(field, "must be printable text (no control characters)")
    return size
