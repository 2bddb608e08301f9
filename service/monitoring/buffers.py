"""Buffers in front of prometheus_client children: per-request updates add up in plain numbers.

prometheus_client takes a lock (and in multiprocess mode writes a mapped file) on every
update; a prediction makes about fifteen. The buffers move that to `flush`, which the
`Metrics` object runs before every collection and, with several workers, every second.
Update and flush on the event loop's thread.

The histogram buffer reads the child's bucket bounds and writes its buckets and sum
(`_upper_bounds`, `_buckets`, `_sum`): prometheus_client has no public API to add counts
per bucket. tests/service/test_service_observe_many.py fails if those attributes change.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import numpy as np


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


class DirectHistogram:
    """The fallback for a histogram child without the attributes `BufferedHistogram` writes
    (a prometheus_client release that renamed them): every value goes straight to the
    child's public `observe`, one call each. Exact, only slower."""

    __slots__ = ("child",)

    held_rows = 0

    def __init__(self, child: Any) -> None:
        self.child = child

    def observe(self, value: float) -> None:
        """Observe one value now."""
        self.child.observe(value)

    def observe_many(self, values: np.ndarray) -> None:
        """Observe every value of a 1-d array now."""
        for value in values.tolist():
            self.child.observe(value)

    def flush(self) -> None:
        """Nothing is held."""


def histogram_buffer(child: Any) -> BufferedHistogram | DirectHistogram:
    """A `BufferedHistogram` when the child has what it writes, else a `DirectHistogram`."""
    if all(hasattr(child, name) for name in ("_upper_bounds", "_buckets", "_sum")):
        return BufferedHistogram(child)
    return DirectHistogram(child)


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


Buffered = (
    BufferedCounter | BufferedGauge | BufferedHistogram | DirectHistogram | BufferedClassCounts
)


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
