"""Drift: counts inputs, scores, predicted classes and top-class confidence into the manifest's
reference bins, once per batch, per model version."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

SCORE_FEATURE = "__score__"  # binary models: the positive-class probability
CLASS_FEATURE = "__class__"  # multiclass models: the predicted class (bin = class index)
CONFIDENCE_FEATURE = "__confidence__"  # multiclass models: the top-class probability
DEFAULT_MAX_FEATURES = 30
# Rows a second per model version binned in full by the server; beyond it a uniform sample of
# whole batches (DriftMonitor): binning every row of a cheap model under heavy load costs a
# large share of the CPU (docs/benchmarks.md); PSI is read from proportions, which a sample
# keeps.
SERVER_MAX_ROWS_PER_S = 10_000
# Batches up to this many (row, feature, edge) comparisons are binned with one broadcast
# comparison; larger ones with one searchsorted per feature (less memory, log B per value).
BROADCAST_MAX_CELLS = 1 << 16
# With a flush interval, rows wait (monitored columns only) until this many are buffered,
# the interval is over, or a flush is asked for: then they are binned in one pass.
BUFFER_MAX_ROWS = 4096
BUFFER_MIN_DIRECT_ROWS = 256  # batches this large are binned at once (as fast per row)


class _Family(Protocol):
    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any: ...


class DriftMetrics(Protocol):
    """The metric families drift updates (owned by service.metrics)."""

    @property
    def feature_bin(self) -> _Family:
        """verdict_feature_bin_total{model,version,feature,bin}"""


@dataclass(slots=True)
class _Plan:
    """What one model version monitors, with the labelled counter children cached."""

    columns: np.ndarray  # input column of each monitored feature
    all_columns: bool  # every input column is monitored, in order (no column copy needed)
    edges: list[np.ndarray]  # interior cut points per monitored feature
    padded: np.ndarray  # [F, max cuts] the same cut points, padded with +inf
    offsets: np.ndarray  # where each feature's bins start in the flat bincount
    children: list[Any]  # one counter child per (feature, bin), the score's, then the classes'
    score_edges: np.ndarray | None  # cut points of the score (binary) or confidence (multiclass)
    score_offset: int  # where the score's bins start
    class_offset: int  # where the predicted classes' bins start
    n_classes: int  # classes counted (0: none)
    pending: np.ndarray  # counts not yet added to the counters (when flushing on a timer)
    flushed_at: float  # time.monotonic() of the last flush
    inputs: list[np.ndarray]  # buffered monitored columns, not yet binned
    scores: list[np.ndarray]  # buffered scores, not yet binned
    classes: list[np.ndarray]  # buffered predicted classes, not yet counted
    buffered_rows: int
    lock: threading.Lock
    second: int = 0  # the second (of time.monotonic) that this_rows counts
    this_rows: int = 0  # rows seen in that second
    last_rows: int = 0  # rows seen in the second before it
    skipped_rows: int = 0  # rows left out by the rate cap


def monitored_features(manifest: Mapping[str, Any], max_features: int) -> list[str]:
    """The first `max_features` features in manifest order that have reference bins."""
    names = (manifest.get("input") or {}).get("feature_names") or []
    reference = ((manifest.get("reference") or {}).get("features")) or {}
    return [name for name in names if name in reference][: max(0, max_features)]


def bin_index(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin i holds (edges[i-1], edges[i]]; the outer bins are open-ended."""
    return np.searchsorted(edges, values, side="left")


class DriftMonitor:
    """Feeds `verdict_feature_bin_total{model,version,feature,bin}` so PSI can be computed in
    PromQL: the input features of tabular models, the score of binary models
    (`__score__`), and the predicted class (`__class__`, bin = class index) and top-class
    probability (`__confidence__`) of multiclass models whose manifest has those references.

    The predict path calls `observe` once per batch: the batch is binned in one broadcast
    comparison against every feature's cut points (small batches) or one `searchsorted`
    per monitored feature (large ones), then one `bincount` over all features and the
    score, and one counter increment per non-empty bin (children are looked up once, at
    `register`). Inputs are expected finite (the predict path refuses NaN and inf).

    With `flush_interval_s` > 0 the counts of each batch are added to a numpy array and
    reach the counters at most that often (and on `flush()`), which takes the counter
    increments, the dominant cost for wide models, off most batches; 0 increments on
    every batch.

    With `max_rows_per_s` > 0, each model version bins every row while it serves at most
    that many rows a second, and beyond that each batch with probability
    `max_rows_per_s / rows per second` (a batch is binned whole or not at all; every row has
    the same chance whatever its batch size). Drift is read from proportions (PSI), which
    a sample estimates without bias; binning every row of a cheap model under heavy load takes
    a large share of the server's CPU (docs/benchmarks.md). 0 bins every row.
    """

    def __init__(
        self,
        metrics: DriftMetrics,
        max_features: int = DEFAULT_MAX_FEATURES,
        flush_interval_s: float = 0.0,
        max_rows_per_s: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.metrics = metrics
        self.max_features = max_features
        self.flush_interval_s = flush_interval_s
        self.max_rows_per_s = max_rows_per_s
        self._random = random.Random(seed)
        self._plans: dict[tuple[str, int], _Plan] = {}
        self._lock = threading.Lock()

    def register(self, model: str, version: int, manifest: Mapping[str, Any]) -> list[str]:
        """Start watching a model version; returns the monitored input features (the score,
        class and confidence pseudo-features not included)."""
        reference = manifest.get("reference") or {}
        v = str(version)
        names = list((manifest.get("input") or {}).get("feature_names") or [])
        features = monitored_features(manifest, self.max_features)
        family = self.metrics.feature_bin
        edges: list[np.ndarray] = []
        children: list[Any] = []
        offsets: list[int] = []
        for feature in features:
            cuts = np.asarray(reference["features"][feature]["edges"], dtype=np.float64)
            offsets.append(len(children))
            edges.append(cuts)
            children.extend(
                family.labels(model=model, version=v, feature=feature, bin=str(i))
                for i in range(len(cuts) + 1)
            )
        score_feature, score = _score_reference(manifest)
        score_edges = None
        score_offset = len(children)
        if score is not None:
            score_edges = np.asarray(score["edges"], dtype=np.float64)
            children.extend(
                family.labels(model=model, version=v, feature=score_feature, bin=str(i))
                for i in range(len(score_edges) + 1)
            )
        class_offset = len(children)
        n_classes = len(_class_reference(manifest) or [])
        children.extend(
            family.labels(model=model, version=v, feature=CLASS_FEATURE, bin=str(i))
            for i in range(n_classes)
        )
        padded = np.full((len(edges), max((len(e) for e in edges), default=0)), np.inf)
        for row, cuts in enumerate(edges):
            padded[row, : len(cuts)] = cuts
        plan = _Plan(
            columns=np.asarray([names.index(f) for f in features], dtype=np.intp),
            all_columns=list(features) == list(names),
            edges=edges,
            padded=padded,
            offsets=np.asarray(offsets, dtype=np.intp),
            children=children,
            score_edges=score_edges,
            score_offset=score_offset,
            class_offset=class_offset,
            n_classes=n_classes,
            pending=np.zeros(len(children), dtype=np.int64),
            flushed_at=time.monotonic(),
            inputs=[],
            scores=[],
            classes=[],
            buffered_rows=0,
            lock=threading.Lock(),
        )
        with self._lock:
            self._plans[(model, version)] = plan
        parts = [(f, reference["features"][f]["proportions"]) for f in features]
        if score is not None:
            parts.append((score_feature, score["proportions"]))
        if n_classes:
            parts.append((CLASS_FEATURE, _class_reference(manifest) or []))
        self._publish_reference(model, version, parts)
        return features

    def _publish_reference(
        self, model: str, version: int, parts: list[tuple[str, list[float]]]
    ) -> None:
        """Set verdict_reference_bin_ratio, when the metrics object has that family."""
        family = getattr(self.metrics, "reference_bin_ratio", None)
        if family is None:
            return
        for feature, shares in parts:
            for i, share in enumerate(shares):
                family.labels(model=model, version=str(version), feature=feature, bin=str(i)).set(
                    float(share)
                )

    def unregister(self, model: str, version: int) -> None:
        """Stop watching a model version (its series stay: counters never go back)."""
        with self._lock:
            plan = self._plans.pop((model, version), None)
        if plan is not None:
            _flush(plan)

    def flush(self) -> None:
        """Add every pending count to the counters (before a scrape, at shutdown)."""
        with self._lock:
            plans = list(self._plans.values())
        for plan in plans:
            _flush(plan)

    def observe(
        self,
        model: str,
        version: int,
        x: np.ndarray,
        scores: np.ndarray | None,
        classes: np.ndarray | None = None,
    ) -> None:
        """Count one batch: `x` is the input batch, `scores` each row's score (the positive
        class's probability of a binary model, the top class's of a multiclass one), `classes`
        each row's predicted class index."""
        plan = self._plans.get((model, version))
        if plan is None:
            return
        if self.max_rows_per_s > 0 and not self._sampled(plan, len(x)):
            return
        if self.flush_interval_s > 0 and len(x) < BUFFER_MIN_DIRECT_ROWS:
            self._buffer(plan, x, scores, classes)
            return
        parts = []
        if plan.edges and x.ndim == 2 and len(x):
            parts.append(feature_bins(plan, x, len(x) * plan.padded.size <= BROADCAST_MAX_CELLS))
        if plan.score_edges is not None and scores is not None and len(scores):
            values = np.asarray(scores, dtype=np.float64).ravel()
            parts.append(bin_index(plan.score_edges, values) + plan.score_offset)
        if plan.n_classes and classes is not None and len(classes):
            parts.append(np.asarray(classes, dtype=np.intp).ravel() + plan.class_offset)
        if not parts:
            return
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
        counts = np.bincount(flat, minlength=len(plan.children))
        if self.flush_interval_s > 0:  # a large batch: binned now, counted at the next flush
            with plan.lock:
                plan.pending += counts
                due = time.monotonic() - plan.flushed_at >= self.flush_interval_s
            if due:
                _flush(plan)
            return
        _increment(plan.children, counts)

    def _sampled(self, plan: _Plan, rows: int) -> bool:
        """Whether this batch is binned: every batch while the version sees at most
        `max_rows_per_s` rows a second (this second or the last), else each batch with
        probability `max_rows_per_s / rate`: the same for every row whatever the size of its
        batch, so the binned rows are a uniform sample of the served ones."""
        cap = self.max_rows_per_s
        second = int(time.monotonic())
        with plan.lock:
            if second != plan.second:
                plan.last_rows = plan.this_rows if second == plan.second + 1 else 0
                plan.second = second
                plan.this_rows = 0
            plan.this_rows += rows
            rate = max(plan.last_rows, plan.this_rows)
            if rate <= cap or self._random.random() * rate < cap:
                return True
            plan.skipped_rows += rows
            return False

    def skipped_rows(self, model: str, version: int) -> int:
        """Rows of a version the rate cap left out so far."""
        plan = self._plans.get((model, version))
        return 0 if plan is None else plan.skipped_rows

    def _buffer(
        self,
        plan: _Plan,
        x: np.ndarray,
        scores: np.ndarray | None,
        classes: np.ndarray | None,
    ) -> None:
        """Keep a batch's monitored columns and scores (a few microseconds); bin them later,
        many batches at once, where binning costs well under a microsecond per row."""
        rows = 0
        with plan.lock:
            if plan.edges and x.ndim == 2 and len(x):
                # Kept, not copied, when every column is monitored (inputs are never changed).
                plan.inputs.append(x if plan.all_columns else x[:, plan.columns])
                rows = len(x)
            if plan.score_edges is not None and scores is not None and len(scores):
                plan.scores.append(np.asarray(scores, dtype=np.float64).ravel())
                rows = max(rows, len(scores))
            if plan.n_classes and classes is not None and len(classes):
                plan.classes.append(np.asarray(classes, dtype=np.intp).ravel())
                rows = max(rows, len(classes))
            plan.buffered_rows += rows
            due = (
                plan.buffered_rows >= BUFFER_MAX_ROWS
                or time.monotonic() - plan.flushed_at >= self.flush_interval_s
            )
        if due:
            _flush(plan)


def _score_reference(manifest: Mapping[str, Any]) -> tuple[str, Mapping[str, Any] | None]:
    """The pseudo-feature binned on each row's score, and its reference bins (or None): the
    score of a binary model, the top-class probability of a multiclass one."""
    reference = manifest.get("reference") or {}
    if manifest.get("task") == "binary":
        return SCORE_FEATURE, reference.get("score") or None
    return CONFIDENCE_FEATURE, reference.get("confidence") or None


def _class_reference(manifest: Mapping[str, Any]) -> list[float] | None:
    """The predicted-class shares of a multiclass model's reference, when they fit its
    classes (else None: no class drift for it)."""
    if manifest.get("task") != "multiclass":
        return None
    shares = ((manifest.get("reference") or {}).get("classes") or {}).get("proportions")
    n_classes = len((manifest.get("output") or {}).get("classes") or [])
    return [float(s) for s in shares] if shares and len(shares) == n_classes else None


def feature_bins(plan: _Plan, x: np.ndarray, broadcast: bool) -> np.ndarray:
    """Flat bin indices (offset per feature) of the monitored columns of a batch."""
    if broadcast:
        # bin = how many cut points lie strictly below the value (the +inf padding never does)
        values = np.asarray(x[:, plan.columns], dtype=np.float64)
        index = (values[:, :, None] > plan.padded[None, :, :]).sum(axis=2, dtype=np.intp)
        index += plan.offsets
        return index.ravel()
    # One float64 copy, feature-major, so each searchsorted runs over a contiguous row
    # of the same dtype as the cut points.
    columns = np.ascontiguousarray(x[:, plan.columns].T, dtype=np.float64)
    index = np.empty(columns.shape, dtype=np.intp)
    for row, cuts in enumerate(plan.edges):
        index[row] = bin_index(cuts, columns[row])
    index += plan.offsets[:, None]
    return index.ravel()


def _flush(plan: _Plan) -> None:
    with plan.lock:
        counts, plan.pending = plan.pending, np.zeros_like(plan.pending)
        inputs, plan.inputs = plan.inputs, []
        scores, plan.scores = plan.scores, []
        classes, plan.classes = plan.classes, []
        plan.buffered_rows = 0
        plan.flushed_at = time.monotonic()
    parts = []
    if inputs:
        x = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
        # the buffered matrix holds the monitored columns only, in plan order
        parts.append(_bins_of_columns(plan, x))
    if scores and plan.score_edges is not None:
        values = scores[0] if len(scores) == 1 else np.concatenate(scores)
        parts.append(bin_index(plan.score_edges, values) + plan.score_offset)
    if classes:
        parts.append(np.concatenate(classes) + plan.class_offset)
    if parts:
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
        counts = counts + np.bincount(flat, minlength=len(plan.children))
    _increment(plan.children, counts)


def _bins_of_columns(plan: _Plan, columns_first: np.ndarray) -> np.ndarray:
    """Flat bin indices of a matrix that already holds only the monitored columns."""
    columns = np.ascontiguousarray(columns_first.T, dtype=np.float64)
    index = np.empty(columns.shape, dtype=np.intp)
    for row, cuts in enumerate(plan.edges):
        index[row] = bin_index(cuts, columns[row])
    index += plan.offsets[:, None]
    return index.ravel()


def _increment(children: list[Any], counts: np.ndarray) -> None:
    # tolist() once: indexing a numpy array per bin costs more than the increment itself
    for child, count in zip(children, counts.tolist(), strict=True):
        if count:
            child.inc(count)
