"""Every Prometheus metric of the service, owned by one object built on a given registry."""

from __future__ import annotations

import os
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

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


class BufferedCounter:
    """A counter child whose increments add up in a plain number until `flush`.

    prometheus_client takes a lock (and in multiprocess mode writes a mapped file) on every
    update; the predict path makes about fifteen per request. Buffers move that to `flush`,
    which runs before every collection (see `Metrics`) and, with several workers, every
    second. Update and flush on the event loop thread.
    """

    __slots__ = ("child", "pending")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.pending: float = 0

    def inc(self, amount: float = 1) -> None:
        """Add `amount` (not yet visible to a scrape until the next flush)."""
        self.pending += amount

    def flush(self) -> None:
        """Hand what was added to the real counter."""
        pending, self.pending = self.pending, 0
        if pending:
            self.child.inc(pending)


class BufferedGauge:
    """A gauge child whose latest `set` value reaches the real gauge at `flush`."""

    __slots__ = ("child", "value", "written")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.value = 0.0
        self.written = 0.0

    def set(self, value: float) -> None:
        """The gauge's value from now on (visible after the next flush)."""
        self.value = value

    def flush(self) -> None:
        """Write the value if it changed."""
        value = self.value
        if value != self.written:
            self.written = value
            self.child.set(value)


class _HeldArrays:
    """Per-request arrays kept to be counted later, many at once: one numpy pass over
    thousands of values costs about what one over 64 does. The arrays must not change
    after they are added."""

    __slots__ = ("arrays", "rows")

    LIMIT = 4096  # values held before the owner counts them

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.rows = 0

    def add(self, values: np.ndarray) -> bool:
        """Keep `values`; True once LIMIT values or more wait."""
        self.arrays.append(values)
        self.rows += len(values)
        return self.rows >= self.LIMIT

    def take(self) -> np.ndarray | None:
        """Every held value as one array (None when nothing is held), and forget them."""
        arrays = self.arrays
        if not arrays:
            return None
        self.arrays = []
        self.rows = 0
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _add_counts(counts: list[int], per_bin: np.ndarray) -> None:
    for i, n in enumerate(per_bin.tolist()):
        if n:
            counts[i] += n


class BufferedHistogram:
    """A histogram child whose observations count up per bucket until `flush`.

    Same buckets and semantics as `Histogram.observe` (a value lands in the first bucket
    whose upper bound is >= the value); the counts are per bucket, as the child stores them.
    Arrays of values (`observe_many`) are held (`_HeldArrays`), and counted once 4 096
    values wait or at the next flush.
    """

    __slots__ = ("bound_array", "bounds", "child", "counts", "held", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = list(child._upper_bounds)
        self.bound_array = np.asarray(self.bounds, dtype=np.float64)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.held = _HeldArrays()

    @property
    def held_rows(self) -> int:
        """Values held, not yet counted."""
        return self.held.rows

    def observe(self, value: float) -> None:
        """Count one value (NaN lands in no bucket, as with `Histogram.observe`)."""
        if value == value:
            self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_many(self, values: np.ndarray) -> None:
        """Count every value of a 1-d array (held for a while; see `_HeldArrays`)."""
        if len(values) == 1:
            self.observe(float(values[0]))
        elif self.held.add(values):
            self._count_held()

    def _count_held(self) -> None:
        values = self.held.take()
        if values is None:
            return
        index = np.searchsorted(self.bound_array, values, side="left")
        counts = self.counts
        # NaN sorts past +Inf: index len(counts), which no bucket takes (as observe()).
        _add_counts(counts, np.bincount(index, minlength=len(counts) + 1)[: len(counts)])
        self.total += float(np.sum(values, dtype=np.float64))

    def flush(self) -> None:
        """Add the counts and the sum to the real histogram."""
        self._count_held()
        counts = self.counts
        if not any(counts):
            return
        self.counts = [0] * len(counts)
        total, self.total = self.total, 0.0
        buckets = self.child._buckets
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
        self.child._sum.inc(total)


class BufferedClassCounts:
    """The per-class prediction counters of one version, fed class indices.

    One row adds to a list of ints; arrays of class indices are held (`_HeldArrays`) and
    counted with one `bincount` once 4 096 wait, or at the next flush.
    """

    __slots__ = ("children", "held", "pending")

    def __init__(self, children: list[Any]) -> None:
        self.children = children
        self.pending = [0] * len(children)
        self.held = _HeldArrays()

    @property
    def held_rows(self) -> int:
        """Class indices held, not yet counted."""
        return self.held.rows

    def add_one(self, class_index: int) -> None:
        """One prediction of class `class_index`."""
        self.pending[class_index] += 1

    def add_many(self, class_indices: np.ndarray) -> None:
        """One prediction per element (class indices below the number of classes)."""
        if self.held.add(class_indices):
            self._count_held()

    def _count_held(self) -> None:
        values = self.held.take()
        if values is not None:
            pending = self.pending
            _add_counts(pending, np.bincount(values, minlength=len(pending))[: len(pending)])

    def flush(self) -> None:
        """Add what was counted to the real counters."""
        self._count_held()
        pending = self.pending
        if not any(pending):
            return
        self.pending = [0] * len(pending)
        for child, n in zip(self.children, pending, strict=True):
            if n:
                child.inc(n)


Buffered = BufferedCounter | BufferedGauge | BufferedHistogram | BufferedClassCounts


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
    """The metrics of DESIGN.md; one instance per app, on its own registry.

    The per-request series (inference outcomes, predictions by label, score, batch size,
    queue and compute time, queue depth, HTTP duration) are updated through buffers
    (`buffered`), flushed before every collection.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
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
            "Inference requests by outcome (ok, invalid, overloaded, error).",
            ["model", "version", "outcome"],
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
        self.objective_ratio = Gauge(
            "verdict_objective_ratio",
            "Business targets from the manifest (max_fnr, max_fpr).",
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
            "Served rows per input feature reference bin (drift).",
            ["model", "feature", "bin"],
            registry=r,
        )
        self.reference_bin_ratio = Gauge(
            "verdict_reference_bin_ratio",
            "Reference proportion of each feature bin from the manifest (drift).",
            ["model", "version", "feature", "bin"],
            multiprocess_mode="mostrecent",
            registry=r,
        )

    def buffered(self, child: Any) -> Any:
        """A buffer in front of a labelled counter, gauge or histogram child."""
        buffer: Buffered
        if hasattr(child, "_upper_bounds"):
            buffer = BufferedHistogram(child)
        elif hasattr(child, "set"):
            buffer = BufferedGauge(child)
        else:
            buffer = BufferedCounter(child)
        return self._track(buffer)

    def _track(self, buffer: Any) -> Any:
        self._buffers.append(buffer)
        return buffer

    def forget(self, vm: VersionMetrics) -> None:
        """Flush a retired version's buffers and stop tracking them (reloads add new ones)."""
        mine = [vm.queue, vm.compute, vm.batch_size, vm.queue_depth, vm.ok, vm.invalid]
        mine += [vm.overloaded, vm.error, vm.score, vm.predictions]
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
        b = self.buffered
        return VersionMetrics(
            queue=b(self.inference_duration.labels(model, v, "queue")),
            compute=b(self.inference_duration.labels(model, v, "compute")),
            batch_size=b(self.batch_size.labels(model, v)),
            queue_depth=b(self.queue_depth.labels(model, v)),
            ok=b(self.inference_requests.labels(model, v, "ok")),
            invalid=b(self.inference_requests.labels(model, v, "invalid")),
            overloaded=b(self.inference_requests.labels(model, v, "overloaded")),
            error=b(self.inference_requests.labels(model, v, "error")),
            predictions=self._track(
                BufferedClassCounts([self.predictions.labels(model, v, c) for c in classes])
            ),
            score=b(self.prediction_score.labels(model, v)),
        )

    def set_model_config(
        self, model: str, version: int, providers: list[str], manifest: dict[str, Any]
    ) -> None:
        """Series that carry a model version's configuration (info, objectives, costs, bins)."""
        self.model_info.labels(*self.model_info_labels(model, version, providers, manifest)).set(1)
        for objective, value in (manifest.get("objectives") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.objective_ratio.labels(model, objective).set(value)
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

    def clear_model_version(
        self, model: str, version: int, providers: list[str], keep: set[tuple[str, ...]]
    ) -> None:
        """Drop the info series of a retired version, except label sets still in use."""
        for labels in _label_sets(self.model_info):
            if labels[:3] == (model, str(version), ",".join(providers)) and labels not in keep:
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


def _label_sets(metric: Any) -> list[tuple[str, ...]]:
    return list(metric._metrics.keys())


@dataclass(slots=True)
class VersionMetrics:
    """Cached labelled children for one model version."""

    queue: Any
    compute: Any
    batch_size: Any
    queue_depth: Any
    ok: Any
    invalid: Any
    overloaded: Any
    error: Any
    predictions: BufferedClassCounts
    score: Any


def observe_many(child: Any, values: np.ndarray) -> None:
    """Observe every value of a 1-d array on a histogram child: one `searchsorted`, then one
    increment per non-empty bucket and one for the sum, instead of a Python call per value.

    Uses the child's bucket values the way `Histogram.observe` does (value <= bound lands in
    the first such bucket; buckets are stored per bucket, not cumulated).
    """
    if isinstance(child, BufferedHistogram):
        child.observe_many(values)
        return
    n = len(values)
    if n == 1:
        child.observe(float(values[0]))
        return
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None or n == 0:
        for v in values.tolist():
            child.observe(v)
        return
    index = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")
    counts = np.bincount(index, minlength=len(bounds) + 1)
    total.inc(float(np.sum(values, dtype=np.float64)))
    for i in np.flatnonzero(counts[: len(bounds)]).tolist():
        buckets[i].inc(int(counts[i]))


def multiproc_dir(configured: str | None) -> str | None:
    """The multiprocess folder in use: the setting, else PROMETHEUS_MULTIPROC_DIR."""
    return configured or os.environ.get(MULTIPROC_ENV) or None


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
