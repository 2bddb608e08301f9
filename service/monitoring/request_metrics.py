"""The per-request series (transport and inference latency, batches, outcomes, predictions)
and the buffers in front of them.

The names and labels are the contract of docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.monitoring.buffers import (
    Buffered,
    BufferedClassCounts,
    BufferedCounter,
    BufferedGauge,
    BufferedHistogram,
    DirectHistogram,
    histogram_buffer,
)

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
# The transports, as the `protocol` label of the series that count requests.
PROTOCOLS = ("rest", "grpc")


class _FlushFirst:
    """Registered on the registry before any metric: every collection (a /metrics answer, a
    test's `get_sample_value`) flushes the buffers first, so what it reads is exact."""

    def __init__(self, metrics: RequestMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        self._metrics.flush()
        return []


class RequestMetrics:
    """What every request does: HTTP and gRPC duration, queue and compute time, batch size,
    queue depth, outcomes, predictions by label and the binary score.

    These series are updated through buffers (`monitoring.buffers`), flushed before every
    collection; build this part first, so that the flush comes ahead of every metric.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
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
