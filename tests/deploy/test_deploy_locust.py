"""The Locust file and its SLO gate, run for real against a small stand-in HTTP server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "deploy" / "locust" / "locustfile.py"
SAMPLE = ROOT / "deploy" / "locust" / "breast_cancer_sample.json"


class _Stub(BaseHTTPRequestHandler):
    """Answers the verdict routes the Locust file calls, in verdict's shapes."""

    fail_route: str = ""
    delay_s: float = 0.0
    seen: dict[str, int]

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        route = self.path
        key = "/v2/infer" if route.startswith("/v2/models/") else route
        self.server.seen[key] = self.server.seen.get(key, 0) + 1  # type: ignore[attr-defined]
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_route and key == self.fail_route:
            self._send(500, {"error": "boom", "code": "internal"})
        elif route == "/predict":
            n = len(body["instances"])
            preds = [
                {"prediction_id": f"p1.x{i}", "label": "benign", "class_index": 0} for i in range(n)
            ]
            self._send(200, {"model": body["model"], "version": 1, "predictions": preds})
        elif route.startswith("/v2/models/"):
            n = body["inputs"][0]["shape"][0]
            out = {
                "name": "probabilities",
                "shape": [n, 2],
                "datatype": "FP32",
                "data": [0.5] * 2 * n,
            }
            self._send(200, {"model_name": "breast-cancer", "outputs": [out]})
        elif route == "/feedback":
            self._send(200, {"results": [{"result": "accepted"} for _ in body["items"]]})
        else:
            self._send(404, {"error": "not found", "code": "not_found"})


def _serve(fail_route: str = "", delay_s: float = 0.0) -> Iterator[tuple[str, dict[str, int]]]:
    handler = type("Handler", (_Stub,), {"fail_route": fail_route, "delay_s": delay_s})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.seen = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.seen  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def healthy() -> Iterator[tuple[str, dict[str, int]]]:
    yield from _serve()


@pytest.fixture
def failing_feedback() -> Iterator[tuple[str, dict[str, int]]]:
    yield from _serve(fail_route="/feedback")


@pytest.fixture
def slow() -> Iterator[tuple[str, dict[str, int]]]:
    yield from _serve(delay_s=0.02)


def _locust(host: str, *extra: str, run_time: str = "3s") -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--users", "4", "--spawn-rate", "4", "--run-time", run_time, "--stop-timeout", "2",
        "--host", host, "--only-summary", *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_sample_rows_and_labels_come_from_sklearn_and_are_fresh() -> None:
    sample = json.loads(SAMPLE.read_text())
    assert len(sample["rows"]) == len(sample["labels"]) >= 100
    assert all(len(row) == 30 for row in sample["rows"])
    assert set(sample["labels"]) == {"benign", "malignant"}
    check = [sys.executable, str(ROOT / "scripts" / "gen_locust_sample.py"), "--check"]
    done = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_gate_passes_and_every_task_runs_against_a_healthy_server(
    healthy: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    host, seen = healthy
    done = _locust(host, "--slo-p99-ms", "5000", "--json-file", str(tmp_path / "stats"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SLO gate passed" in done.stderr
    for route in ("/predict", "/v2/infer", "/feedback"):
        assert seen.get(route, 0) > 0, (route, seen)
    stats = json.loads((tmp_path / "stats.json").read_text())
    names = {entry["name"] for entry in stats}
    assert {"/predict [1 row]", "/predict [16 rows]", "/v2/models/[m]/infer"} <= names
    assert sum(entry["num_failures"] for entry in stats) == 0


def test_gate_fails_the_run_when_any_request_fails(
    failing_feedback: tuple[str, dict[str, int]],
) -> None:
    host, _ = failing_feedback
    done = _locust(host, "--slo-p99-ms", "5000")
    assert done.returncode != 0
    assert "SLO gate FAILED" in done.stderr
    assert "failure ratio" in done.stderr


def test_gate_fails_the_run_when_p99_exceeds_the_bound(slow: tuple[str, dict[str, int]]) -> None:
    host, _ = slow
    done = _locust(host, "--slo-p99-ms", "1")
    assert done.returncode != 0
    assert "SLO gate FAILED" in done.stderr
    assert "p99" in done.stderr and "> bound 1.0 ms" in done.stderr
