"""Every Prometheus metric of the service, owned by one object built on a given registry.

The names and labels are the contract of docs/architecture.md: the alert rules and the
dashboard in deploy/ use them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

from service.monitoring.buffers import (
    Buffered,
    BufferedClassCounts,
    BufferedCounter,
    BufferedGauge,
    BufferedHistogram,
    DirectHistogram,
    histogram_buffer,
)
from service.monitoring.quality import alert_min_labelled

LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SCORE_BUCKETS = (*(round(0.05 * i, 2) for i in range(1, 20)), 1.0)
MINUTE, HOUR, DAY, WEEK = 60.0, 3600.0, 86400.0, 604800.0
LABEL_DELAY_BUCKETS = (
    1.0,
    10.0,
    MINUTE,
    10 * MINUTE,
    HOUR,
    6 * HOUR,
    DAY,
    3 * DAY,
    WEEK,
    2 * WEEK,
    4 * WEEK,
)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The transports, as the `protocol` label of the series that count requests.
PROTOCOLS = ("rest", "grpc")


class _FlushFirst:
    """Registered on the registry before any metric: every collection (a /metrics answer, a
    test's `get_sample_value`) flushes the buffers first, so what it reads is exact."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        self._metrics.flush()
        return []


class Metrics:
    """The metrics of docs/architecture.md; one instance per app, on its own registry.

    The per-request series (inference outcomes, predictions by label, score, batch size,
    queue and compute time, queue depth, HTTP duration) are updated through buffers
    (`monitoring.buffers`), flushed before every collection.
    """

    def __init__(self, registry: CollectorRegistry, multiproc: str | None = None) -> None:
        self.registry = registry
        self.multiproc = multiproc
        self._info: set[tuple[str, ...]] = set()
        r = registry
        self._buffers: list[Buffered] = []
        registry.register(_FlushFirst(self))
        self.http_duration = Histogram(
            "verdict_http_request_duration_seconds",
            "HTTP request duration by route template, method and status code.",
            ["route", "method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_duration = Histogram(
            "verdict_grpc_request_duration_seconds",
            "gRPC request duration by method and status code.",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "verdict_inference_duration_seconds",
            "Time a request spends queued for a batch, and computing in ONNX Runtime.",
            ["model", "version", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "verdict_batch_size",
            "Rows per session.run.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "verdict_queue_depth",
            "Rows waiting for a batch.",
            ["model", "version"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.inference_requests = Counter(
            "verdict_inference_requests",
            "Inference requests by outcome (ok, invalid, overloaded, error) and protocol.",
            ["model", "version", "outcome", "protocol"],
            registry=r,
        )
        self.model_info = Gauge(
            "verdict_model_info",
            "Served model versions (value 1) with the providers in use and the threshold.",
            ["model", "version", "provider", "threshold"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.predictions = Counter(
            "verdict_predictions",
            "Predicted rows by label.",
            ["model", "version", "label"],
            registry=r,
        )
        self.prediction_score = Histogram(
            "verdict_prediction_score",
            "Score (probability of the positive class) of binary predictions.",
            ["model", "version"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.feedback_items = Counter(
            "verdict_feedback_items",
            "Feedback items by result (accepted, duplicate, conflict, unknown, invalid).",
            ["model", "result"],
            registry=r,
        )
        self.labeled_predictions = Counter(
            "verdict_labeled_predictions",
            "Predictions whose ground truth arrived, by predicted and actual label.",
            ["model", "version", "predicted", "actual"],
            registry=r,
        )
        self.outcomes = Counter(
            "verdict_outcomes",
            "Binary outcomes of labelled predictions (tp, fp, tn, fn).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.label_delay = Histogram(
            "verdict_label_delay_seconds",
            "Time from prediction to its ground truth.",
            ["model"],
            buckets=LABEL_DELAY_BUCKETS,
            registry=r,
        )
        self.capture_rows = Counter(
            "verdict_capture_rows",
            "Sampled rows of input capture by what became of them: stored, dropped_full (the "
            "writer's queue was full), dropped_rate (rows/s cap), dropped_cap (stored-rows cap), "
            "failed (the store failed).",
            ["model", "outcome"],
            registry=r,
        )
        self.objective_ratio = Gauge(
            "verdict_objective_ratio",
            "Business targets from the manifest (max_fnr, max_fpr).",
            ["model", "objective"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.objective_min_labeled = Gauge(
            "verdict_objective_min_labeled",
            "Fewest labelled rows of the class in a window before an alert on the objective "
            "may fire (max_fnr: positives, max_fpr: negatives).",
            ["model", "objective"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.outcome_cost = Gauge(
            "verdict_outcome_cost",
            "Cost of one outcome from the manifest (fp, fn).",
            ["model", "outcome"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.feature_bin = Counter(
            "verdict_feature_bin",
            "Served rows per reference bin of an input feature, the score, the predicted class "
            "or the top-class confidence (drift).",
            ["model", "version", "feature", "bin"],
            registry=r,
        )
        self.reference_bin_ratio = Gauge(
            "verdict_reference_bin_ratio",
            "Reference proportion of each feature bin from the manifest (drift).",
            ["model", "version", "feature", "bin"],
            multiprocess_mode="mostrecent",
            registry=r,
        )

        self.model_refusals = Counter(
            "verdict_model_refusals",
            "Model versions refused at load, by the check that refused them (manifest, files, "
            "parity, graph, warmup, conformance).",
            ["model", "version", "check"],
            registry=r,
        )
        self.conformance_diff = Gauge(
            "verdict_conformance_max_abs_diff",
            "Largest |probability - expected| on the reference sample at the last load of a "
            "version, on the provider that serves it (a refused version's too).",
            ["model", "version", "provider"],
            multiprocess_mode="mostrecent",
            registry=r,
        )

        # The shadow evaluation (docs/lifecycle.md).
        self.shadow_rows = Counter(
            "verdict_shadow_rows",
            "Rows of primary requests sampled for a shadow version, by outcome (decided, "
            "dropped: its queue was full, failed: its run failed, unrecorded: the store "
            "refused the decisions).",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.shadow_outcomes = Counter(
            "verdict_shadow_outcomes",
            "Binary outcomes (tp, fp, tn, fn) of labelled rows that a shadow also decided, per "
            "version and role (primary: the answer sent; shadow: the shadow's decision).",
            ["model", "version", "role", "outcome"],
            registry=r,
        )
        self.model_role = Gauge(
            "verdict_model_role",
            "Role of a served model version (primary, shadow), value 1.",
            ["model", "version", "role"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self._roles: dict[str, list[tuple[str, str, str]]] = {}

    def histogram(self, child: Any) -> BufferedHistogram | DirectHistogram:
        """A buffer in front of a labelled histogram child, flushed with the others."""
        return self._track(histogram_buffer(child))

    def counter(self, child: Any) -> BufferedCounter:
        """A buffer in front of a labelled counter child."""
        return self._track(BufferedCounter(child))

    def gauge(self, child: Any) -> BufferedGauge:
        """A buffer in front of a labelled gauge child."""
        return self._track(BufferedGauge(child))

    def _track(self, buffer: Any) -> Any:
        self._buffers.append(buffer)
        return buffer

    def forget(self, vm: VersionMetrics) -> None:
        """Flush a retired version's buffers and stop tracking them (reloads add new ones)."""
        mine = [vm.queue, vm.compute, vm.batch_size, vm.queue_depth, vm.score, vm.predictions]
        for o in vm.requests.values():
            mine += [o.ok, o.invalid, o.overloaded, o.error]
        ids = {id(b) for b in mine}
        for buffer in mine:
            if isinstance(buffer, Buffered):
                buffer.flush()
        self._buffers = [b for b in self._buffers if id(b) not in ids]

    def flush(self) -> None:
        """Hand every buffered update to the real series."""
        for buffer in self._buffers:
            buffer.flush()

    def version_metrics(self, model: str, version: int, classes: list[str]) -> VersionMetrics:
        """Labelled, buffered children for one model version, resolved once."""
        v = str(version)
        outcome = self.inference_requests
        return VersionMetrics(
            queue=self.histogram(self.inference_duration.labels(model, v, "queue")),
            compute=self.histogram(self.inference_duration.labels(model, v, "compute")),
            batch_size=self.histogram(self.batch_size.labels(model, v)),
            queue_depth=self.gauge(self.queue_depth.labels(model, v)),
            requests={
                p: Outcomes(
                    ok=self.counter(outcome.labels(model, v, "ok", p)),
                    invalid=self.counter(outcome.labels(model, v, "invalid", p)),
                    overloaded=self.counter(outcome.labels(model, v, "overloaded", p)),
                    error=self.counter(outcome.labels(model, v, "error", p)),
                )
                for p in PROTOCOLS
            },
            predictions=self._track(
                BufferedClassCounts([self.predictions.labels(model, v, c) for c in classes])
            ),
            score=self.histogram(self.prediction_score.labels(model, v)),
        )

    def set_model_config(
        self, model: str, version: int, providers: list[str], manifest: dict[str, Any]
    ) -> None:
        """Series that carry a model version's configuration (info, objectives, costs, bins)."""
        labels = self.model_info_labels(model, version, providers, manifest)
        self.model_info.labels(*labels).set(1)
        self._info.add(labels)
        for objective, value in (manifest.get("objectives") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.objective_ratio.labels(model, objective).set(value)
                self.objective_min_labeled.labels(model, objective).set(
                    alert_min_labelled(float(value))
                )
        for key, value in (manifest.get("costs") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                outcome = key.removeprefix("cost_")
                self.outcome_cost.labels(model, outcome).set(value)
        if manifest.get("task") == "binary":
            # Start the outcome counters at 0 so the first labels show up as an increase.
            for outcome in ("tp", "fp", "tn", "fn"):
                self.outcomes.labels(model, str(version), outcome)
        features = ((manifest.get("reference") or {}).get("features")) or {}
        for feature, ref in features.items():
            for i, proportion in enumerate((ref or {}).get("proportions") or []):
                self.reference_bin_ratio.labels(model, str(version), feature, str(i)).set(
                    proportion
                )

    def set_roles(self, model: str, primary: int, shadow: int | None) -> None:
        """The role series of a model: its primary, and its shadow if any."""
        wanted = [(model, str(primary), "primary")]
        if shadow is not None:
            wanted.append((model, str(shadow), "shadow"))
            for role in ("primary", "shadow"):
                for outcome in ("tp", "fp", "tn", "fn"):  # start at 0: the first is an increase
                    version = str(primary if role == "primary" else shadow)
                    self.shadow_outcomes.labels(model, version, role, outcome)
        for labels in self._roles.get(model, []):
            if labels not in wanted:
                if self.multiproc:
                    self.model_role.labels(*labels).set(0)
                else:
                    self.model_role.remove(*labels)
        for labels in wanted:
            self.model_role.labels(*labels).set(1)
        self._roles[model] = wanted

    def clear_roles(self, model: str) -> None:
        """Drop the role series of an unloaded model."""
        for labels in self._roles.pop(model, []):
            if self.multiproc:
                self.model_role.labels(*labels).set(0)
            else:
                self.model_role.remove(*labels)

    def set_conformance(self, model: str, version: int, provider: str, max_abs_diff: float) -> None:
        """What a version's reference sample measured on the provider that would serve it."""
        self.conformance_diff.labels(model, str(version), provider).set(max_abs_diff)

    def clear_model_version(
        self, model: str, version: int, providers: list[str], keep: set[tuple[str, ...]]
    ) -> None:
        """Drop the info series of a retired version, except label sets still in use.

        In multiprocess mode prometheus_client cannot remove a series: it goes to 0."""
        for labels in list(self._info):
            if labels[:3] == (model, str(version), ",".join(providers)) and labels not in keep:
                self._info.discard(labels)
                if self.multiproc:
                    self.model_info.labels(*labels).set(0)
                else:
                    self.model_info.remove(*labels)

    def model_info_labels(
        self, model: str, version: int, providers: list[str], manifest: dict[str, Any]
    ) -> tuple[str, ...]:
        """The label values of a version's info series."""
        threshold = (manifest.get("decision") or {}).get("threshold")
        return (
            model,
            str(version),
            ",".join(providers),
            "" if threshold is None else repr(float(threshold)),
        )


@dataclass(slots=True)
class Outcomes:
    """The outcome counters of one model version's requests over one protocol."""

    ok: Any
    invalid: Any
    overloaded: Any
    error: Any


@dataclass(slots=True)
class VersionMetrics:
    """Cached labelled children for one model version."""

    queue: Any
    compute: Any
    batch_size: Any
    queue_depth: Any
    requests: dict[str, Outcomes]  # by protocol (PROTOCOLS)
    predictions: BufferedClassCounts
    score: Any


def multiproc_dir() -> str | None:
    """The prometheus_client multiprocess folder in use (PROMETHEUS_MULTIPROC_DIR), if any."""
    return os.environ.get(MULTIPROC_ENV) or None


def render(registry: CollectorRegistry, multiproc: str | None) -> tuple[bytes, str]:
    """The /metrics body: this registry, or every process's values in multiprocess mode."""
    if multiproc:
        collected = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(collected, path=multiproc)
        return generate_latest(collected), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(multiproc: str | None) -> None:
    """Forget this process's live gauges when it exits (multiprocess mode)."""
    if multiproc:
        prom_multiprocess.mark_process_dead(os.getpid(), multiproc)
