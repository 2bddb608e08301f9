"""Service settings, read from VERDICT_* environment variables (pydantic-settings).

Each field says when an operator would change it; the README's table says the same.
Tuning that only a benchmark needs lives as a constant next to the code it tunes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.models.roles import Roles, parse_shadows

# Settings of earlier releases: a renamed one stops the server (its value would be lost
# silently), a removed one is ignored with a warning that says why.
RENAMED = {"VERDICT_BODY_TIMEOUT_S": "VERDICT_READ_TIMEOUT_S"}
REMOVED = {
    "VERDICT_INLINE_MAX_US": "cheap CPU runs go on the event loop by a fixed budget",
    "VERDICT_DRIFT_MAX_ROWS_PER_S": "drift samples by a fixed rate cap",
    "VERDICT_BATCHING_ENABLED": "set VERDICT_MAX_BATCH_ROWS=1 or VERDICT_UNBATCHED_MODELS",
    "VERDICT_INTER_OP_THREADS": "sessions run sequentially; inter-op threads had no effect",
    "VERDICT_GRAPH_OPTIMIZATION_LEVEL": "graphs are always fully optimised",
    "VERDICT_METRICS_MULTIPROC_DIR": "set PROMETHEUS_MULTIPROC_DIR (or use --workers)",
    "VERDICT_FEEDBACK_BUSY_TIMEOUT_S": "a locked store is waited for 5 s",
    "VERDICT_FEEDBACK_MAX_ITEMS": "one POST /feedback takes at most 1000 items",
    "VERDICT_LISTEN_WHEN_READY": "--workers always loads before listening",
}
# Settings that still work for now, named in a warning with what replaces them.
DEPRECATED = {"VERDICT_FEEDBACK_DB": "use VERDICT_FEEDBACK_URL=sqlite:///<path>"}
STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


def _split_commas(value: object) -> object:
    """Lists come from the environment as comma-separated text."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def outdated(environ: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(errors for renamed settings, warnings for removed ones) found in the environment."""
    env = os.environ if environ is None else environ
    errors = [f"{old} was renamed {new}" for old, new in RENAMED.items() if old in env]
    warnings = [
        f"{name} is no longer a setting ({why}); ignored"
        for name, why in REMOVED.items()
        if name in env
    ]
    warnings += [f"{name} is deprecated ({how})" for name, how in DEPRECATED.items() if name in env]
    return errors, warnings


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

    model_repository: str = Field(
        default="models", description="Folder holding <name>/<version>/; where your models are."
    )
    host: str = Field(
        default="127.0.0.1", description="Address to bind; 0.0.0.0 to take traffic from others."
    )
    port: int = Field(default=8000, ge=0, le=65535, description="Port to bind.")
    grpc_port: int = Field(
        default=8001,
        ge=-1,
        le=65535,
        description="Port of the gRPC Open Inference Protocol (on the same host; 0 = any free "
        "port; -1 = no gRPC, and grpcio is not loaded); change it where 8001 is taken, or "
        "turn it off when no client uses gRPC.",
    )
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["auto"],
        description="ONNX Runtime execution providers in order, comma-separated, or `auto` "
        "(CUDA when onnxruntime reports it, else CPU); set it to pin a provider.",
    )
    intra_op_threads: int = Field(
        default=1,
        ge=0,
        description="Threads one model run may use (0 = ONNX Runtime's default); raise it for "
        "large models on many cores served by one process.",
    )
    max_batch_rows: int = Field(
        default=64,
        ge=1,
        description="Most rows merged into one model run; 1 merges nothing. Raise it for "
        "models that gain from larger batches (GPUs).",
    )
    max_queue_delay_ms: float = Field(
        default=1.0,
        ge=0,
        description="Longest wait to fill a batch while other requests are queued; raise it to "
        "trade latency for throughput.",
    )
    max_queue_rows: int = Field(
        default=4096,
        ge=1,
        description="Rows that may wait per model version before answering 503; lower it to "
        "shed load sooner.",
    )
    unbatched_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models (comma-separated) whose requests are never merged: for a model "
        "whose answers depend on what else is in its batch.",
    )
    version_policy: str = Field(
        default="all",
        description="Versions to load: all (requests without a version get the latest), "
        "latest, latest:N, or specific:1,3.",
    )
    poll_interval_s: float = Field(
        default=0.0,
        ge=0,
        description="Re-scan the model repository every N seconds (0 = off); set it to pick up "
        "new versions without the admin API.",
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1, description="Largest request body (413 beyond)."
    )
    max_rows_per_request: int = Field(
        default=10_000,
        ge=1,
        description="Most rows in one request; lower it so that one client cannot hold a model "
        "for long.",
    )
    read_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest time to receive a whole request, headers and body, from its first "
        "byte; a slower or stalled one gets 408 and the connection closes.",
    )
    max_inflight_requests: int = Field(
        default=64,
        ge=0,
        description="Most POST requests handled at once (bodies being read or waiting for a "
        "model); beyond it 503 with Retry-After before the body is read (0 = no limit).",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, /predict, infer and /feedback need one.",
    )
    admin_api_key: SecretStr | None = Field(
        default=None,
        description="Bearer key for the repository extension (load, unload, index); unset = "
        "that extension is disabled.",
    )
    feedback_url: SecretStr | None = Field(
        default=None,
        description="The feedback store: `sqlite:///var/feedback.sqlite3` (a file, the default; "
        "one replica, or processes on one host) or `postgresql://user:password@host:5432/db` "
        "(shared by every replica: needed for more than one host). Unset = "
        "`sqlite:///<VERDICT_FEEDBACK_DB>`.",
    )
    feedback_db: str = Field(
        default="var/feedback.sqlite3",
        description="Deprecated (use VERDICT_FEEDBACK_URL=sqlite:///<path>): the SQLite file "
        "when VERDICT_FEEDBACK_URL is unset.",
    )
    prediction_id_key: SecretStr | None = Field(
        default=None,
        description="Key that signs prediction ids; set the same one on every replica. Unset = "
        "generated once and kept by the feedback store: a file beside the SQLite file "
        "(prediction-id.key, mode 0600), or a row of the PostgreSQL database.",
    )
    capture_rates: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description="Input capture, per model: `model=rate` pairs, comma-separated (e.g. "
        "`breast-cancer=0.01`), the share of predicted rows whose inputs are stored with "
        "their prediction id in the feedback store; empty = capture off. Set it to collect "
        "labelled production examples for retraining (docs/lifecycle.md).",
    )
    capture_max_rows_per_s: int = Field(
        default=100,
        ge=1,
        description="Most rows a second captured per model by one server process; sampled "
        "rows beyond are dropped. Raise it only with a store that takes the writes.",
    )
    capture_max_rows: int = Field(
        default=100_000,
        ge=1,
        description="Most captured rows kept per model in the store; new rows beyond are "
        "dropped until the retention frees room. Size it to rate x rows a day x retention.",
    )
    capture_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="Captures older than this are deleted (checked hourly while capture is "
        "on). Lower it to what your data policy allows; keep it above the labels' delay.",
    )
    capture_drop_features: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Features never stored, as `model:feature` entries, comma-separated "
        "(e.g. `breast-cancer:mean radius`); a name the model does not have turns its capture "
        "off. Set it for features your data policy does not let you keep.",
    )
    drain_seconds: float = Field(
        default=10.0,
        ge=0,
        description="Graceful shutdown: time to finish requests in flight; keep it below your "
        "orchestrator's kill grace period.",
    )
    metrics_require_key: bool = Field(
        default=False,
        description="When true and API keys are set, GET /metrics needs one of them too.",
    )
    log_json: bool = Field(
        default=False, description="Log one JSON object per line (for log collectors)."
    )
    access_log: bool = Field(
        default=False,
        description="Log one line per request (method, path, status, duration, request id).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Allowed CORS origins (comma-separated, or *) for browser clients; "
        "empty = CORS off.",
    )
    shadows: str = Field(
        default="",
        description="Shadow versions, `name=version[:rate]` comma-separated (e.g. "
        "`breast-cancer=2:0.1`): the version runs on that share of the model's requests, off "
        "the response path, and its decisions are scored by the same labels. A model's "
        "roles.json takes precedence, and the roles an admin call kept in the feedback store "
        "over both. Set it to evaluate a challenger on live traffic.",
    )
    promotion_min_labels: int = Field(
        default=200,
        ge=2,
        description="Fewest labelled rows that both the primary and the shadow decided before a "
        "promotion may be granted; raise it where errors are rare.",
    )
    promotion_confidence: float = Field(
        default=0.95,
        gt=0.5,
        lt=1.0,
        description="One-sided confidence with which the shadow's expected cost per row must be "
        "below the primary's for a promotion; raise it for costly mistakes.",
    )
    monitored_features_max: int = Field(
        default=32,
        ge=0,
        description="Most input features counted into drift histograms per model; raise it for "
        "wide models whose every feature matters.",
    )

    @field_validator("providers", "unbatched_models", "cors_origins", "api_keys", mode="before")
    @classmethod
    def _lists_from_commas(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("capture_rates", mode="before")
    @classmethod
    def _rates_from_pairs(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        rates: dict[str, str] = {}
        for part in value.split(","):
            if not part.strip():
                continue
            model, sep, rate = part.partition("=")
            if not sep or not model.strip():
                raise ValueError(f"capture rates are model=rate pairs; got {part!r}")
            rates[model.strip()] = rate.strip()
        return rates

    @field_validator("capture_rates")
    @classmethod
    def _rates_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for model, rate in value.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"the capture rate of {model!r} must be in [0, 1]; got {rate}")
        return value

    @field_validator("capture_drop_features", mode="before")
    @classmethod
    def _drop_entries(cls, value: object) -> object:
        entries = _split_commas(value)
        for entry in entries if isinstance(entries, list) else []:
            model, sep, feature = str(entry).partition(":")
            if not sep or not model.strip() or not feature.strip():
                raise ValueError(f"features to drop are model:feature entries; got {entry!r}")
        return entries

    @field_validator("feedback_url")
    @classmethod
    def _known_store(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(STORE_SCHEMES):
            raise ValueError(f"the feedback store URL must start with one of {STORE_SCHEMES}")
        return value

    @model_validator(mode="after")
    def _one_store_setting(self) -> Settings:
        if self.feedback_url is not None and "feedback_db" in self.model_fields_set:
            raise ValueError(
                "set VERDICT_FEEDBACK_URL or the deprecated VERDICT_FEEDBACK_DB, not both"
            )
        return self

    @field_validator("shadows")
    @classmethod
    def _valid_shadows(cls, value: str) -> str:
        parse_shadows(value)
        return value

    @field_validator("version_policy")
    @classmethod
    def _valid_policy(cls, value: str) -> str:
        VersionPolicy.parse(value)
        return value

    @property
    def store_url(self) -> str:
        """The feedback store's URL: VERDICT_FEEDBACK_URL, else the SQLite file's."""
        if self.feedback_url is not None:
            return self.feedback_url.get_secret_value()
        path = self.feedback_db
        # A SQLite `file:` URI (e.g. `file:/data/f.db?mode=ro`) keeps its parameters.
        return "sqlite:///" + (path.removeprefix("file:") if path.startswith("file:") else path)

    def shadow_roles(self) -> dict[str, Roles]:
        """The roles VERDICT_SHADOWS gives, by model."""
        return parse_shadows(self.shadows)

    @property
    def policy(self) -> VersionPolicy:
        """The parsed version policy."""
        return VersionPolicy.parse(self.version_policy)

    def batching_for(self, model: str) -> bool:
        """Whether requests to this model may be merged with others."""
        return model not in self.unbatched_models

    def capture_drop(self) -> dict[str, frozenset[str]]:
        """The features never stored, per model."""
        drop: dict[str, set[str]] = {}
        for entry in self.capture_drop_features:
            model, _, feature = entry.partition(":")
            drop.setdefault(model.strip(), set()).add(feature.strip())
        return {model: frozenset(features) for model, features in drop.items()}

    def keys(self) -> list[str]:
        """The configured API keys (empty ones dropped)."""
        return [k.get_secret_value() for k in self.api_keys if k.get_secret_value()]

    def admin_key(self) -> str | None:
        """The admin key, or None when the repository extension is off."""
        if self.admin_api_key is None or not self.admin_api_key.get_secret_value():
            return None
        return self.admin_api_key.get_secret_value()
