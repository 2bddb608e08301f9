"""Provider choice (CUDA when reported, CPU otherwise), CPU fallback, thread settings."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from service.models.runtime import (
    CPU,
    CUDA,
    ModelSession,
    RuntimeOptions,
    choose_providers,
    create_session,
    session_options,
)
from tests.conftest import build_onnx


def test_auto_picks_cuda_when_onnxruntime_reports_it() -> None:
    assert choose_providers(["auto"], [CUDA, CPU]) == [CUDA, CPU]


def test_auto_picks_cpu_otherwise() -> None:
    assert choose_providers(["auto"], [CPU]) == [CPU]
    assert choose_providers(["auto"], ["AzureExecutionProvider", CPU]) == [CPU]


def test_explicit_providers_keep_order_skip_missing_and_end_with_cpu() -> None:
    assert choose_providers([CUDA], [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers(["TensorrtExecutionProvider", CUDA], [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers([CPU], [CUDA, CPU]) == [CPU]


def test_session_that_cannot_start_on_cuda_falls_back_to_cpu(caplog) -> None:
    graph, _, _ = build_onnx((3,), 2)
    asked: list[list[str]] = []

    def factory(model: bytes, sess_options: Any, providers: list[str]) -> Any:
        asked.append(list(providers))
        if CUDA in providers:
            raise RuntimeError("CUDA driver missing")
        return ort.InferenceSession(model, sess_options=sess_options, providers=providers)

    with caplog.at_level(logging.WARNING):
        session, in_use = create_session(
            graph, RuntimeOptions(), available=lambda: [CUDA, CPU], factory=factory
        )
    assert asked == [[CUDA, CPU], [CPU]]
    assert in_use == [CPU]
    assert "falling back to CPU" in caplog.text
    assert session.run(None, {"input": np.zeros((1, 3), np.float32)})[0].shape == (1, 2)


def test_providers_in_use_are_what_the_session_reports() -> None:
    graph, _, _ = build_onnx((3,), 2)
    # onnxruntime reports CUDA (faked); the real CPU build then runs on CPU only.
    _, in_use = create_session(graph, RuntimeOptions(), available=lambda: [CUDA, CPU])
    assert in_use == [CPU]


def test_cpu_session_failure_is_not_hidden() -> None:
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime raises its own error types
        create_session(b"not onnx", RuntimeOptions(), available=lambda: [CPU])


def test_thread_settings_reach_the_session_options() -> None:
    so = session_options(RuntimeOptions(("auto",), 2))
    assert so.intra_op_num_threads == 2
    # Runs are sequential, so one inter-op thread; every graph optimisation.
    assert so.inter_op_num_threads == 1
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session_options(RuntimeOptions()).intra_op_num_threads == 1


def test_a_session_runs_through_onnxruntimes_public_run() -> None:
    class Recording:
        def __init__(self) -> None:
            self.calls: list[Any] = []

        def run(self, outputs: list[str], feed: dict[str, Any]) -> Any:
            self.calls.append(outputs)
            return [feed["input"] * 2]

    wrapped = Recording()
    ms = ModelSession(wrapped, [CUDA, CPU], "input", "probabilities")
    np.testing.assert_array_equal(ms.run(np.ones((1, 3), np.float32)), np.full((1, 3), 2.0))
    assert wrapped.calls == [["probabilities"]]
    graph, _, _ = build_onnx((3,), 2)
    session, providers = create_session(graph, RuntimeOptions(providers=(CPU,)))
    ms = ModelSession(session, providers, "input", session.get_outputs()[0].name)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(ms.run(x), session.run([ms.output_name], {"input": x})[0])
