"""Dynamic batching: per model version, the requests waiting at once merge into one model run.

Where a run happens depends on what it is predicted to cost (`calibrate`, then every run):

- A **cheap** run (predicted within `inline_budget_s`, CPU models only) is made on the event
  loop. Handing a run to a thread and waking the loop afterwards costs several times what a
  small model's run does, so the requests of one loop turn are merged and run at the end of
  that turn (`_run_tick`); the runs of one turn stop once their predicted time would pass
  the budget, and the rest wait for the next turn, after the loop has seen to its sockets.
  A request with nothing to be merged with runs at once (`run_now`, decided by the caller).
- Any other run goes to the version's own thread (`OrtThread`): a request that finds it idle
  and nothing queued runs at once; requests that arrive meanwhile queue and go together in
  the next run, up to `max_batch_rows`, after waiting up to `max_queue_delay_ms` for more
  when several are queued.

A failed run never hangs a request, and one request's rows cannot fail the requests merged
with it: when a merged run fails, each of its requests runs again alone (`_isolate`), so only
a request whose own rows fail gets the error. That costs a run per request, on failure only.
The next run goes on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
from collections import deque
from collections.abc import Callable
from time import perf_counter

import numpy as np

from service.errors import InferenceError, OverloadedError, ShuttingDownError
from service.models.runs import (
    BatchResult,
    Outcome,
    Pending,
    as_inference_error,
    fail,
    failed_alone,
    hand_out,
    rows_of,
    run_each,
    timed_run,
)
from service.models.runtime import OrtThread
from service.monitoring.request_metrics import VersionMetrics

log = logging.getLogger(__name__)

# Longest predicted run made on the event loop, and the most run time one loop turn spends
# on such runs: about what decoding one 64-row JSON body takes there anyway.
INLINE_BUDGET_S = 200e-6
# Weight of each new run in the moving average of measured / predicted run time.
COST_SMOOTHING = 0.1


class Batcher:
    """Merges the requests for one model version into model runs (see the module's text)."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        name: str,
        max_batch_rows: int,
        max_queue_delay_ms: float,
        max_queue_rows: int,
        enabled: bool = True,
        metrics: VersionMetrics | None = None,
        inline_budget_s: float = 0.0,
    ) -> None:
        self._run = run
        self.name = name
        self.max_batch_rows = max_batch_rows
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_rows = max_queue_rows
        self.enabled = enabled
        self.inline_budget_s = inline_budget_s
        self._metrics = metrics
        # Seconds per run = (fixed + per_row * rows) * scale; infinite (never inline) until
        # calibrate() is called.
        self._cost_fixed = math.inf
        self._cost_row = math.inf
        self._cost_scale = 1.0
        # Groups of requests waiting to run on the loop at the end of this turn, in order.
        self._tick: deque[list[Pending]] = deque()
        self._group_rows = 0
        self._tick_scheduled = False
        self._thread = OrtThread(f"ort-{name}")
        self._queue: deque[Pending] = deque()
        self._in_flight: list[Pending] = []
        self._queued_rows = 0
        self._busy = False
        self._last_batch_requests = 1
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.inline_runs = 0
        self.batches_run = 0

    def start(self) -> None:
        """Start the dispatch task on the running loop."""
        # What is alive once a model is loaded (the framework, ONNX Runtime, the manifests)
        # lives for the process: in the permanent generation, full collections skip it and
        # stop stalling the loop for tens of milliseconds (docs/benchmarks.md).
        gc.freeze()
        self._wakeup = asyncio.Event()
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    # -- cost --------------------------------------------------------------------------------

    def calibrate(self, fixed_s: float, per_row_s: float) -> None:
        """Seconds one run costs: `fixed_s + per_row_s * rows` (measured at warm-up)."""
        self._cost_fixed = max(fixed_s, 0.0)
        self._cost_row = max(per_row_s, 0.0)
        self._cost_scale = 1.0

    def estimate_s(self, rows: int) -> float:
        """Predicted seconds for one run of `rows` rows."""
        return (self._cost_fixed + self._cost_row * rows) * self._cost_scale

    def _learn(self, rows: int, seconds: float) -> None:
        predicted = self._cost_fixed + self._cost_row * rows
        if 0 < predicted < math.inf:
            self._cost_scale += COST_SMOOTHING * (seconds / predicted - self._cost_scale)

    def _cheap(self, rows: int) -> bool:
        """Whether one run of `rows` rows belongs on the event loop."""
        budget = self.inline_budget_s
        return budget > 0 and 0 < rows <= self.max_batch_rows and self.estimate_s(rows) <= budget

    # -- admission ---------------------------------------------------------------------------

    def _admit(self, rows: int) -> None:
        if self._closed:
            raise ShuttingDownError(f"model {self.name} is being unloaded")
        if self._queued_rows and self._queued_rows + rows > self.max_queue_rows:
            raise OverloadedError(
                f"model {self.name} is overloaded: {self._queued_rows} rows already waiting "
                f"(max_queue_rows {self.max_queue_rows})"
            )
        self._set_queued(self._queued_rows + rows)

    def _set_queued(self, rows: int) -> None:
        self._queued_rows = rows
        if self._metrics is not None:
            self._metrics.queue_depth.set(rows)

    def _observe(self, rows: int, results: list[BatchResult]) -> None:
        self._learn(rows, results[0].compute_s)
        m = self._metrics
        if m is None:
            return
        m.batch_size.observe(rows)
        for r in results:
            m.queue.observe(r.queue_s)
            m.compute.observe(r.compute_s)

    # -- running -----------------------------------------------------------------------------

    def run_sync(self, x: np.ndarray) -> np.ndarray:
        """Run directly on the calling thread (warm-up, before traffic)."""
        return self._run(x)

    def run_now(self, x: np.ndarray, tag: object = None) -> BatchResult | None:
        """Run at once, on the loop, a request that has nothing to be merged with (the caller
        knows), when the run is cheap and no group waits for the end of this turn (it would
        go first); its answer can then be written before the loop turns at all. None:
        `submit` it. Metrics are observed on the loop's next callback."""
        rows = len(x)
        if self._tick or not self._cheap(rows):
            return None
        self._admit(rows)
        start = perf_counter()
        try:
            out = self._run(x)
        except Exception as exc:
            log.exception("run of %d rows failed on %s", rows, self.name)
            raise as_inference_error(self.name, exc) from exc
        finally:
            self._set_queued(self._queued_rows - rows)
        result = BatchResult(out, 0.0, perf_counter() - start, rows, (tag,))
        self.inline_runs += 1
        self.batches_run += 1
        asyncio.get_running_loop().call_soon(self._observe, rows, [result])
        return result

    async def submit(self, x: np.ndarray, tag: object = None) -> BatchResult:
        """Probabilities for a validated float32 batch; raises OverloadedError when full.
        `tag` is handed back, with the tags of the requests merged with it, in the result."""
        rows = len(x)
        self._admit(rows)
        loop = asyncio.get_running_loop()
        # A cheap run stays on the loop even while a slow one is on the thread: it would only
        # queue behind it there (ONNX Runtime sessions take concurrent runs).
        if self.inline_budget_s > 0:
            join = self.enabled and bool(self._tick) and self._cheap(self._group_rows + rows)
            if join or self._cheap(rows):
                future: asyncio.Future[BatchResult] = loop.create_future()
                pending = Pending(x, future, tag)
                if join:
                    self._tick[-1].append(pending)
                    self._group_rows += rows
                else:
                    self._tick.append([pending])
                    self._group_rows = rows
                if not self._tick_scheduled:
                    self._tick_scheduled = True
                    loop.call_soon(self._run_tick)
                return await future
        if not self.enabled or (not self._busy and not self._queue):
            return await self._run_alone_on_thread(x, tag)
        future = loop.create_future()
        self._queue.append(Pending(x, future, tag))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    async def _run_alone_on_thread(self, x: np.ndarray, tag: object = None) -> BatchResult:
        """Idle (or batching off): run now on the thread, no queueing."""
        rows = len(x)
        self._busy = True
        enqueued = perf_counter()
        try:
            out, start, compute_s = await self._thread.submit(timed_run, self._run, [x])
        except Exception as exc:
            raise as_inference_error(self.name, exc) from exc
        finally:
            self._busy = False
            self._set_queued(self._queued_rows - rows)
            self._last_batch_requests = 1
            if self._queue and self._wakeup is not None:
                self._wakeup.set()
        result = BatchResult(out, start - enqueued, compute_s, rows, (tag,))
        self.batches_run += 1
        self._observe(rows, [result])
        return result

    def _run_tick(self) -> None:
        """Run the groups waiting for the loop, in order, one run each, until this turn's
        predicted run time would pass the budget; the rest wait for the next turn."""
        self._tick_scheduled = False
        groups = self._tick
        spent = 0.0
        try:
            while groups:
                rows = rows_of(groups[0])
                cost = self.estimate_s(rows)
                if spent and spent + cost > self.inline_budget_s:
                    break
                spent += cost
                group = groups.popleft()
                if not groups:
                    self._group_rows = 0
                self._run_group(group, rows)
        finally:
            # Also after an unexpected error: the groups left must not wait for a next submit.
            if groups and not self._tick_scheduled:
                self._tick_scheduled = True
                asyncio.get_running_loop().call_soon(self._run_tick)

    def _run_group(self, group: list[Pending], rows: int) -> None:
        try:
            out, start, compute_s = timed_run(self._run, [p.x for p in group])
        except Exception as exc:
            if len(group) == 1:
                log.exception("inline run of %d rows failed on %s", rows, self.name)
                fail(group, as_inference_error(self.name, exc))
            else:
                self._merged_failed(group, rows, exc)
                self._isolate(group, run_each(self._run, [p.x for p in group]))
            self._set_queued(self._queued_rows - rows)
            return
        self.inline_runs += 1
        self.batches_run += 1
        results = hand_out(group, out, start, compute_s)
        self._set_queued(self._queued_rows - rows)
        self._observe(rows, results)

    # -- the thread's queue ------------------------------------------------------------------

    async def _wait(self, timeout: float | None = None) -> bool:
        assert self._wakeup is not None
        self._wakeup.clear()
        if timeout is None:
            await self._wakeup.wait()
            return True
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _take(self) -> list[Pending]:
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_batch_rows:
            item = self._queue.popleft()
            rows += item.rows
            batch.append(item)
        return batch

    async def _dispatch_loop(self) -> None:
        """Run the dispatcher; should it ever fail, fail every waiting request, never hang one."""
        while True:
            try:
                await self._dispatch()
                return
            except Exception:
                log.exception("the batcher of %s failed; failing its waiting requests", self.name)
                waiting = self._in_flight + list(self._queue)
                self._queue.clear()
                self._in_flight = []
                self._busy = False
                self._set_queued(0)
                fail(waiting, InferenceError(f"inference failed on {self.name}: batcher error"))

    async def _dispatch(self) -> None:
        while True:
            if not self._queue or self._busy:
                if self._closed and not self._queue:
                    return
                await self._wait()
                continue
            if (
                self.max_queue_delay_s > 0
                and self._queued_rows < self.max_batch_rows
                and (len(self._queue) > 1 or self._last_batch_requests > 1)
                and not self._closed
            ):
                deadline = self._queue[0].enqueued + self.max_queue_delay_s
                while self._queued_rows < self.max_batch_rows:
                    remaining = deadline - perf_counter()
                    if remaining <= 0 or not await self._wait(remaining):
                        break
                if self._busy:
                    continue
            batch = self._take()
            self._in_flight = batch
            rows = rows_of(batch)
            self._busy = True
            try:
                out, start, compute_s = await self._thread.submit(
                    timed_run, self._run, [p.x for p in batch]
                )
            except Exception as exc:
                if len(batch) == 1:
                    log.exception("batch of %d rows failed on %s", rows, self.name)
                    fail(batch, as_inference_error(self.name, exc))
                else:
                    self._merged_failed(batch, rows, exc)
                    xs = [p.x for p in batch]
                    self._isolate(batch, await self._thread.submit(run_each, self._run, xs))
                self._in_flight = []
                continue
            finally:
                self._busy = False
                self._set_queued(self._queued_rows - rows)
            self._last_batch_requests = len(batch)
            self.batches_run += 1
            results = hand_out(batch, out, start, compute_s)
            self._in_flight = []
            self._observe(rows, results)

    # -- failure isolation -------------------------------------------------------------------

    def _merged_failed(self, group: list[Pending], rows: int, exc: Exception) -> None:
        log.warning(
            "a merged run of %d requests (%d rows) failed on %s (%s: %s); running each alone",
            len(group),
            rows,
            self.name,
            type(exc).__name__,
            exc,
        )

    def _isolate(self, group: list[Pending], outcomes: list[Outcome]) -> None:
        """Hand each request of a failed merged run what its own run gave: its rows, or the
        error of a run that failed on them alone (500 `inference_failed`: the rows passed
        every check of the model's input, so the fault is the model's)."""
        for i, (p, outcome) in enumerate(zip(group, outcomes, strict=True)):
            if isinstance(outcome, Exception):
                log.error(
                    "request %d of %d failed alone on %s: %s: %s",
                    i + 1,
                    len(group),
                    self.name,
                    type(outcome).__name__,
                    outcome,
                )
                if not p.future.done():
                    p.future.set_exception(failed_alone(self.name, outcome))
                continue
            out, start, compute_s = outcome
            result = BatchResult(out, start - p.enqueued, compute_s, p.rows, (p.tag,))
            self.batches_run += 1
            if not p.future.done():
                p.future.set_result(result)
            self._observe(p.rows, [result])

    async def close(self) -> None:
        """Take no new requests, finish the queued ones, stop the thread."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        while self._busy or self._tick:
            await asyncio.sleep(0.001)
        self._thread.shutdown()
