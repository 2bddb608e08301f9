"""Shadow serving: a sampled share of a primary's requests runs again on its model's shadow
version, after the answer and off its path, and the shadow's decisions are kept under the
primary's prediction ids so that one label scores both (docs/lifecycle.md).

The primary never waits for the shadow: a sampled request is queued (bounded in rows; when
full it is dropped and counted), one task runs the queue on the shadow's own batcher, and
the decisions reach the feedback store in batches on the store's threads.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.errors import OverloadedError
from service.models.repository import Repository
from service.models.version import ModelVersion
from service.monitoring.decisions import ShadowDecision
from service.monitoring.metrics import Metrics

log = logging.getLogger(__name__)

# Rows that may wait for shadows (all models together) before sampled requests are dropped.
QUEUE_ROWS = 4096
# Rows of queued requests handed to the shadows at once (their batchers merge them).
BATCH_ROWS = 256
# The share of the time the shadows may run (the rest they wait, and their queue drops what
# does not fit); runs shorter than IDLE_AFTER_S (a cheap shadow run inline) wait nothing.
BUSY_SHARE = 0.25
IDLE_AFTER_S = 0.002
# Decisions written to the store in one call, at most (a batch is also written whenever the
# queue runs empty).
WRITE_ROWS = 512

Write = Callable[[Sequence[ShadowDecision]], Awaitable[int]]


@dataclass(slots=True)
class _Job:
    shadow: ModelVersion
    x: np.ndarray
    ids: list[str]


def decide(mv: ModelVersion, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class index, score) of each row at a version's own threshold (binary) or argmax."""
    if mv.positive_index is not None and mv.threshold is not None:
        score = probabilities[:, mv.positive_index]
        hit = score >= mv.threshold
        return (hit if mv.positive_index == 1 else ~hit).astype(np.intp), score
    return probabilities.argmax(axis=1), probabilities.max(axis=1)


class ShadowRunner:
    """Samples primary requests, runs them on the shadow, and keeps the shadow's decisions."""

    def __init__(
        self,
        repository: Repository,
        metrics: Metrics,
        write: Write,
        *,
        queue_rows: int = QUEUE_ROWS,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.write = write
        self.queue_rows = queue_rows
        self.sample = sample
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: list[ShadowDecision] = []
        self._closing = False

    def offer(self, mv: ModelVersion, x: np.ndarray, ids: list[str] | None) -> None:
        """Called after a request was answered on `mv`: queue it for the shadow when `mv` is
        its model's primary, the request is sampled, and the queue has room. Cheap; never
        raises into the request."""
        if ids is None or self._closing:
            return
        entry = self.repository.shadow_of(mv)
        if entry is None:
            return
        shadow, rate = entry
        if rate <= 0 or self.sample() >= rate:
            return
        rows = len(x)
        if self._queued + rows > self.queue_rows:
            self._count(shadow, "dropped", rows)
            return
        shadow.active += 1  # pinned until it has run (repository.release unpins)
        self._jobs.append(_Job(shadow, x, ids))
        self._queued += rows
        self._start()

    def _start(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._work())
        self._wake.set()

    def _count(self, shadow: ModelVersion, outcome: str, rows: int) -> None:
        self.metrics.shadow_rows.labels(shadow.name, str(shadow.version), outcome).inc(rows)

    async def _work(self) -> None:
        assert self._wake is not None
        while True:
            if not self._jobs:
                self._wake.clear()  # before the flush: an offer made during it sets it again
                await self._flush()
                if self._jobs:
                    continue
                if self._closing:
                    return
                await self._wake.wait()
                continue
            # The jobs queued now run together, so that the shadow's batcher merges them.
            jobs = [self._jobs.popleft()]
            rows = len(jobs[0].x)
            while self._jobs and rows + len(self._jobs[0].x) <= BATCH_ROWS:
                rows += len(self._jobs[0].x)
                jobs.append(self._jobs.popleft())
            started = time.perf_counter()
            try:
                await asyncio.gather(*(self._run(job) for job in jobs))
            finally:
                for job in jobs:
                    self._queued -= len(job.x)
                    self.repository.release(job.shadow)
            spent = time.perf_counter() - started
            if len(self._pending) >= WRITE_ROWS:
                await self._flush()
            # A shadow gets at most BUSY_SHARE of the time: a slow one then drops sampled
            # requests instead of taking the CPU the primary needs.
            if spent > IDLE_AFTER_S:
                await asyncio.sleep(spent * (1.0 - BUSY_SHARE) / BUSY_SHARE)

    async def _run(self, job: _Job) -> None:
        shadow = job.shadow
        try:
            result = await shadow.batcher.submit(job.x)
        except OverloadedError:
            self._count(shadow, "dropped", len(job.x))
            return
        except Exception as exc:  # whatever the shadow does, the primary never hears of it
            log.warning(
                "shadow %s v%d failed on %d rows: %s", shadow.name, shadow.version, len(job.x), exc
            )
            self._count(shadow, "failed", len(job.x))
            return
        class_index, score = decide(shadow, result.probabilities)
        now = time.time()
        self._pending.extend(
            ShadowDecision(pid, shadow.name, shadow.version, int(c), float(s), now)
            for pid, c, s in zip(job.ids, class_index, score, strict=True)
        )
        self._count(shadow, "decided", len(job.ids))

    async def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            await self.write(batch)
        except Exception as exc:
            log.warning("%d shadow decisions not recorded: %s", len(batch), exc)
            for d in batch:
                self.metrics.shadow_rows.labels(d.model, str(d.version), "unrecorded").inc()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Run what is queued (for at most `timeout_s`), write it, and stop (shutdown)."""
        self._closing = True
        if self._task is None or self._task.done():
            await self._flush()
            return
        assert self._wake is not None
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            while self._jobs:
                job = self._jobs.popleft()
                self._count(job.shadow, "dropped", len(job.x))
                self.repository.release(job.shadow)
            await self._flush()

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a shadow now."""
        return self._queued
