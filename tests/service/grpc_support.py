"""What the in-process gRPC tests share: a server in a thread with gRPC on a free port, a model
whose next run is held on its thread, and a tritonclient request."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import tritonclient.grpc as triton

from tests.service.server_support import ThreadServer

ROW = np.array([[0.1, -0.2, 0.3]], dtype=np.float32)


def grpc_infer(port: int, x: np.ndarray = ROW, **headers: str) -> Any:
    """One ModelInfer of the test model `bin` with tritonclient.grpc (raw FP32)."""
    with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("bin", [tensor], headers=headers or None)


@contextlib.contextmanager
def held_run(
    server: ThreadServer, model: str = "bin"
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """The model's runs go to its thread, and the next one waits there: yields (running,
    release); `running` is set once that run waits, `release` lets it go (else 10 s)."""
    mv = server.app.state.repository.resolve(model)
    batcher = mv.batcher
    original_run, original_budget = batcher._run, batcher.inline_budget_s
    release = threading.Event()
    running = threading.Event()
    held = [False]

    def run(x: np.ndarray) -> np.ndarray:
        if not held[0]:
            held[0] = True
            running.set()
            release.wait(10)
        return original_run(x)

    batcher._run = run
    batcher.inline_budget_s = 0.0  # every run on the thread, none on the loop
    try:
        yield running, release
    finally:
        release.set()
        batcher._run = original_run
        batcher.inline_budget_s = original_budget


def in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    """Run fn(*args) in a thread; the list gets its result or its exception."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn(*args))
        except Exception as exc:  # handed to the test, which asserts on it
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out
