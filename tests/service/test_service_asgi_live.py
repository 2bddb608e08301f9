"""The same answers from verdict's own server and from a stock ASGI server (uvicorn).

`python -m service` serves through verdict's HTTP server; `uvicorn
service.http.app:create_app --factory` through the edge's ASGI face, on uvicorn's public
API alone. Both are real processes on 127.0.0.1; every check runs against both.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT, TEST_KEY, free_port, write_binary, write_image
from tests.reliability.rel_support import read_response

KEY = "asgi-live-key"
ROW = [0.1, -0.2, 0.3]
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVERS = {
    "verdict": [sys.executable, "-m", "service", "--port", "{port}"],
    "uvicorn": [
        sys.executable,
        "-m",
        "uvicorn",
        "service.http.app:create_app",
        "--factory",
        "--port",
        "{port}",
        "--log-level",
        "warning",
    ],
}


class Process:
    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="asgi-live-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [part.format(port=self.port) for part in command],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, Path(self.log.name).read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.1)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        finally:
            self.log.close()


@pytest.fixture(scope="module", params=sorted(SERVERS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp(f"asgi-{request.param}")
    write_binary(tmp / "models")
    write_image(tmp / "models")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERDICT_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "VERDICT_MODEL_REPOSITORY": str(tmp / "models"),
            "VERDICT_FEEDBACK_DB": str(tmp / "var" / "feedback.sqlite3"),
            "VERDICT_PREDICTION_ID_KEY": TEST_KEY,
            "VERDICT_API_KEYS": KEY,
            "VERDICT_MAX_BODY_BYTES": "4096",
            "VERDICT_READ_TIMEOUT_S": "1",
        }
    )
    process = Process(SERVERS[request.param], env)
    yield process.url
    code = process.stop()
    # verdict exits 0 after a clean drain; stock uvicorn dies of the signal it re-raises.
    assert code == 0 if request.param == "verdict" else code in (0, -15)


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "code"} and r.json()["code"] == code, r.text
    assert r.headers["x-request-id"]


def test_health_readiness_and_metadata(served: str) -> None:
    assert httpx.get(f"{served}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{served}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{served}/v2/models/bin").json()["name"] == "bin"
    assert "verdict_http_request_duration_seconds" in httpx.get(f"{served}/metrics").text


def test_predict_and_infer(served: str) -> None:
    body = {"model": "bin", "instances": [ROW]}
    r = httpx.post(f"{served}/predict", json=body, headers={**AUTH, "X-Request-ID": "rid-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "rid-1"
    assert r.json()["predictions"][0]["prediction_id"].startswith("p3.")
    x = np.array([ROW], np.float32)
    infer = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": ROW}]}
    r = httpx.post(f"{served}/v2/models/bin/infer", json=infer, headers=AUTH)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 2]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    ).encode()
    r = httpx.post(
        f"{served}/v2/models/bin/versions/1/infer",
        content=header + x.tobytes(),
        headers={
            **AUTH,
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
    )
    assert r.status_code == 200, r.text


def test_every_error_in_the_one_shape(served: str) -> None:
    good = {"model": "bin", "instances": [ROW]}
    _error(httpx.post(f"{served}/predict", json=good), 401, "unauthorized")
    _error(httpx.post(f"{served}/predict", content=b"{nope", headers=AUTH), 400, "bad_request")
    missing = {"model": "nope", "instances": [ROW]}
    _error(httpx.post(f"{served}/predict", json=missing, headers=AUTH), 404, "model_not_found")
    _error(httpx.get(f"{served}/predict"), 405, "method_not_allowed")
    _error(httpx.get(f"{served}/nowhere"), 404, "not_found")
    big = {"model": "bin", "instances": [ROW] * 500}
    _error(httpx.post(f"{served}/predict", json=big, headers=AUTH), 413, "payload_too_large")
    text = {**AUTH, "Content-Type": "text/plain"}
    _error(
        httpx.post(f"{served}/predict", content=b"x", headers=text), 415, "unsupported_media_type"
    )
    short = {"model": "bin", "instances": [[1.0]]}
    _error(httpx.post(f"{served}/predict", json=short, headers=AUTH), 422, "invalid_input")
    _error(httpx.get(f"{served}/v2/repository/index"), 403, "admin_disabled")


def test_a_stalled_body_gets_408(served: str) -> None:
    port = int(served.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"model": '
        )
        status, _, doc = read_response(sock, timeout_s=15)
    assert status == 408 and doc["code"] == "request_timeout"
