"""Dynamic batching: per model version, queued requests merge into one session.run."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import queue
import threading
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np

from service.errors import InferenceError, OverloadedError, ShuttingDownError
from service.metrics import VersionMetrics

log = logging.getLogger(__name__)

# True in the context of a request that has nothing to be merged with (`FrontDoor.lone`): its
# rows may run at once (`Batcher.run_now`) rather than wait for the end of the loop's turn.
ALONE: ContextVar[bool] = ContextVar("verdict_alone", default=False)

# Weight of each new run in the moving average of measured / predicted run time.
COST_SMOOTHING = 0.1


@dataclass(slots=True)
class BatchResult:
    """The rows of one request, and how long they queued and computed."""

    probabilities: np.ndarray
    queue_s: float
    compute_s: float


class _Pending:
    __slots__ = ("enqueued", "future", "rows", "x")

    def __init__(self, x: np.ndarray, future: asyncio.Future[BatchResult]) -> None:
        self.x = x
        self.rows = len(x)
        self.future = future
        self.enqueued = perf_counter()


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class OrtThread:
    """One dedicated thread that runs ONNX Runtime calls handed over from the event loop.

    Lighter than `loop.run_in_executor`: a SimpleQueue in, one `call_soon_threadsafe` out.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run fn(*args) on the thread; the answer comes back as a future of the running loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put((loop, future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, future, fn, args = item
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(*args)
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, future, result, error)

    def shutdown(self) -> None:
        """Let the thread finish what it holds, then stop."""
        self._queue.put(None)


class Batcher:
    """Merges requests for one model version into ONNX Runtime runs.

    Cheap runs are made on the event loop: the requests that arrive in one turn of the loop
    are merged (up to `max_batch_rows` per run) and run at the end of that turn, without
    handing them to a thread (the hand-over and the wake-up cost several times what a small
    model's run does), when one run is predicted to take at most `inline_budget_s`. The runs
    of one turn stop once their predicted time would pass that budget; the rest run in the
    next turn, after the loop has polled its sockets again, so the loop is never held much
    longer than the budget, and a cheap run never goes to the thread for want of budget in
    a turn, nor because a slow run is on the thread. Runs predicted to take longer (and every
    run when the budget is 0, as for GPU models) go to one dedicated thread: a request that
    finds the thread idle and nothing queued runs at once; requests that arrive while a run
    is in progress wait in the queue and go together in the next run, up to
    `max_batch_rows`. When several requests are queued (or the last
    run merged several), the batcher waits up to `max_queue_delay_ms` after the oldest
    arrived to fill the batch further.

    The cost estimate starts from the timings taken at warm-up (`calibrate`) and follows
    every run after (a moving average of measured over predicted), so a model that turns out
    slower than its warm-up moves to the thread by itself.
    """

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
        self.inline_budget_s = inline_budget_s
        # Seconds per run = (fixed + per_row * rows) * scale; unknown (never inline) until
        # calibrate() is called.
        self._cost_fixed = math.inf
        self._cost_row = math.inf
        self._cost_scale = 1.0
        # Requests waiting to run on the loop, as the groups that run together (in order).
        self._tick: deque[list[_Pending]] = deque()
        self._group_rows = 0  # rows of the last group
        self._tick_scheduled = False
        self.inline_runs = 0
        self.name = name
        self.max_batch_rows = max_batch_rows
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_rows = max_queue_rows
        self.enabled = enabled
        self._metrics = metrics
        self._thread = OrtThread(f"ort-{name}")
        self._queue: deque[_Pending] = deque()
        self._in_flight: list[_Pending] = []
        self._queued_rows = 0
        self._busy = False
        self._last_batch_requests = 1
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches_run = 0

    def start(self) -> None:
        """Start the dispatch task on the running loop."""
        # Everything alive once a model is loaded (the framework, ONNX Runtime, the
        # manifests) lives for the process; moving it into the permanent generation keeps
        # full collections, which otherwise stall the loop for tens of milliseconds (the
        # p99 of 1 row x 32 connections went from ~54 ms to ~15 ms), to request garbage.
        gc.freeze()
        self._wakeup = asyncio.Event()
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._dispatch_loop())

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

    def run_sync(self, x: np.ndarray) -> np.ndarray:
        """Run directly on the calling thread (warm-up, before traffic)."""
        return self._run(x)

    def _admit(self, rows: int) -> None:
        if self._closed:
            raise ShuttingDownError(f"model {self.name} is being unloaded")
        if self._queued_rows and self._queued_rows + rows > self.max_queue_rows:
            if self._metrics is not None:
                self._metrics.overloaded.inc()
            raise OverloadedError(
                f"model {self.name} is overloaded: {self._queued_rows} rows already waiting "
                f"(max_queue_rows {self.max_queue_rows})"
            )
        self._queued_rows += rows
        if self._metrics is not None:
            self._metrics.queue_depth.set(self._queued_rows)

    def _release(self, rows: int) -> None:
        self._queued_rows -= rows
        if self._metrics is not None:
            self._metrics.queue_depth.set(self._queued_rows)

    def _timed(self, x: np.ndarray, enqueued: float) -> BatchResult:
        start = perf_counter()
        out = self._run(x)
        return BatchResult(out, start - enqueued, perf_counter() - start)

    def _observe(self, rows: int, results: list[BatchResult]) -> None:
        self._learn(rows, results[0].compute_s)
        m = self._metrics
        if m is None:
            return
        m.batch_size.observe(rows)
        for r in results:
            m.queue.observe(r.queue_s)
            m.compute.observe(r.compute_s)

    async def submit(self, x: np.ndarray) -> BatchResult:
        """Probabilities for a validated float32 batch; raises OverloadedError when full."""
        rows = len(x)
        self._admit(rows)
        loop = asyncio.get_running_loop()
        # Cheap runs stay on the loop even while a slow one is on the thread: they would only
        # queue behind it there (ONNX Runtime sessions take concurrent runs).
        if self.inline_budget_s > 0 and rows <= self.max_batch_rows:
            budget = self.inline_budget_s
            join = (
                self.enabled
                and bool(self._tick)
                and self._group_rows + rows <= self.max_batch_rows
                and self.estimate_s(self._group_rows + rows) <= budget
            )
            if join or self.estimate_s(rows) <= budget:
                inline: asyncio.Future[BatchResult] = loop.create_future()
                pending = _Pending(x, inline)
                if join:
                    self._tick[-1].append(pending)
                    self._group_rows += rows
                else:
                    self._tick.append([pending])
                    self._group_rows = rows
                if not self._tick_scheduled:
                    self._tick_scheduled = True
                    loop.call_soon(self._run_tick)
                return await inline
        if not self.enabled or (not self._busy and not self._queue):
            # Idle (or batching off): run now, no queueing.
            self._busy = True
            enqueued = perf_counter()
            try:
                result = await self._thread.submit(self._timed, x, enqueued)
            except Exception as exc:
                raise _as_inference_error(self.name, exc) from exc
            finally:
                self._busy = False
                self._release(rows)
                self._last_batch_requests = 1
                if self._queue and self._wakeup is not None:
                    self._wakeup.set()
            self.batches_run += 1
            self._observe(rows, [result])
            return result
        future: asyncio.Future[BatchResult] = loop.create_future()
        self._queue.append(_Pending(x, future))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    def run_now(self, x: np.ndarray) -> BatchResult | None:
        """Run a request's rows at once, on the loop, for a request that has nothing to be
        merged with (the caller knows: see `FrontDoor.lone`), when the run is predicted
        within the inline budget and no group waits for the end of this loop turn (it would
        go first). Its answer can then be written before the loop turns at all. None:
        `submit` it. The run's metrics are observed on the loop's next callback, after the
        answer is written."""
        rows = len(x)
        if (
            self._tick
            or self.inline_budget_s <= 0
            or not 0 < rows <= self.max_batch_rows
            or self.estimate_s(rows) > self.inline_budget_s
        ):
            return None
        self._admit(rows)
        start = perf_counter()
        try:
            out = self._run(x)
        except Exception as exc:
            log.exception("run of %d rows failed on %s", rows, self.name)
            raise _as_inference_error(self.name, exc) from exc
        finally:
            self._release(rows)
        result = BatchResult(out, 0.0, perf_counter() - start)
        self.inline_runs += 1
        self.batches_run += 1
        asyncio.get_running_loop().call_soon(self._observe, rows, [result])
        return result

    def _run_tick(self) -> None:
        """Run the groups waiting for the loop, in order, each group one run; once this
        turn's predicted run time would pass the inline budget, the rest wait for the next
        turn (after the loop has seen to its sockets)."""
        self._tick_scheduled = False
        groups = self._tick
        spent = 0.0
        try:
            while groups:
                rows = _rows_of(groups[0])
                cost = self.estimate_s(rows)
                if spent and spent + cost > self.inline_budget_s:
                    break
                spent += cost
                group = groups.popleft()
                if not groups:
                    self._group_rows = 0
                self._run_inline(group, rows)
        finally:
            # Also after an unexpected error: the groups left must not wait for a next submit.
            if groups and not self._tick_scheduled:
                self._tick_scheduled = True
                asyncio.get_running_loop().call_soon(self._run_tick)

    def _run_inline(self, group: list[_Pending], rows: int) -> None:
        start = perf_counter()
        try:
            x = group[0].x if len(group) == 1 else np.concatenate([p.x for p in group])
            out = self._run(x)
        except Exception as exc:
            log.exception("inline run of %d rows failed on %s", rows, self.name)
            error = _as_inference_error(self.name, exc)
            for p in group:
                if not p.future.done():
                    p.future.set_exception(error)
            self._release(rows)
            return
        compute_s = perf_counter() - start
        self.inline_runs += 1
        self.batches_run += 1
        results = _hand_out(group, out, start, compute_s)
        self._release(rows)
        self._observe(rows, results)

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

    def _take(self) -> list[_Pending]:
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_batch_rows:
            item = self._queue.popleft()
            rows += item.rows
            batch.append(item)
        return batch

    def _run_batch(self, xs: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
        start = perf_counter()
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        out = self._run(x)
        return out, start, perf_counter() - start

    async def _dispatch_loop(self) -> None:
        """Run the dispatcher; should it ever fail, fail every waiting request, never hang one."""
        while True:
            try:
                await self._dispatch()
                return
            except Exception:
                log.exception("the batcher of %s failed; failing its waiting requests", self.name)
                error = InferenceError(f"inference failed on {self.name}: batcher error")
                waiting = self._in_flight + list(self._queue)
                self._queue.clear()
                self._in_flight = []
                self._busy = False
                self._queued_rows = 0
                self._release(0)
                for p in waiting:
                    if not p.future.done():
                        p.future.set_exception(error)

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
            rows = _rows_of(batch)
            self._busy = True
            try:
                out, start, compute_s = await self._thread.submit(
                    self._run_batch, [p.x for p in batch]
                )
            except Exception as exc:
                log.exception("batch of %d rows failed on %s", rows, self.name)
                error = _as_inference_error(self.name, exc)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(error)
                self._in_flight = []
                continue
            finally:
                self._busy = False
                self._release(rows)
            self._last_batch_requests = len(batch)
            self.batches_run += 1
            results = _hand_out(batch, out, start, compute_s)
            self._in_flight = []
            self._observe(rows, results)

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


def _hand_out(
    batch: list[_Pending], out: np.ndarray, start: float, compute_s: float
) -> list[BatchResult]:
    """Give each request of a merged run its own rows of the output, in order."""
    results = []
    offset = 0
    for p in batch:
        result = BatchResult(out[offset : offset + p.rows], start - p.enqueued, compute_s)
        offset += p.rows
        results.append(result)
        if not p.future.done():
            p.future.set_result(result)
    return results


def _rows_of(group: list[_Pending]) -> int:
    return group[0].rows if len(group) == 1 else sum(p.rows for p in group)


def _as_inference_error(name: str, exc: Exception) -> Exception:
    if isinstance(exc, InferenceError | OverloadedError | ShuttingDownError):
        return exc
    return InferenceError(f"inference failed on {name}: {type(exc).__name__}")
