"""ONNX Runtime: sessions (provider choice, CPU fallback, threads) and the thread runs go to."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

SessionFactory = Callable[..., Any]


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The providers to ask for: `auto` = CUDA (then CPU) when available, else CPU."""
    if not requested or list(requested) == ["auto"]:
        return [CUDA, CPU] if CUDA in available else [CPU]
    chosen = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        log.warning("execution providers %s are not available here; skipping them", missing)
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """How sessions are built."""

    providers: tuple[str, ...] = ("auto",)
    intra_op_threads: int = 1


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    """ORT session options from the settings: sequential execution (so one inter-op thread),
    every graph optimisation."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return so


def create_session(
    model: bytes,
    options: RuntimeOptions,
    available: Callable[[], Sequence[str]] = ort.get_available_providers,
    factory: SessionFactory = ort.InferenceSession,
) -> tuple[Any, list[str]]:
    """A session and the providers it really uses; CUDA that fails to start falls back to CPU."""
    providers = choose_providers(options.providers, list(available()))
    so = session_options(options)
    try:
        session = factory(model, sess_options=so, providers=providers)
    except Exception as exc:
        if providers == [CPU]:
            raise
        log.warning("could not create a session with %s (%s); falling back to CPU", providers, exc)
        session = factory(model, sess_options=session_options(options), providers=[CPU])
    in_use = list(session.get_providers())
    if CUDA in providers and CUDA not in in_use:
        log.warning("CUDA was requested but the session runs on %s", in_use)
    return session, in_use


class ModelSession:
    """One ORT session for one model version; `run` is called from a worker thread only."""

    def __init__(self, session: Any, providers: list[str], input_name: str, output_name: str):
        self.session = session
        self.providers = providers
        self.input_name = input_name
        self.output_name = output_name
        self._outputs = [output_name]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a float32 batch."""
        result: np.ndarray = self.session.run(self._outputs, {self.input_name: batch})[0]
        return result

    def graph_inputs(self) -> list[tuple[str, str, list[Any]]]:
        """(name, type, shape) of each graph input."""
        return [(i.name, i.type, list(i.shape)) for i in self.session.get_inputs()]

    def graph_outputs(self) -> list[tuple[str, str, list[Any]]]:
        """(name, type, shape) of each graph output."""
        return [(o.name, o.type, list(o.shape)) for o in self.session.get_outputs()]


class OrtThread:
    """One thread that runs model calls handed over from the event loop: a SimpleQueue in,
    one `call_soon_threadsafe` out (lighter than `loop.run_in_executor`)."""

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
        while (item := self._queue.get()) is not None:
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


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
