"""Inference, whatever the transport: resolve the version, fit the input, run, decide, sign.

`predict` takes the rows of the simple API, `infer` the tensors of the Open Inference
Protocol; both return what the rows decide (probabilities, class, score, prediction ids) or
raise a `VerdictError`. Nothing here knows HTTP or gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.errors import BadRequestError, InferenceError, OverloadedError, VerdictError
from service.models.batching import BatchResult
from service.models.codecs import InferInput, rows_to_input, tensor_to_input
from service.models.repository import Repository
from service.models.version import ModelVersion
from service.monitoring.ids import PredictionIds
from service.monitoring.request_metrics import Outcomes

if TYPE_CHECKING:
    from service.dataplane.shadow import ShadowRunner
    from service.monitoring.capture import Capture
    from service.monitoring.tracing import RequestTrace

log = logging.getLogger(__name__)

# Called after each answered prediction with (version, inputs, class indices, scores), on the
# loop's next callback after the answer; the drift monitor hangs here. Must be cheap.
Observer = Callable[[ModelVersion, np.ndarray, np.ndarray, np.ndarray], None]


@dataclass(slots=True)
class Decided:
    """What the rows of one request decide."""

    version: ModelVersion
    probabilities: np.ndarray  # float32 [n, classes]
    class_index: np.ndarray  # [n]: the threshold's class (binary) or the argmax
    score: np.ndarray  # [n]: the positive class's probability (binary) or the top one
    prediction_ids: list[str] | None
    result: BatchResult


class Inference:
    """The inference half of the data plane, shared by every transport."""

    def __init__(self, repository: Repository, ids: PredictionIds, max_rows: int) -> None:
        self.repository = repository
        self.ids = ids
        self.max_rows = max_rows
        self.observers: list[Observer] = []
        # Input capture (docs/lifecycle.md); None unless some model has a capture rate.
        self.capture: Capture | None = None
        # Runs a sampled share of a primary's requests on its shadow, after the answer.
        self.shadows: ShadowRunner | None = None
        self._active = 0  # inference requests in flight
        self._lone_turn = False  # a request ran at once in this turn of the loop

    async def predict(
        self,
        model: str | None,
        version: int | str | None,
        rows: Any,
        trace: RequestTrace | None = None,
    ) -> Decided:
        """The simple API (REST only): rows as lists in feature order or objects keyed by
        feature name."""
        mv = self.repository.acquire(model, version)
        self._active += 1
        try:
            try:
                x = rows_to_input(rows, mv.spec, self.max_rows)
            except VerdictError:
                mv.metrics.requests["rest"].invalid.inc()
                raise
            return await self.run(mv, x, True, "rest", trace)
        finally:
            self._active -= 1
            self.repository.release(mv)

    async def infer(
        self,
        model: str,
        version: str | None,
        inputs: list[InferInput],
        outputs: list[str] | None,
        with_ids: bool,
        protocol: str = "rest",
        trace: RequestTrace | None = None,
    ) -> Decided:
        """Open Inference Protocol: one input tensor named as the model's; `outputs` names the
        outputs wanted (None or empty: every output). Every input problem is a 400.
        `protocol` (rest, grpc) labels the request's outcome; `trace` gets its spans."""
        mv = self.repository.acquire(model, version)
        self._active += 1
        try:
            try:
                x = self._tensor_input(mv, inputs)
                for name in outputs or ():
                    if name != mv.output_name:
                        raise BadRequestError(
                            f"model {mv.name!r} has no output {name!r}; "
                            f"outputs: [{mv.output_name!r}]"
                        )
            except VerdictError:
                mv.metrics.requests[protocol].invalid.inc()
                raise
            return await self.run(mv, x, with_ids, protocol, trace)
        finally:
            self._active -= 1
            self.repository.release(mv)

    def _tensor_input(self, mv: ModelVersion, inputs: list[InferInput]) -> np.ndarray:
        names = [i.name for i in inputs]
        if names != [mv.spec.name]:
            raise BadRequestError(
                f"model {mv.name!r} takes one input named {mv.spec.name!r}; got {names}"
            )
        x = tensor_to_input(inputs[0].array, mv.spec, mv.spec.name)
        if len(x) > self.max_rows:
            raise BadRequestError(f"too many rows: {len(x)} > max_rows_per_request {self.max_rows}")
        return x

    async def run(
        self,
        mv: ModelVersion,
        x: np.ndarray,
        with_ids: bool,
        protocol: str = "rest",
        trace: RequestTrace | None = None,
    ) -> Decided:
        """Run a validated float32 batch on a version and decide each row; the prediction is
        counted (metrics, observers) on the loop's next callback, after the answer."""
        outcomes = mv.metrics.requests[protocol]
        tag = None
        if trace is not None:
            trace.set(
                {
                    "verdict.model": mv.name,
                    "verdict.model_version": mv.version,
                    "verdict.rows": len(x),
                }
            )
            tag = trace.tag
            submitted = time.time_ns()
        try:
            result = self._run_now(mv, x, tag)
            if result is None:
                result = await mv.batcher.submit(x, tag)
        except InferenceError:
            outcomes.error.inc()
            raise
        except OverloadedError:
            outcomes.overloaded.inc()
            raise
        if trace is not None:
            trace.ran(submitted, result)
        probs = result.probabilities
        if mv.positive_index is not None and mv.threshold is not None:
            pos = mv.positive_index
            score = probs[:, pos]
            hit = score >= mv.threshold  # the positive class (a NaN score never is)
            class_index = (hit if pos == 1 else ~hit).astype(np.intp)
        else:
            class_index = probs.argmax(axis=1)
            score = probs.max(axis=1)
        ids = None
        if with_ids:
            ids = self.ids.issue_many(mv.name, mv.version, class_index, score, time.time())
        asyncio.get_running_loop().call_soon(self._count, mv, x, class_index, score, outcomes, ids)
        return Decided(mv, probs, class_index, score, ids, result)

    def _run_now(self, mv: ModelVersion, x: np.ndarray, tag: object) -> BatchResult | None:
        """Run at once a request that has nothing to be merged with: it is the only one in
        flight, and no other request ran at once in this turn of the loop (the requests
        that follow in the same turn merge, as under load; running each at once instead
        costs throughput under load: docs/benchmarks.md)."""
        if self._active != 1 or self._lone_turn:
            return None
        self._lone_turn = True
        asyncio.get_running_loop().call_soon(self._end_turn)
        return mv.batcher.run_now(x, tag)

    def _end_turn(self) -> None:
        self._lone_turn = False

    def _count(
        self,
        mv: ModelVersion,
        x: np.ndarray,
        class_index: np.ndarray,
        score: np.ndarray,
        outcomes: Outcomes,
        ids: list[str] | None = None,
    ) -> None:
        """Count one answered request: the version's metrics, each observer (drift), then
        input capture, which only samples here and stores on its own thread; then offer it
        to the model's shadow, if any."""
        m = mv.metrics
        if mv.positive_index is not None and mv.threshold is not None:
            m.score.observe_many(score)
        outcomes.ok.inc()
        mv.issued += len(class_index)
        if len(class_index) == 1:
            m.predictions.add_one(int(class_index[0]))
        else:
            m.predictions.add_many(class_index)
        for observe in self.observers:
            try:
                observe(mv, x, class_index, score)
            except Exception:
                log.exception("prediction observer failed")
        capture = self.capture
        if capture is not None and ids is not None:
            try:
                capture.offer(mv.name, mv.version, x, ids)
            except Exception:
                log.exception("input capture failed to sample a request")
        if self.shadows is not None:
            try:
                self.shadows.offer(mv, x, ids)
            except Exception:
                log.exception("offering a request to the shadow failed")
