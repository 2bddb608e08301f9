"""Service settings, read from VERDICT_* environment variables (pydantic-settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

GraphOptimizationLevel = Literal["disable", "basic", "extended", "all"]


def _split_commas(value: object) -> object:
    """Lists come from the environment as comma-separated text."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions of a model to serve: the latest N, all, or a specific set."""

    kind: Literal["latest", "all", "specific"]
    count: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to load out of those found on disk, in increasing order."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[-self.count :] if ordered else []

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        """`latest`, `latest:N`, `all` or `specific:1,3`."""
        head, _, tail = text.strip().partition(":")
        if head == "all" and not tail:
            return cls("all")
        if head == "latest":
            count = int(tail) if tail else 1
            if count < 1:
                raise ValueError("latest:N needs N >= 1")
            return cls("latest", count=count)
        if head == "specific" and tail:
            return cls("specific", versions=tuple(int(v) for v in tail.split(",") if v.strip()))
        expected = "latest, latest:N, all or specific:1,2"
        raise ValueError(f"version policy must be {expected}; got {text!r}")


class Settings(BaseSettings):
    """Every setting of the service; each reads VERDICT_<NAME> from the environment."""

    model_config = SettingsConfigDict(env_prefix="VERDICT_", extra="ignore")

    model_repository: str = Field(default="models", description="Folder holding <name>/<version>/.")
    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to bind.")
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["auto"],
        description="ONNX Runtime execution providers in order, comma-separated, or `auto` "
        "(CUDA when onnxruntime reports it, else CPU).",
    )
    intra_op_threads: int = Field(
        default=1, ge=0, description="ORT intra-op threads (0 = ORT default)."
    )
    inter_op_threads: int = Field(
        default=1, ge=0, description="ORT inter-op threads (0 = ORT default)."
    )
    graph_optimization_level: GraphOptimizationLevel = Field(
        default="all", description="ORT graph optimisation level: disable, basic, extended or all."
    )
    max_batch_rows: int = Field(
        default=64, ge=1, description="Most rows merged into one session.run."
    )
    max_queue_delay_ms: float = Field(
        default=1.0,
        ge=0,
        description="Longest wait to fill a batch while other requests are queued.",
    )
    max_queue_rows: int = Field(
        default=4096, ge=1, description="Rows that may wait per model version before answering 503."
    )
    inline_max_us: float = Field(
        default=200.0,
        ge=0,
        description="CPU model runs predicted (from warm-up timings, then every run) to take "
        "at most this many microseconds run on the event loop, the requests of one loop turn "
        "merged, and the runs of one turn stop at about this much (the rest wait for the next "
        "turn); slower runs, and every GPU model, run on the model's own thread "
        "(0 = always on the thread).",
    )
    batching_enabled: bool = Field(
        default=True, description="Merge concurrent requests into batches."
    )
    unbatched_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Models (comma-separated) for which batching is off."
    )
    version_policy: str = Field(
        default="all",
        description="Versions to load: all (requests without a version get the latest), "
        "latest, latest:N, or specific:1,3.",
    )
    poll_interval_s: float = Field(
        default=0.0, ge=0, description="Re-scan the model repository every N seconds (0 = off)."
    )
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1, description="Largest request body.")
    max_rows_per_request: int = Field(default=10_000, ge=1, description="Most rows in one request.")
    body_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest time to receive a whole request body; slower bodies get 408.",
    )
    max_inflight_requests: int = Field(
        default=64,
        ge=0,
        description="Most POST requests handled at once (bodies being read or waiting for a "
        "model); beyond it the answer is 503 with Retry-After before the body is read "
        "(0 = no limit).",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, /predict, infer and /feedback need one.",
    )
    admin_api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key for the repository extension; unset = extension disabled.",
    )
    feedback_db: str = Field(
        default="var/feedback.sqlite3", description="SQLite file for feedback."
    )
    feedback_max_items: int = Field(
        default=1000, ge=1, description="Most items in one POST /feedback."
    )
    feedback_busy_timeout_s: float = Field(
        default=5.0, ge=0, description="How long a feedback write waits for a locked store."
    )
    prediction_id_key: SecretStr | None = Field(
        default=None,
        description="Key that signs prediction ids (share it across replicas); unset = generated "
        "once and kept in <dir of feedback_db>/prediction-id.key (mode 0600).",
    )
    drain_seconds: float = Field(
        default=10.0, ge=0, description="Graceful shutdown: time to finish requests in flight."
    )
    metrics_multiproc_dir: str | None = Field(
        default=None,
        description="prometheus-client multiprocess folder (several worker processes).",
    )
    metrics_require_key: bool = Field(
        default=False,
        description="When true and API keys are set, GET /metrics needs one of them too.",
    )
    log_json: bool = Field(default=False, description="Log one JSON object per line.")
    access_log: bool = Field(
        default=False,
        description="Log one line per request (method, route, status, duration, request id).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Allowed CORS origins (comma-separated); empty = off."
    )
    monitored_features_max: int = Field(
        default=32, ge=0, description="Most input features counted into drift histograms per model."
    )
    listen_when_ready: bool = Field(
        default=False,
        description="Load every model before accepting connections (each worker of "
        "--workers N does; a single process answers liveness at once and loads in the "
        "background).",
    )
    drift_max_rows_per_s: float = Field(
        default=10_000,
        ge=0,
        description="Rows per second and model version binned for drift; beyond it a uniform "
        "sample of whole requests (0 = every row).",
    )

    @field_validator("providers", "unbatched_models", "cors_origins", "api_keys", mode="before")
    @classmethod
    def _lists_from_commas(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("version_policy")
    @classmethod
    def _valid_policy(cls, value: str) -> str:
        VersionPolicy.parse(value)
        return value

    @property
    def policy(self) -> VersionPolicy:
        """The parsed version policy."""
        return VersionPolicy.parse(self.version_policy)

    def batching_for(self, model: str) -> bool:
        """Whether requests to this model are merged into batches."""
        return self.batching_enabled and model not in self.unbatched_models
