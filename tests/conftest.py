"""Shared fixtures: tiny ONNX models in a tmp repository, settings, app, client, live server."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # test modules import helpers from tests.conftest
    sys.path.insert(0, str(ROOT))
BIN_FEATURES = ["alpha", "beta", "gamma"]
BIN_CLASSES = ["ham", "spam"]
IMG_CLASSES = ["zero", "one", "two"]
IMG_SHAPE = (1, 4, 4)
TEST_KEY = "test-prediction-key"


def _weights(n_in: int, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n_in, n_out)).astype(np.float32),
        rng.normal(size=(n_out,)).astype(np.float32),
    )


def build_onnx(
    in_dims: tuple[int, ...],
    n_classes: int,
    seed: int = 0,
    input_name: str = "input",
    output_name: str = "probabilities",
    softmax: bool = True,
    fixed_batch: int | None = None,
    weights: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[bytes, np.ndarray, np.ndarray]:
    """softmax(flatten(x) @ W + b) as ONNX bytes, with W and b (for reference answers); W and
    b are drawn from `seed` unless `weights` gives them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_in = int(np.prod(in_dims))
    w, b = weights if weights is not None else _weights(n_in, n_classes, seed)
    batch: int | str = fixed_batch if fixed_batch is not None else "batch"
    nodes = []
    flat = input_name
    if len(in_dims) > 1:
        nodes.append(helper.make_node("Flatten", [input_name], ["flat"], axis=1))
        flat = "flat"
    nodes.append(helper.make_node("MatMul", [flat, "W"], ["xw"]))
    nodes.append(helper.make_node("Add", ["xw", "b"], ["logits"]))
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=-1))
    else:
        nodes.append(helper.make_node("Identity", ["logits"], [output_name]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, *in_dims])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, n_classes])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), w, b


def reference_probabilities(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What the tiny graph computes, in numpy."""
    logits = x.reshape(len(x), -1).astype(np.float32) @ w + b
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_manifest(
    name: str,
    version: int,
    graph: bytes,
    *,
    task: str,
    in_dims: tuple[int, ...],
    classes: list[str],
    feature_names: list[str] | None,
    threshold: float | None = None,
    positive_class: str | None = None,
) -> dict[str, Any]:
    """A manifest in the form of docs/manifest.md as written before conformance checks existed
    (no `files`, `parity.passed` or `conformance`: the service serves it `unchecked`);
    `add_reference_sample` adds them."""
    features = {
        f: {"edges": [-1.0, 0.0, 1.0], "proportions": [0.2, 0.3, 0.3, 0.2]}
        for f in (feature_names or [])
    }
    return {
        "schema_version": 1,
        "name": name,
        "version": version,
        "created_at": "2026-11-23T23:00:00+00:00",
        "task": task,
        "model_file": "model.onnx",
        "sha256": hashlib.sha256(graph).hexdigest(),
        "opset": 17,
        "frameworks": {"python": "3.11", "onnx": "test"},
        "input": {
            "name": "input",
            "shape": [-1, *in_dims],
            "dtype": "float32",
            "kind": "tabular" if feature_names is not None else "image",
            "feature_names": feature_names,
        },
        "output": {
            "name": "probabilities",
            "shape": [-1, len(classes)],
            "dtype": "float32",
            "classes": classes,
            "positive_class": positive_class,
        },
        "decision": {"threshold": threshold, "method": "test", "reason": "test"},
        "objectives": {"max_fnr": 0.05, "max_fpr": None} if task == "binary" else {},
        "costs": {"cost_fp": 1.0, "cost_fn": 20.0} if task == "binary" else {},
        "evaluation": {},
        "parity": {"max_abs_diff": 0.0, "batch_sizes": [1], "labels_equal": True},
        "reference": {
            "bins": 4,
            "features": features,
            "score": {"edges": [0.25, 0.5, 0.75], "proportions": [0.25] * 4}
            if task == "binary"
            else None,
        },
        "training": {"config": {}, "dataset": {"name": "tiny"}, "seed": 0},
    }


def write_version(
    root: Path,
    name: str,
    version: int,
    graph: bytes,
    manifest: dict[str, Any],
) -> Path:
    """Write model.onnx and manifest.json into root/name/version/."""
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(graph)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def add_reference_sample(
    folder: Path, w: np.ndarray, b: np.ndarray, rows: int = 16, atol: float = 5e-3
) -> dict[str, Any]:
    """Give a written version what training writes for the conformance check at load:
    reference_sample.json (expected probabilities from numpy, not from onnxruntime), `files`
    with both checksums, `parity.passed` and `conformance` (docs/manifest.md). Returns the
    manifest."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    dims = manifest["input"]["shape"][1:]
    x = np.random.default_rng(rows).normal(scale=2.0, size=(rows, *dims)).astype(np.float32)
    p = reference_probabilities(x, w, b)
    threshold = manifest["decision"]["threshold"]
    positive = None
    if manifest["task"] == "binary":
        positive = manifest["output"]["classes"].index(manifest["output"]["positive_class"])
        labels = np.where(p[:, positive] >= threshold, positive, 1 - positive)
        stable = np.abs(p[:, positive] - threshold) > atol
    else:
        labels = p.argmax(axis=1)
        top2 = np.sort(p, axis=1)[:, -2:]
        stable = top2[:, 1] - top2[:, 0] > 2 * atol
    sample = {
        "format": 1,
        "input": {"name": "input", "shape": [rows, *dims], "dtype": "float32"},
        "output": {"name": "probabilities", "shape": [rows, p.shape[1]], "dtype": "float32"},
        "threshold": threshold,
        "positive_index": positive,
        "atol": atol,
        "expected_from": "numpy",
        "inputs": x.tolist(),
        "probabilities": p.tolist(),
        "labels": labels.tolist(),
        "label_stable": stable.tolist(),
        "kinds": ["seeded draw"] * rows,
        "data_rows": [None] * rows,
    }
    raw = json.dumps(sample).encode()
    (folder / "reference_sample.json").write_bytes(raw)
    manifest["files"] = {
        "model.onnx": manifest["sha256"],
        "reference_sample.json": hashlib.sha256(raw).hexdigest(),
    }
    manifest["parity"].update(atol=1e-4, passed=True)
    manifest["conformance"] = {
        "sample_file": "reference_sample.json",
        "rows": rows,
        "atol": atol,
        "expected_from": "numpy",
        "measured": {"provider": "CPUExecutionProvider", "max_abs_diff": 0.0},
    }
    path.write_text(json.dumps(manifest, indent=2))
    return manifest


def write_binary(
    root: Path,
    version: int = 1,
    seed: int = 0,
    name: str = "bin",
    *,
    threshold: float = 0.3,
    weights: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """A binary tabular model with 3 features (threshold 0.3 unless given), and its reference
    sample; W and b are drawn from `seed` unless `weights` gives them."""
    graph, w, b = build_onnx((3,), 2, seed=seed, weights=weights)
    manifest = make_manifest(
        name,
        version,
        graph,
        task="binary",
        in_dims=(3,),
        classes=BIN_CLASSES,
        feature_names=BIN_FEATURES,
        threshold=threshold,
        positive_class="spam",
    )
    folder = write_version(root, name, version, graph, manifest)
    add_reference_sample(folder, w, b)
    return folder


def write_image(root: Path, version: int = 1, seed: int = 1, name: str = "img") -> Path:
    """A 3-class image model on [1, 4, 4] inputs, and its reference sample."""
    graph, w, b = build_onnx(IMG_SHAPE, 3, seed=seed)
    manifest = make_manifest(
        name,
        version,
        graph,
        task="multiclass",
        in_dims=IMG_SHAPE,
        classes=IMG_CLASSES,
        feature_names=None,
    )
    # What training writes for a multiclass model's drift (docs/manifest.md).
    manifest["reference"]["classes"] = {"proportions": [0.5, 0.25, 0.25]}
    manifest["reference"]["confidence"] = {"edges": [0.5, 0.9], "proportions": [0.2, 0.3, 0.5]}
    folder = write_version(root, name, version, graph, manifest)
    add_reference_sample(folder, w, b)
    return folder


def model_weights(kind: str, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """W and b of the tiny models written above."""
    if kind == "bin":
        return _weights(3, 2, 0 if seed is None else seed)
    return _weights(int(np.prod(IMG_SHAPE)), 3, 1 if seed is None else seed)


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """A repository with `bin` v1 (binary, 3 features) and `img` v1 (3 classes, 1x4x4)."""
    root = tmp_path / "models"
    write_binary(root)
    write_image(root)
    return root


def make_settings(repo: Path, tmp: Path, **overrides: Any) -> Any:
    """Settings for a test app, isolated from the environment's VERDICT_* values."""
    from service.settings import Settings

    values: dict[str, Any] = {
        "model_repository": str(repo),
        "feedback_db": str(tmp / "var" / "feedback.sqlite3"),
        "prediction_id_key": TEST_KEY,
        "max_queue_delay_ms": 1.0,
        "grpc_port": 0,  # tests never take a fixed port
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(model_repo: Path, tmp_path: Path) -> Any:
    """Settings over the tiny repository."""
    return make_settings(model_repo, tmp_path)


@pytest.fixture
def app(settings: Any) -> Any:
    """An app with its own registry."""
    from service.http.app import create_app

    return create_app(settings)


def wait_ready(client: Any, timeout_s: float = 20.0) -> None:
    """Poll readiness (models load in the background)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("the service did not become ready")


@pytest.fixture
def client(app: Any) -> Iterator[Any]:
    """A TestClient with the lifespan running and every model loaded."""
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        wait_ready(c)
        yield c


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nobody listens on right now, and not one this test process handed out before.

    The caller binds it later, so the kernel may give the same port to the next bind to port
    0 in between (about 1 in 14,000 a time): two ports asked for in a row (HTTP and gRPC, or
    replicas started together) must not be one. Something else may still take it before the
    server binds it: `LiveServer` then starts again on another port."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `check()` until it is true: what a server does after the test's last byte happens
    on its own loop or process, as soon as it can on a fast host, later on a busy one."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class LiveServer:
    """`python -m service` in a subprocess on 127.0.0.1."""

    # Starts on a port another process took between `free_port` and the server's bind.
    PORT_TRIES = 3

    def __init__(
        self,
        env: dict[str, str],
        args: list[str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VERDICT_")}
        self.env["VERDICT_GRPC_PORT"] = "0"  # tests never take a fixed port
        self.env.update(env)
        self.env["PYTHONPATH"] = str(ROOT)
        self.args = list(args or [])
        self.preexec_fn = preexec_fn  # run in the server's process before it starts
        self.final_output: str | None = None
        self.starts = 0
        self._start()

    def _start(self) -> None:
        import tempfile

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A file, not a pipe: a pipe nobody reads would block a chatty server.
        self.log = tempfile.NamedTemporaryFile(prefix="verdict-live-", suffix=".log")  # noqa: SIM115
        self.starts += 1
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(self.port), *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            preexec_fn=self.preexec_fn,
        )

    def _lost_its_port(self) -> bool:
        """Whether the server stopped at start because its HTTP port was taken meanwhile (exit
        code 3, `cannot listen on`/`cannot bind` the port: address already in use)."""
        log = self.output()
        return (
            self.proc.returncode == 3
            and f"127.0.0.1:{self.port}: " in log
            and "address already in use" in log.lower()
        )

    def output(self) -> str:
        """What the server logged so far."""
        with open(self.log.name, errors="replace") as fh:
            return fh.read()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self._lost_its_port() and self.starts < self.PORT_TRIES:
                    self.log.close()
                    self._start()
                    continue
                raise AssertionError(f"the server exited: {self.output()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        log = self.stop()
        raise AssertionError(f"the live server did not become ready: {log[-2000:]}")

    def stop(self) -> str:
        if self.final_output is not None:
            return self.final_output
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.final_output = self.output()
        self.log.close()
        return self.final_output


@pytest.fixture(scope="module")
def live_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository for the live server (module scope: one server per test module)."""
    root = tmp_path_factory.mktemp("live") / "models"
    write_binary(root)
    write_image(root)
    return root


@pytest.fixture(scope="module")
def live_server(live_repo: Path) -> Iterator[str]:
    """Base URL of a real uvicorn server (`python -m service`) over the live repository."""
    server = LiveServer(
        {
            "VERDICT_MODEL_REPOSITORY": str(live_repo),
            "VERDICT_FEEDBACK_DB": str(live_repo.parent / "var" / "feedback.sqlite3"),
            "VERDICT_PREDICTION_ID_KEY": TEST_KEY,
            "VERDICT_MAX_QUEUE_DELAY_MS": "2",
            "VERDICT_MAX_BATCH_ROWS": "32",
            "VERDICT_DRAIN_SECONDS": "1",
        }
    )
    server.wait_ready()
    yield server.url
    server.stop()


@pytest.fixture
def live_server_factory() -> Iterator[Callable[..., LiveServer]]:
    """Start extra live servers with their own environment; all are stopped afterwards."""
    started: list[LiveServer] = []

    def start(env: dict[str, str], args: list[str] | None = None) -> LiveServer:
        server = LiveServer(env, args)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


class PredictClient(threading.Thread):
    """One big POST /predict on its own connection; records when and how it was answered.

    The shutdown tests start several, send SIGTERM while they are in flight, and assert on
    status, rows, error and answered_at.
    """

    def __init__(self, port: int, body: bytes, timeout_s: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.port, self.body, self.timeout_s = port, body, timeout_s
        self.sent = threading.Event()
        self.status: int | None = None
        self.rows = -1
        self.error: BaseException | None = None
        self.answered_at = 0.0

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        try:
            conn.request("POST", "/predict", self.body, {"Content-Type": "application/json"})
            self.sent.set()
            resp = conn.getresponse()
            payload = resp.read()
            self.answered_at = time.monotonic()
            self.status = resp.status
            if resp.status == 200:
                self.rows = len(json.loads(payload)["predictions"])
        except BaseException as exc:  # recorded and asserted on by the tests
            self.error = exc
            self.sent.set()
        finally:
            conn.close()
