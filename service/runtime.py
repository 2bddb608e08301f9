"""ONNX Runtime sessions: provider choice and CPU fallback, thread settings, warm-up."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

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
    inter_op_threads: int = 1
    graph_optimization_level: str = "all"


def session_options(options: RuntimeOptions) -> ort.SessionOptions:
    """ORT session options from the settings."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[options.graph_optimization_level]
    )
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
        # On CPU, the binding's own run: the Python wrapper's per-call checks (every input
        # fed, no foreign OrtValue, no WebGPU graph capture) always pass here, and its
        # execution-provider fallback is for CUDA. ~15% of a one-row run of a small model.
        binding = getattr(session, "_sess", None)
        direct = getattr(binding, "run", None) if providers == [CPU] else None
        self._run: Callable[..., list[np.ndarray]] = direct or session.run

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a float32 batch."""
        result: np.ndarray = self._run(self._outputs, {self.input_name: batch}, None)[0]
        return result

    def graph_inputs(self) -> list[tuple[str, str, list[Any]]]:
        """(name, type, shape) of each graph input."""
        return [(i.name, i.type, list(i.shape)) for i in self.session.get_inputs()]

    def graph_outputs(self) -> list[tuple[str, str, list[Any]]]:
        """(name, type, shape) of each graph output."""
        return [(o.name, o.type, list(o.shape)) for o in self.session.get_outputs()]
