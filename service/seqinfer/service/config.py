"""Server settings: defaults < YAML file (``--config``) < env ``SEQINFER_*`` < CLI flags.

Nothing is read at import time: ``load_settings`` is called once by the CLI
(or by tests with explicit values), and everything downstream receives the
validated ``Settings`` object. Nor is anything kept between loads: each
load ranks its own YAML file through a class of its own, so two loads in one
process (tests, threads) never see each other's values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ConfigError(Exception):
    """Settings could not be loaded; the message says which field and why."""


class Settings(BaseSettings):
    """Every knob of the server. Field docs feed the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="SEQINFER_", extra="forbid")

    host: str = Field("127.0.0.1", description="Address to bind the gRPC server to.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_host: str = Field("127.0.0.1", description="Address of the Prometheus endpoint.")
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="Prometheus /metrics port; 0 disables metrics."
    )
    metrics_tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) for /metrics; with its key, serve HTTPS only."
    )
    metrics_tls_key_file: Path | None = Field(
        None, description="PEM private key of metrics_tls_cert_file."
    )
    metrics_tenant_label: bool = Field(
        False,
        description="Also count gRPC calls by tenant (seqinfer_tenant_requests_total); "
        "one series per tenant, method and code.",
    )
    device: str = Field("auto", description="`auto` (cuda if present), `cpu`, `cuda`, `cuda:N`.")
    model_repository: Path | None = Field(
        None, description="Directory of model directories to serve besides the built-ins."
    )
    strict_models: bool = Field(
        False, description="Refuse to start if any model in the repository fails to load."
    )
    default_model: str | None = Field(
        None, description="Model used when a request names none (default: the built-in one)."
    )
    max_batch_size: int = Field(256, ge=1, description="Most sessions stepped in one batch.")
    max_batch_delay_ms: float = Field(
        0.0,
        ge=0,
        description="How long a batch may wait to fill up while the engine is idle (ms).",
    )
    inline_max_timesteps: int = Field(
        1,
        ge=0,
        description="Batches of at most this many timesteps run on the event-loop thread "
        "when the engine thread is idle (saves two thread hand-offs at light load); 0: never.",
    )
    max_queue_size: int = Field(
        65536, ge=1, description="Requests queued per model before QUEUE_FULL."
    )
    max_queue_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="Bytes of request inputs queued per model before QUEUE_FULL "
        "(a request is always accepted into an empty queue).",
    )
    max_session_queue_size: int = Field(
        1024,
        ge=1,
        description="Requests queued per session before QUEUE_FULL, so one session "
        "cannot fill its model's queue.",
    )
    max_session_queue_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="Bytes of request inputs queued per session before QUEUE_FULL "
        "(a request is always accepted into an empty queue).",
    )
    max_queue_wait_ms: float = Field(
        0.0,
        ge=0,
        description="Refuse a step (QUEUE_FULL) whose expected wait in its model's queue, "
        "at the measured drain rate and its tenant's round-robin share, is longer; 0 = off.",
    )
    tenant_max_queued: int = Field(
        0,
        ge=0,
        description="Default queued-requests quota of each token-file tenant (all models; "
        "TENANT_QUOTA beyond it), where its line sets no max_queued; 0 = none.",
    )
    tenant_max_queued_bytes: int = Field(
        0,
        ge=0,
        description="Default quota of request input bytes queued per token-file tenant, "
        "where its line sets no max_queued_bytes; 0 = none.",
    )
    max_stream_unsent: int = Field(
        4096,
        ge=1,
        description="Requests of one stream read and not yet answered on the wire; at "
        "the bound the server stops reading that stream until replies go out.",
    )
    max_stream_unsent_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="Request and reply bytes of one stream's unanswered requests; at "
        "the bound the server stops reading that stream until replies go out.",
    )
    max_concurrent_rpcs: int = Field(
        10_000,
        ge=1,
        le=1 << 29,  # twice this goes to gRPC as a C int
        description="Seqinfer calls handled at once (a stream counts once); more are "
        "refused with QUEUE_FULL. Also caps gRPC's own queue of calls not yet picked up.",
    )
    max_streams_per_connection: int = Field(
        0,
        ge=0,
        le=(1 << 31) - 1,
        description="Calls one client connection may have open at once (HTTP/2 "
        "max_concurrent_streams, StreamSteps streams included); a client past it waits in "
        "its own transport, so the excess never reaches the server's event loop. "
        "0: no limit (gRPC's default).",
    )
    max_timesteps: int = Field(4096, ge=1, description="Largest T in one request.")
    long_chunk_threshold: int = Field(
        16, ge=2, description="T at which a request runs through the full-sequence nn.GRU."
    )
    max_step_many: int = Field(4096, ge=1, description="Most steps in one StepMany message.")
    initial_capacity: int = Field(1024, ge=1, description="State slab slots at start-up.")
    max_sessions: int = Field(1_000_000, ge=1, description="Open sessions per model.")
    eviction: Literal["reject", "lru"] = Field(
        "reject",
        description="At max_sessions: `reject` new sessions (CAPACITY_FULL) or evict the "
        "least recently used idle one (`lru`).",
    )
    idle_ttl_seconds: float = Field(
        3600.0, ge=0, description="Default idle TTL of a session; 0 means never expire."
    )
    sweep_interval_seconds: float = Field(
        1.0, gt=0, description="How often expired sessions are swept."
    )
    allow_non_finite_inputs: bool = Field(
        False, description="Accept NaN/Inf in dense inputs (rejected by default)."
    )
    max_session_id_bytes: int = Field(128, ge=1, description="Longest accepted session id.")
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="gRPC receive/send message size limit."
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM or SIGINT, the one deadline for the drain: accepted work "
        "finishes within it, what is left is then cancelled.",
    )
    torch_threads: int = Field(
        0, ge=0, description="Intra-op torch threads; 0 = cores - 1 (the event loop needs one)."
    )
    reflection: bool = Field(True, description="Serve gRPC server reflection (for grpcurl).")
    frontends: int | Literal["auto"] = Field(
        "auto",
        description="gRPC front-end processes feeding one engine process; 0 = one process "
        "for both; `auto`: 0 on machines with up to 2 cores, else cores - 2 up to max_frontends.",
    )
    max_frontends: int = Field(8, ge=1, description="The most front ends `auto` starts.")
    frontend_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio",
        description="The event loop of each front-end process (with frontends >= 1): "
        "`uvloop` needs the uvloop package (docs/benchmarks.md has the measured difference).",
    )
    auth_token_file: Path | None = Field(
        None,
        description="File of bearer tokens (their sha256) and tenants; without one, no "
        "authentication and one anonymous tenant (see docs/security.md).",
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM server certificate (chain); with tls_key_file, serve TLS only."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle that client certificates are verified against (mTLS)."
    )
    tls_require_client_cert: bool = Field(
        False, description="Refuse clients without a certificate from tls_client_ca_file."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO")
    max_request_id_bytes: int = Field(
        128, ge=1, description="Longest accepted request id (echoed in replies, kept per session)."
    )
    cuda_graphs: bool = Field(
        True,
        description="On CUDA, capture the single-step batch as a CUDA graph per batch-size "
        "bucket (powers of two up to max_batch_size) at start-up; batches are padded to "
        "their bucket. No effect on CPU.",
    )
    precision: Literal["model", "float32", "bfloat16", "float16"] = Field(
        "model",
        description="Dtype of every model's weights and state: `model` (each model's own) "
        "or one for all. Replies keep the model's dtype; float32 runs with TF32 off.",
    )
    max_state_bytes: int = Field(
        0,
        ge=0,
        description="Bytes of state slab per model at most (caps growth as max_sessions "
        "does); 0 = no byte limit.",
    )
    durability: Literal["none", "snapshot", "write-through"] = Field(
        "none",
        description="`none`: sessions end with the process; `snapshot`: written to "
        "state_dir on SIGTERM and every snapshot_interval_seconds, restored on start; "
        "`write-through`: every step's reply waits for its batch's commit (one per batch), "
        "so no acknowledged step is lost in a crash (see docs/durability.md).",
    )
    state_dir: Path | None = Field(
        None, description="Directory of the session store (required unless durability is none)."
    )
    state_store: Literal["sqlite", "redis"] = Field(
        "sqlite",
        description="Where durability keeps sessions: `sqlite` (a file in state_dir) or "
        "`redis` (redis_url; shared, see docs/durability.md).",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="With state_store redis: the Redis to keep sessions in "
        "(redis:// or rediss:// URL, password in the URL if any).",
    )
    redis_key_prefix: str = Field(
        "seqinfer:session:",
        min_length=1,
        description="With state_store redis: the prefix of every session key "
        "(several deployments can share one Redis).",
    )
    snapshot_interval_seconds: float = Field(
        30.0,
        ge=0,
        description="With durability snapshot: how often changed sessions are written "
        "(a crash loses at most this window); 0 = only on shutdown. With write-through: "
        "how often what no step wrote (forks, imports, closed sessions) is written.",
    )
    device_sessions: int = Field(
        0,
        ge=0,
        description="With durability snapshot or write-through: state slab slots per model at "
        "most; when they are all taken, the least recently used idle sessions are written to "
        "the store and their slots freed, and come back on their next use (tiering; "
        "max_sessions then counts both tiers). 0 = no separate bound.",
    )
    restore: Literal["eager", "lazy"] = Field(
        "eager",
        description="With durability: on start, restore every session before serving "
        "(`eager`), or read only each record's header and restore a session on its first "
        "use (`lazy`).",
    )
    sync_commits: bool = Field(
        True,
        description="With durability write-through: fsync every batch's commit (SQLite "
        "synchronous=FULL), so a crash of the machine loses no acknowledged step either; "
        "false: synchronous=NORMAL, acknowledged steps survive a crash of the process, the "
        "last commits may be lost with the machine (faster: see docs/durability.md).",
    )

    @field_validator("frontends")
    @classmethod
    def _frontends(cls, value: int | str) -> int | str:
        if value != "auto" and (not isinstance(value, int) or value < 0 or value > 256):
            raise ValueError("must be auto or a number of processes in [0, 256]")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.metrics_port and self.metrics_port == self.port and self.metrics_host == self.host:
            raise ValueError("metrics_port must differ from port")
        if (self.metrics_tls_cert_file is None) != (self.metrics_tls_key_file is None):
            raise ValueError("metrics_tls_cert_file and metrics_tls_key_file go together")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file (TLS)")
        if self.tls_require_client_cert and self.tls_client_ca_file is None:
            raise ValueError("tls_require_client_cert needs tls_client_ca_file")
        if self.durability != "none" and self.state_store == "sqlite" and self.state_dir is None:
            raise ValueError(
                f"durability {self.durability} needs state_dir (--state-dir or "
                "SEQINFER_STATE_DIR), the directory its session store lives in"
            )
        if self.durability == "none" and (self.device_sessions or self.restore == "lazy"):
            raise ValueError(
                "device_sessions and restore lazy need durability snapshot or write-through: "
                "sessions off the device are kept in the store"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Built directly (tests, benchmarks): keyword values over env; no files.
        # load_settings adds the YAML file below env (see _with_yaml).
        return (init_settings, env_settings)


class _YamlSource(PydanticBaseSettingsSource):
    """One load's YAML values, ranked below env and CLI flags by ``_with_yaml``."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def _with_yaml(values: dict[str, Any]) -> type[Settings]:
    """A Settings class for one load whose lowest-ranked source is that load's YAML.

    pydantic-settings builds sources in a classmethod, which sees no
    constructor arguments; a class per load carries the values in a closure,
    so concurrent loads (or tests in one process) cannot see each other's file.
    """

    class _LoadedSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # First wins: CLI flags (init) over env over the YAML file.
            return (init_settings, env_settings, _YamlSource(settings_cls, values))

    return _LoadedSettings


def read_yaml_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of setting: value")
    # Accept the env-style spelling too (max-batch-size), as the CLI flags use it.
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build validated settings; ``overrides`` are CLI flags (None means "not given")."""
    given = {key: value for key, value in overrides.items() if value is not None}
    settings_cls = _with_yaml(read_yaml_config(config_file) if config_file else {})
    try:
        loaded = settings_cls(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
    # Hand back a plain Settings (equal to one built directly with the same
    # values); the per-load class only existed to rank its sources.
    return Settings.model_construct(_fields_set=loaded.model_fields_set, **dict(loaded))


def torch_thread_count(settings: Settings) -> int:
    return settings.torch_threads or max(1, (os.cpu_count() or 2) - 1)
