"""Hooks through which the server reports what it does, kept apart from their export.

Domain code (scheduler, state, api) calls an ``Observer``; the base class does
nothing, so a server with metrics off pays one no-op method call per event.
``seqinfer.service.metrics`` subclasses it to feed Prometheus. Levels that are
cheaper to read than to track (sessions, slab occupancy, queue depth) are not
pushed: the exporter pulls ``RuntimeStats`` from each model at scrape time.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RuntimeStats:
    """A point-in-time reading of one served model."""

    model: str  # "name:version"
    device: str
    sessions_by_tier: dict[str, int] = field(default_factory=dict)  # "device"|"host"|"store"
    slab_capacity: int = 0  # slots allocated in the state slab
    slab_used: int = 0  # slots holding a session
    slab_bytes: int = 0  # bytes of the slab tensor
    queue_depth: int = 0  # requests accepted and not yet computed
    device_memory_bytes: int | None = None  # torch.cuda.memory_allocated on CUDA, else None
    weights_bytes: int = 0  # bytes of the model's weights on its device
    graph_bytes: int = 0  # static step buffers and CUDA graph pools (0 without them)


class Observer:
    """No-op base. Every method must stay cheap: most are called on the hot path.

    Every hook is called on the server's event loop thread (from the api, the
    scheduler and the runtime; the engine thread reports nothing), so an
    implementation needs no lock against itself.

    ``model`` arguments are "name:version" strings; reasons and methods come
    from small fixed sets, never from request content.
    """

    def rpc_started(self, method: str) -> None:
        """A gRPC call started; ``method`` is e.g. "Step" (a stream counts once)."""

    def rpc_finished(self, method: str, code: str, seconds: float) -> None:
        """It finished with status ``code`` (a grpc.StatusCode name, e.g. "OK")."""

    def tenant_call_finished(self, tenant: str, method: str, code: str) -> None:
        """A call of a tenant (named by its token) finished with ``code``. Called only
        with ``metrics_tenant_label`` on: tenant names are as many as the token file has."""

    def request_completed(
        self, model: str, timesteps: int, latency_seconds: float, queue_seconds: float
    ) -> None:
        """A step request was computed: T timesteps, end-to-end and queue-wait time."""

    def request_rejected(self, model: str, reason: str) -> None:
        """A step request was refused: reason in {"backpressure", "deadline", "invalid",
        "cancelled", "capacity", "draining", "step_gap", "quota", "store", "stale"}."""

    def batch_completed(self, model: str, requests: int, timesteps: int, seconds: float) -> None:
        """One scheduler iteration ran the engine over ``requests`` sessions."""

    def session_opened(self, model: str) -> None:
        """A session was created (open, start, fork or import)."""

    def session_ended(self, model: str, reason: str) -> None:
        """A session ended: reason in {"closed", "expired", "evicted", "refused"} (refused:
        its record in the store could not be restored)."""

    def sessions_spilled(self, model: str, count: int) -> None:
        """``count`` idle sessions were written to the store and freed their slots."""

    def session_restored(self, model: str, seconds: float) -> None:
        """A session came back from the store ``seconds`` after it was first needed."""


NULL_OBSERVER = Observer()
