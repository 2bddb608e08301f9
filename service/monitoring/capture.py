"""Sampled input capture: the inputs of a share of predictions, kept with their prediction id
in the feedback store so that a label that arrives later makes a labelled production example
(docs/lifecycle.md).

The predict path only decides, on the loop after the answer, which rows are sampled (a
countdown to the next sampled row, drawn from the geometric distribution of the model's
rate) and hands them to a bounded queue; one background thread encodes them, stores them in
batches and prunes old ones. A full queue, a rate or stored-rows cap, or a failing store drops
rows and counts them in `verdict_capture_rows_total{model,outcome}`; a prediction is never
slowed beyond the sampling decision nor failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.monitoring.records import CaptureRecord
from service.monitoring.stores import LabelStore

log = logging.getLogger(__name__)

# Rows that may wait for the writer (all models together); beyond it rows are dropped.
QUEUE_ROWS = 10_000
# Most rows the writer stores in one transaction (one fsync for SQLite).
WRITE_BATCH_ROWS = 512
# How often the writer deletes captures older than the retention.
PRUNE_INTERVAL_S = 3600.0
# Longest a stopping writer spends storing what is still queued.
STOP_DRAIN_S = 5.0
# Least time between two log lines about a failing store.
FAILURE_LOG_S = 60.0
OUTCOMES = ("stored", "dropped_full", "dropped_rate", "dropped_cap", "failed")
DAY_S = 86400.0


class CaptureConfigError(ValueError):
    """A capture setting that does not fit a served model (capture stays off for it)."""


@dataclass(slots=True)
class Sampler:
    """Which rows of one model's traffic are captured: a countdown of rows to the next
    sampled one, and the rows taken in the current second (for the rows/s cap)."""

    rate: float
    skip: int = 0
    second: int = -1
    taken: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.skip = self.gap()

    def gap(self) -> int:
        """Rows to pass before the next sampled one (geometric: each row has `rate`)."""
        if self.rate >= 1.0:
            return 0
        return int(math.log(1.0 - self.rng.random()) / math.log(1.0 - self.rate))

    def pick(self, n: int) -> list[int] | None:
        """The indices of a request's n rows to capture, or None (the common case)."""
        if self.skip >= n:
            self.skip -= n
            return None
        picked = []
        i = self.skip
        while i < n:
            picked.append(i)
            i += 1 + self.gap()
        self.skip = i - n
        return picked


@dataclass(frozen=True, slots=True)
class Encoder:
    """How one model version's rows become the stored JSON: an object keyed by feature name
    (tabular models, the dropped features left out), or `{input name: flat values}`."""

    names: tuple[str, ...] | None
    keep: np.ndarray | None  # indices of the features kept (tabular)
    input_name: str

    def encode(self, row: np.ndarray) -> str:
        if self.names is None or self.keep is None:
            return json.dumps({self.input_name: row.reshape(-1).tolist()})
        values = row[self.keep].tolist()
        return json.dumps(dict(zip(self.names, values, strict=True)))


def encoder_for(manifest: Mapping[str, Any], drop: frozenset[str]) -> Encoder:
    """The encoder of a version from its manifest; a dropped feature the model does not have
    is refused (a misspelt privacy setting must not store the feature it meant)."""
    spec = manifest.get("input") or {}
    names = spec.get("feature_names")
    input_name = str(spec.get("name") or "input")
    if not names:
        if drop:
            raise CaptureConfigError(
                f"features to drop {sorted(drop)} given, but the model has no feature names"
            )
        return Encoder(None, None, input_name)
    unknown = drop - set(names)
    if unknown:
        raise CaptureConfigError(
            f"features to drop {sorted(unknown)} are not features of the model "
            f"(its features: {list(names)})"
        )
    keep = [i for i, name in enumerate(names) if name not in drop]
    return Encoder(tuple(names[i] for i in keep), np.asarray(keep, dtype=np.intp), input_name)


class CaptureCounts:
    """`verdict_capture_rows_total{model,outcome}` children, looked up once per model."""

    def __init__(self, family: Any, model: str) -> None:
        self.children = {o: family.labels(model=model, outcome=o) for o in OUTCOMES}

    def add(self, outcome: str, n: int) -> None:
        if n:
            self.children[outcome].inc(n)


class Capture:
    """Samples the rows of the models that have a rate and stores them in the background.

    `offer` runs on the event loop; everything else on the writer thread (`start`, `stop`).
    """

    def __init__(
        self,
        store: LabelStore,
        rows_family: Any,
        rates: Mapping[str, float],
        drop: Mapping[str, frozenset[str]],
        max_rows_per_s: int,
        max_rows: int,
        retention_days: float,
        clock: Callable[[], float] = time.time,
        queue_rows: int | None = None,
    ) -> None:
        self.store = store
        self.rates = dict(rates)
        self.drop = dict(drop)
        self.max_rows_per_s = max_rows_per_s
        self.max_rows = max_rows
        self.retention_s = retention_days * DAY_S
        self.clock = clock
        self._family = rows_family
        self._samplers: dict[str, Sampler] = {}
        self._encoders: dict[tuple[str, int], Encoder] = {}
        self._counts: dict[str, CaptureCounts] = {}
        self._queue: queue.Queue[tuple[str, int, str, np.ndarray, float] | None] = queue.Queue(
            QUEUE_ROWS if queue_rows is None else queue_rows
        )
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._last_failure_log = -math.inf
        self._handled_cv = threading.Condition()  # notified after each batch is handled
        self.queued = 0  # rows put in the queue (on the loop)
        self.handled = 0  # rows the writer took out of it and stored, dropped or failed

    # -- on the event loop --------------------------------------------------------------------

    def register(self, model: str, version: int, manifest: Mapping[str, Any]) -> None:
        """A version was loaded: capture its rows when its model has a rate. A drop setting
        that does not fit the model turns capture off for the model, with an ERROR line."""
        rate = self.rates.get(model)
        if not rate:
            return
        try:
            encoder = encoder_for(manifest, self.drop.get(model, frozenset()))
        except CaptureConfigError as exc:
            log.error("input capture stays off for %s (version %s): %s", model, version, exc)
            self._samplers.pop(model, None)
            return
        self._encoders[(model, version)] = encoder
        self._counts.setdefault(model, CaptureCounts(self._family, model))
        self._samplers.setdefault(model, Sampler(rate))

    def unregister(self, model: str, version: int) -> None:
        """A version was retired; rows of it still queued are stored with its encoder."""

    def offer(self, model: str, version: int, x: np.ndarray, ids: list[str]) -> None:
        """Called after an answered request with its rows and prediction ids: queue the
        sampled rows. Never raises, never blocks."""
        sampler = self._samplers.get(model)
        if sampler is None:
            return
        picked = sampler.pick(len(ids))
        if picked is None:
            return
        counts = self._counts[model]
        now = self.clock()
        second = int(now)
        if second != sampler.second:
            sampler.second, sampler.taken = second, 0
        room = self.max_rows_per_s - sampler.taken
        if room < len(picked):
            counts.add("dropped_rate", len(picked) - max(room, 0))
            picked = picked[: max(room, 0)]
        sampler.taken += len(picked)
        full = 0
        for i in picked:
            try:
                self._queue.put_nowait((model, version, ids[i], x[i].copy(), now))
            except queue.Full:
                full += 1
        self.queued += len(picked) - full
        counts.add("dropped_full", full)

    # -- the writer thread --------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (it prunes old captures first)."""
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="verdict-capture", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = STOP_DRAIN_S) -> None:
        """Store what is queued (for up to `timeout_s`), then stop the writer thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # a full queue wakes the writer anyway
            self._queue.put_nowait(None)
        thread.join(timeout_s)

    def prune(self) -> int:
        """Delete every model's captures older than the retention; returns how many."""
        return self.store.prune_captures(self.clock() - self.retention_s)

    def _run(self) -> None:
        next_prune = 0.0
        deadline: float | None = None
        while True:
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL_S
                try:
                    pruned = self.prune()
                    if pruned:
                        log.info("input capture: pruned %d captures past the retention", pruned)
                except Exception as exc:  # the store may be down: try again at the next turn
                    self._log_failure(f"pruning old captures failed: {exc}")
            if self._stopping.is_set() and deadline is None:
                deadline = time.monotonic() + STOP_DRAIN_S
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            batch = [] if first is None else [first]
            while len(batch) < WRITE_BATCH_ROWS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    batch.append(item)
            if batch:
                self._write(batch)
            if deadline is not None and (time.monotonic() > deadline or self._queue.empty()):
                return

    def _write(self, batch: list[tuple[str, int, str, np.ndarray, float]]) -> None:
        records: list[CaptureRecord] = []
        per_model: dict[str, int] = {}
        for model, version, pid, row, at in batch:
            encoder = self._encoders.get((model, version))
            if encoder is None:
                continue
            records.append(CaptureRecord(pid, model, version, at, encoder.encode(row)))
            per_model[model] = per_model.get(model, 0) + 1
        try:
            # One call per model, so the stored count of each is known for its counter.
            for model in per_model:
                mine = [r for r in records if r.model == model]
                stored = self.store.capture(mine, self.max_rows)
                self._counts[model].add("stored", stored)
                self._counts[model].add("dropped_cap", len(mine) - stored)
                per_model[model] = 0
        except Exception as exc:
            for model, left in per_model.items():
                self._counts[model].add("failed", left)
            self._log_failure(f"storing captured inputs failed, rows dropped: {exc}")
        with self._handled_cv:
            self.handled += len(batch)
            self._handled_cv.notify_all()

    def _log_failure(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_S:
            self._last_failure_log = now
            log.warning("input capture: %s", message)

    def wait_drained(self, timeout_s: float = 10.0) -> bool:
        """Wait until the writer has handled every row queued so far (tests, benchmark)."""
        target = self.queued
        with self._handled_cv:
            return self._handled_cv.wait_for(lambda: self.handled >= target, timeout_s)
