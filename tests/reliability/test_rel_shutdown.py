"""SIGTERM under load: in-flight requests complete, new connections are refused, exit code 0."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import IMG_SHAPE, LiveServer, PredictClient
from tests.reliability.rel_support import live_env, port_of

DRAIN_SECONDS = 5
CLIENTS = 8
ROWS = 3000  # big enough that answering every client takes a while on the tiny model


def test_sigterm_under_load_drains_refuses_new_connections_and_exits_0(
    start_server: Callable[..., LiveServer], rel_repo: Path
) -> None:
    env = live_env(
        rel_repo,
        drain_seconds=DRAIN_SECONDS,
        max_queue_rows=CLIENTS * ROWS * 2,
        max_rows_per_request=ROWS,
    )
    server = start_server(env)
    port = port_of(server.url)
    # One label before the shutdown must be there after it (the store is closed cleanly).
    pred = httpx.post(
        f"{server.url}/predict", json={"model": "bin", "instances": [[0, 0, 0]]}, timeout=30
    )
    item = {"prediction_id": pred.json()["predictions"][0]["prediction_id"], "label": "ham"}
    fb = httpx.post(f"{server.url}/feedback", json={"items": [item]}, timeout=30)
    assert fb.json()["accepted"] == 1

    row = [[[0.1 * ((i + j) % 7) for j in range(IMG_SHAPE[2])] for i in range(IMG_SHAPE[1])]]
    body = json.dumps({"model": "img", "instances": [row] * ROWS}).encode()
    clients = [PredictClient(port, body, timeout_s=60) for _ in range(CLIENTS)]
    for c in clients:
        c.start()
    for c in clients:
        assert c.sent.wait(60)
    # Once a request sent after them is answered, every earlier one has been read in.
    with urllib.request.urlopen(f"{server.url}/v2/health/live", timeout=60):
        pass
    sigterm_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)

    refused = False
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline and not refused:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.02)
        except ConnectionRefusedError:
            refused = True
    assert refused, "new connections were still accepted after SIGTERM"

    for c in clients:
        c.join(timeout=DRAIN_SECONDS + 30)
    failed = [(c.status, repr(c.error)) for c in clients if c.status != 200 or c.rows != ROWS]
    assert not failed, f"in-flight requests failed: {failed}\n{server.output()[-3000:]}"
    assert any(c.answered_at > sigterm_at for c in clients), "the drain was not exercised"
    code = server.proc.wait(timeout=DRAIN_SECONDS + 10)
    assert code == 0, f"exit code {code}\n{server.output()[-3000:]}"
    assert "Cancel" not in server.output()  # the drain finished within its time

    again = LiveServer(env)
    try:
        again.wait_ready()
        fb = httpx.post(f"{again.url}/feedback", json={"items": [item]}, timeout=30)
        assert fb.json()["duplicate"] == 1
        again.proc.send_signal(signal.SIGTERM)  # idle: exits 0 at once
        assert again.proc.wait(timeout=DRAIN_SECONDS + 10) == 0
    finally:
        again.stop()


def test_the_store_is_closed_at_shutdown_even_when_draining_fails(
    rel_repo: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from tests.conftest import make_settings, wait_ready

    app = create_app(make_settings(rel_repo, tmp_path))
    with TestClient(app) as c:
        wait_ready(c)
        store = app.state.feedback.store
        assert c.get("/models/bin/quality").status_code == 200
        assert store._db is not None  # opened by the lifespan

        async def broken_close() -> None:
            raise RuntimeError("drain failed")

        app.state.repository.close = broken_close
    assert store._db is None, "the feedback store was left open"
