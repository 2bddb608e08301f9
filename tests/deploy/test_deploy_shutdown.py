"""Graceful shutdown of a real server under load: SIGTERM drains in-flight requests and exits 0."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PredictClient

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "deploy" / "locust" / "breast_cancer_sample.json"
DRAIN_SECONDS = 10.0
CLIENTS = 10
ROWS_PER_REQUEST = 2000  # big enough that answering all clients takes a while
MODEL = "breast-cancer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m service` on a free port with VERDICT_* settings."""

    def __init__(self, store: Path, log: Path) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERDICT_")}
        env.update(
            PYTHONPATH=str(ROOT),
            VERDICT_HOST="127.0.0.1",
            VERDICT_PORT=str(self.port),
            VERDICT_GRPC_PORT="0",  # tests never take a fixed port
            VERDICT_MODEL_REPOSITORY=str(ROOT / "models"),
            VERDICT_FEEDBACK_DB=str(store),
            VERDICT_PREDICTION_ID_KEY="shutdown-test-key-" + "k" * 24,
            VERDICT_DRAIN_SECONDS=str(DRAIN_SECONDS),
            # Room for every client's rows at once: the test is about draining, not shedding.
            VERDICT_MAX_QUEUE_ROWS=str(CLIENTS * ROWS_PER_REQUEST * 4),
        )
        self.log = log.open("ab")
        cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self.log, stderr=self.log)
        self._log_path = log

    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, limit_s: float = 90.0) -> None:
        deadline = time.monotonic() + limit_s
        url = f"http://127.0.0.1:{self.port}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited early:\n{self.log_text()}"
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {limit_s} s:\n{self.log_text()}")

    def post(self, path: str, body: object, timeout: float = 60.0) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    servers: list[Server] = []

    def _start() -> Server:
        server = Server(tmp_path / "feedback.sqlite3", tmp_path / "server.log")
        servers.append(server)
        server.wait_ready()
        return server

    yield _start
    for server in servers:
        server.stop()


def _feedback_results(body: Any) -> list[str]:
    return [str(item["result"]) for item in body["results"]]


def test_sigterm_drains_in_flight_requests_refuses_new_ones_and_exits_0(start: Any) -> None:
    sample = json.loads(SAMPLE.read_text())
    rows = sample["rows"]
    server = start()

    # A label recorded before the shutdown must survive it (the store is flushed and closed).
    status, body = server.post("/predict", {"model": MODEL, "instances": [rows[0]]})
    assert status == 200, body
    prediction_id = body["predictions"][0]["prediction_id"]
    item = {"prediction_id": prediction_id, "label": sample["labels"][0]}
    status, body = server.post("/feedback", {"items": [item]})
    assert status == 200, body
    assert _feedback_results(body) == ["accepted"]

    instances = [rows[i % len(rows)] for i in range(ROWS_PER_REQUEST)]
    payload = json.dumps({"model": MODEL, "instances": instances}).encode()
    clients = [PredictClient(server.port, payload, timeout_s=120) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    for client in clients:
        assert client.sent.wait(60), "a client could not send its request"
    # Barrier: once the server answers a request sent after all of them, its event loop has
    # accepted every earlier connection and read its request head, so all are in flight.
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/v2/health/live", timeout=60):
        pass
    sigterm_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)

    # New connections are refused once the drain has begun.
    refused = False
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline and not refused:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            time.sleep(0.05)
        except ConnectionRefusedError:
            refused = True
    assert refused, "the server still accepted connections after SIGTERM"

    # Every request in flight at SIGTERM is answered in full, and the process exits 0.
    for client in clients:
        client.join(timeout=DRAIN_SECONDS + 30)
    problems = [
        (c.status, repr(c.error)) for c in clients if c.status != 200 or c.rows != ROWS_PER_REQUEST
    ]
    assert not problems, f"in-flight requests were not answered: {problems}\n{server.log_text()}"
    assert any(c.answered_at > sigterm_at for c in clients), (
        "every request finished before SIGTERM: the test did not exercise the drain"
    )
    code = server.proc.wait(timeout=DRAIN_SECONDS + 20)
    assert code == 0, f"exit code {code}\n{server.log_text()}"

    # Restarted on the same store with the same key, the label is already there.
    again = start()
    status, body = again.post("/feedback", {"items": [item]})
    assert status == 200, body
    assert _feedback_results(body) == ["duplicate"]
    again.proc.send_signal(signal.SIGTERM)
    assert again.proc.wait(timeout=DRAIN_SECONDS + 20) == 0
