"""gRPC against a real server process (`python -m service`) over the bundled models, with
stock clients: tritonclient.grpc unchanged, and the stub generated from the proto. Answers
are compared with the same model run in-process by ONNX Runtime."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from bench.payloads import load_rows
from service.grpc.generated import inference_pb2 as pb
from service.grpc.generated import inference_pb2_grpc as pb_grpc
from tests.conftest import ROOT, TEST_KEY, LiveServer, free_port

API_KEY = "grpc-test-api-key"
ADMIN_KEY = "grpc-test-admin-key"
AUTH = {"authorization": f"Bearer {API_KEY}"}
MODELS = ROOT / "models"


class GrpcLive:
    """A live server's HTTP URL and gRPC address."""

    def __init__(self, server: LiveServer, grpc_port: int) -> None:
        self.server = server
        self.url = server.url
        self.address = f"127.0.0.1:{grpc_port}"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcLive]:
    var = tmp_path_factory.mktemp("grpc-live")
    grpc_port = free_port()
    server = LiveServer(
        {
            "VERDICT_MODEL_REPOSITORY": str(MODELS),
            "VERDICT_FEEDBACK_DB": str(var / "feedback.sqlite3"),
            "VERDICT_PREDICTION_ID_KEY": TEST_KEY,
            "VERDICT_GRPC_PORT": str(grpc_port),
            "VERDICT_API_KEYS": API_KEY,
            "VERDICT_ADMIN_API_KEY": ADMIN_KEY,
            "VERDICT_DRAIN_SECONDS": "5",
        }
    )
    server.wait_ready()
    yield GrpcLive(server, grpc_port)
    server.stop()


@pytest.fixture(scope="module")
def client(live: GrpcLive) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(live.address) as c:
        yield c


@pytest.fixture(scope="module")
def stub(live: GrpcLive) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(live.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _session(model: str) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(MODELS / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def _rows(model: str, n: int) -> np.ndarray:
    rows = np.asarray(load_rows(model), dtype=np.float64)[:n]
    return rows if model == "breast-cancer" else rows.reshape(n, 1, 8, 8)


def _infer(
    client: triton.InferenceServerClient,
    model: str,
    x: np.ndarray,
    datatype: str,
    name: str = "input",
    **kwargs: Any,
) -> Any:
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], headers=AUTH, **kwargs)


def _refused(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_health_and_metadata_with_tritonclient(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("breast-cancer") and client.is_model_ready("digits", "1")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "verdict" and "model_repository" in meta["extensions"]
    model = client.get_model_metadata("digits", as_json=True)
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}
    ]
    assert model["outputs"][0]["name"] == "probabilities"
    assert (
        _refused(lambda: client.is_model_ready("no-such-model")).status() == "StatusCode.NOT_FOUND"
    )
    err = _refused(lambda: client.get_model_metadata("breast-cancer", "7"))
    assert err.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize(
    ("model", "rows", "datatype"),
    [
        ("breast-cancer", 1, "FP32"),
        ("breast-cancer", 64, "FP32"),
        ("breast-cancer", 17, "FP64"),
        ("digits", 1, "FP32"),
        ("digits", 64, "FP32"),
        ("digits", 9, "INT64"),  # digits' pixels are whole numbers 0-16
    ],
)
def test_infer_equals_onnx_runtime_in_process(
    client: triton.InferenceServerClient, model: str, rows: int, datatype: str
) -> None:
    x = _rows(model, rows)
    sent = x.astype({"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}[datatype])
    result = _infer(client, model, sent, datatype, request_id="req-7")
    got = result.as_numpy("probabilities")
    (expected,) = _session(model).run(None, {"input": x.astype(np.float32)})
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response.id == "req-7" and response.model_version == "1"


def test_bad_tensors_get_invalid_argument_with_the_rest_message(
    live: GrpcLive, client: triton.InferenceServerClient
) -> None:
    x = _rows("breast-cancer", 2).astype(np.float32)
    cases = {
        "dtype": lambda: _infer(client, "breast-cancer", x.astype(bool), "BOOL"),
        "shape": lambda: _infer(client, "breast-cancer", x[:, :29], "FP32"),
        "name": lambda: _infer(client, "breast-cancer", x, "FP32", name="features"),
        "output": lambda: _infer(
            client, "breast-cancer", x, "FP32", outputs=[triton.InferRequestedOutput("scores")]
        ),
    }
    rest_bodies = {
        "dtype": {"name": "input", "shape": [2, 30], "datatype": "BOOL", "data": [True] * 60},
        "shape": {"name": "input", "shape": [2, 29], "datatype": "FP32", "data": [0.0] * 58},
        "name": {"name": "features", "shape": [2, 30], "datatype": "FP32", "data": [0.0] * 60},
        "output": {"name": "input", "shape": [2, 30], "datatype": "FP32", "data": [0.0] * 60},
    }
    for what, call in cases.items():
        err = _refused(call)
        assert err.status() == "StatusCode.INVALID_ARGUMENT", (what, err)
        body: dict[str, Any] = {"inputs": [rest_bodies[what]]}
        if what == "output":
            body["outputs"] = [{"name": "scores"}]
        rest = httpx.post(f"{live.url}/v2/models/breast-cancer/infer", json=body, headers=AUTH)
        assert rest.status_code == 400
        assert err.message() == rest.json()["error"], what
    unknown = _refused(lambda: _infer(client, "no-such-model", x, "FP32"))
    assert unknown.status() == "StatusCode.NOT_FOUND" and "no-such-model" in unknown.message()


def test_keys_come_from_metadata(live: GrpcLive, client: triton.InferenceServerClient) -> None:
    x = _rows("breast-cancer", 1).astype(np.float32)
    tensor = triton.InferInput("input", [1, 30], "FP32")
    tensor.set_data_from_numpy(x)
    err = _refused(lambda: client.infer("breast-cancer", [tensor]))
    assert err.status() == "StatusCode.UNAUTHENTICATED"
    assert err.message() == "a valid API key is required (Authorization: Bearer <key>)"
    wrong = _refused(lambda: client.infer("breast-cancer", [tensor], headers={"x-api-key": "no"}))
    assert wrong.status() == "StatusCode.UNAUTHENTICATED"
    ok = client.infer("breast-cancer", [tensor], headers={"x-api-key": API_KEY})
    assert ok.as_numpy("probabilities").shape == (1, 2)
    # The repository extension takes the admin key only, as a bearer token.
    index_err = _refused(lambda: client.get_model_repository_index(headers=AUTH))
    assert index_err.status() == "StatusCode.UNAUTHENTICATED"
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    index = client.get_model_repository_index(headers=admin, as_json=True)
    assert {(m["name"], m["state"]) for m in index["models"]} >= {
        ("breast-cancer", "READY"),
        ("digits", "READY"),
    }


def test_repository_load_and_unload_for_triton_and_kserve_clients(
    client: triton.InferenceServerClient, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    client.unload_model("digits", headers=admin)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.is_model_ready("digits")
        except InferenceServerException as exc:
            assert exc.status() == "StatusCode.NOT_FOUND"
            break
        time.sleep(0.05)
    else:
        raise AssertionError("digits still served after unload")
    # KServe's RepositoryModelLoadRequest carries the model's name in field 1.
    answer = stub.RepositoryModelLoad(
        pb.RepositoryModelLoadRequest(repository_name="digits"),
        metadata=tuple(admin.items()),
    )
    assert answer.model_name == "digits" and answer.isLoaded
    assert client.is_model_ready("digits")
    missing = _refused(lambda: client.load_model("no-such-model", headers=admin))
    assert missing.status() == "StatusCode.NOT_FOUND"


def test_generated_stub_typed_and_raw_contents_and_prediction_ids(
    live: GrpcLive, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    x = _rows("breast-cancer", 3).astype(np.float32)
    (expected,) = _session("breast-cancer").run(None, {"input": x})
    request = pb.ModelInferRequest(model_name="breast-cancer", model_version="1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[3, 30])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    request.parameters["prediction_ids"].bool_param = True
    answer = stub.ModelInfer(request, metadata=tuple(AUTH.items()))
    assert not answer.raw_output_contents  # typed in, typed out
    out = answer.outputs[0]
    assert out.name == "probabilities" and list(out.shape) == [3, 2]
    got = np.asarray(out.contents.fp32_contents, dtype=np.float32).reshape(3, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    ids = answer.parameters["prediction_ids"].string_param.split(",")
    assert len(ids) == 3 and all(i.startswith("p3.") for i in ids)
    # The ids are the same kind REST issues: feedback takes them.
    feedback = [{"prediction_id": i, "label": "benign"} for i in ids]
    r = httpx.post(f"{live.url}/feedback", json=feedback, headers=AUTH)
    assert r.status_code == 200 and [i["result"] for i in r.json()["results"]] == ["accepted"] * 3

    raw = pb.ModelInferRequest(model_name="breast-cancer")
    raw.inputs.add(name="input", datatype="FP32", shape=[3, 30])
    raw.raw_input_contents.append(x.astype("<f4").tobytes())
    answer = stub.ModelInfer(raw, metadata=tuple(AUTH.items()))
    got = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(3, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert "prediction_ids" not in answer.parameters

    both = pb.ModelInferRequest(model_name="breast-cancer")
    both.CopyFrom(raw)
    both.inputs[0].contents.fp32_contents.extend([0.0] * 90)
    short = pb.ModelInferRequest(model_name="breast-cancer")
    short.inputs.add(name="input", datatype="FP32", shape=[3, 30])
    short.raw_input_contents.append(b"\0" * 12)
    wrong_field = pb.ModelInferRequest(model_name="breast-cancer")
    wrong_field.inputs.add(name="input", datatype="FP32", shape=[1, 30])
    wrong_field.inputs[0].contents.int64_contents.extend([1] * 30)
    for bad, words in (
        (both, "contents and raw_input_contents are both set"),
        (short, "raw_input_contents[0] is 12 bytes but shape [3, 30] of FP32 needs 360"),
        (wrong_field, "FP32 values go in contents.fp32_contents; got contents.int64_contents"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(bad, metadata=tuple(AUTH.items()))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (info.value.details() or "")
        trailing = dict(info.value.trailing_metadata() or ())
        assert trailing["verdict-error-code"] == "bad_request"


def test_bytes_that_are_no_message_are_invalid_argument_not_internal(live: GrpcLive) -> None:
    with grpc.insecure_channel(live.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff not a protobuf", metadata=tuple(AUTH.items()))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "the request is not a valid ModelInferRequest message"
        unknown = channel.unary_unary("/inference.GRPCInferenceService/ModelStreamInfer")
        with pytest.raises(grpc.RpcError) as info:
            unknown(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_metrics_count_grpc_requests_by_protocol(
    live: GrpcLive, client: triton.InferenceServerClient
) -> None:
    _infer(client, "digits", _rows("digits", 2).astype(np.float32), "FP32")
    text = httpx.get(f"{live.url}/metrics").text
    ok = 'verdict_inference_requests_total{model="digits",outcome="ok",protocol="grpc",version="1"}'
    assert ok in text and float(text.split(ok)[1].split()[0]) >= 1
    assert 'verdict_grpc_request_duration_seconds_count{code="OK",method="ModelInfer"}' in text
    assert (
        'verdict_grpc_request_duration_seconds_count{code="INVALID_ARGUMENT",method="ModelInfer"}'
        in text
    )


def _sigterm_with_a_request_in_flight(
    proc: subprocess.Popen[bytes], address: str, url: str
) -> tuple[list[Any], float, tuple[str, float]]:
    """Send SIGTERM while a large request is in flight; return [answer or error], how long
    after the signal the answer came, and the first error of new requests sent after the
    signal (status: message) with how long after the signal it came."""
    x = np.tile(_rows("digits", 64).astype(np.float32), (150, 1, 1, 1))  # 9600 rows
    outcome: list[Any] = []
    answered: list[float] = []

    def run() -> None:
        with triton.InferenceServerClient(address) as c:
            try:
                outcome.append(_infer(c, "digits", x, "FP32").as_numpy("probabilities").shape)
            except InferenceServerException as exc:
                outcome.append((exc.status(), exc.message()))
            answered.append(time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    # In flight: its rows wait for, or are in, the model's run (the queue depth counts both).
    wanted = 'verdict_queue_depth{model="digits",version="1"} 9600.0'
    deadline = time.monotonic() + 20
    while wanted not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.005)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    refused = ("", 0.0)
    with triton.InferenceServerClient(address) as c:
        one = _rows("breast-cancer", 1).astype(np.float32)
        # One sent before the signal is handled is answered (maybe behind the large one).
        while not refused[0] and time.monotonic() < signalled + 20:
            try:
                _infer(c, "breast-cancer", one, "FP32", client_timeout=30)
            except InferenceServerException as exc:
                refused = (f"{exc.status()}: {exc.message()}", time.monotonic() - signalled)
    thread.join(30)
    return outcome, answered[0] - signalled, refused


def test_sigterm_drains_grpc_requests_in_flight_then_exits_0(tmp_path: Path) -> None:
    grpc_port = free_port()
    server = LiveServer(
        {
            "VERDICT_MODEL_REPOSITORY": str(MODELS),
            "VERDICT_FEEDBACK_DB": str(tmp_path / "feedback.sqlite3"),
            "VERDICT_PREDICTION_ID_KEY": TEST_KEY,
            "VERDICT_GRPC_PORT": str(grpc_port),
            "VERDICT_API_KEYS": API_KEY,
            "VERDICT_DRAIN_SECONDS": "10",
        }
    )
    try:
        server.wait_ready()
        outcome, after_s, refused = _sigterm_with_a_request_in_flight(
            server.proc, f"127.0.0.1:{grpc_port}", server.url
        )
        assert server.proc.wait(30) == 0
        assert outcome == [(9600, 10)], outcome
        assert after_s > 0, "answered before the signal: nothing was in flight"
        # New requests are sent elsewhere while the one in flight finishes; once it has
        # finished (a slow host), the closed port refuses them, UNAVAILABLE as well.
        error, refused_s = refused
        assert error.startswith("StatusCode.UNAVAILABLE: "), error
        if refused_s < after_s:
            assert error.endswith(": the server is shutting down; retry on another one"), error
        with socket.socket() as s:  # the port is closed
            assert s.connect_ex(("127.0.0.1", grpc_port)) != 0
    finally:
        server.stop()


def test_a_taken_grpc_port_stops_the_server_with_exit_3(live: GrpcLive, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERDICT_")}
    env.update(
        PYTHONPATH=str(ROOT),
        VERDICT_MODEL_REPOSITORY=str(MODELS),
        VERDICT_FEEDBACK_DB=str(tmp_path / "feedback.sqlite3"),
        VERDICT_GRPC_PORT=live.address.rsplit(":", 1)[1],
    )
    for workers in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "service", "--port", str(free_port()), "--workers", workers],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 3, done.stderr[-2000:]


def test_workers_share_the_grpc_port(tmp_path: Path) -> None:
    grpc_port = free_port()
    server = LiveServer(
        {
            "VERDICT_MODEL_REPOSITORY": str(MODELS),
            "VERDICT_FEEDBACK_DB": str(tmp_path / "feedback.sqlite3"),
            "VERDICT_PREDICTION_ID_KEY": TEST_KEY,
            "VERDICT_GRPC_PORT": str(grpc_port),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        },
        ["--workers", "2"],
    )
    try:
        server.wait_ready()
        x = _rows("breast-cancer", 4).astype(np.float32)
        for _ in range(8):  # new channels: the kernel spreads them over both workers
            with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as c:
                tensor = triton.InferInput("input", [4, 30], "FP32")
                tensor.set_data_from_numpy(x)
                assert c.infer("breast-cancer", [tensor]).as_numpy("probabilities").shape == (4, 2)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    finally:
        server.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_grpc_port_minus_one_serves_http_without_loading_grpcio(
    tmp_path: Path, workers: str
) -> None:
    server = LiveServer(
        {
            "VERDICT_MODEL_REPOSITORY": str(MODELS),
            "VERDICT_FEEDBACK_DB": str(tmp_path / "feedback.sqlite3"),
            "VERDICT_PREDICTION_ID_KEY": TEST_KEY,
            "VERDICT_GRPC_PORT": "-1",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        },
        ["--workers", workers],
    )
    try:
        server.wait_ready()
        x = _rows("breast-cancer", 2).tolist()
        answer = httpx.post(
            f"{server.url}/predict", json={"model": "breast-cancer", "instances": x}
        )
        assert answer.status_code == 200, answer.text
        assert "gRPC off" in server.output()
        pids = [server.proc.pid]
        children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
        pids += [int(p) for p in children.read_text().split()]
        if workers == "2":  # the supervisor, its workers (and multiprocessing's helper)
            assert len(pids) >= 3, pids
        for pid in pids:  # no process mapped grpcio's extension
            assert "cygrpc" not in Path(f"/proc/{pid}/maps").read_text(), pid
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
