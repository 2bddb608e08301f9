"""An acknowledged label survives kill -9 of a real uvicorn process, and still counts once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from feedback_support import NOW

from service.monitoring.ids import PredictionIds
from tests.conftest import free_port

SERVER = Path(__file__).with_name("feedback_server.py")


@contextmanager
def server(db_path: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(SERVER), str(port), db_path])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/models/bc/quality", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@pytest.mark.slow
def test_acknowledged_labels_survive_kill_9(db_path: str, ids: PredictionIds) -> None:
    pids = ids.issue_many("bc", 1, [1, 0, 1], [0.9, 0.2, 0.7], NOW)
    items = [{"prediction_id": p, "label": label} for p, label in zip(pids, [1, 0, 0], strict=True)]
    with server(db_path) as (url, process):
        first = httpx.post(f"{url}/feedback", json={"items": items}, timeout=30)
        assert first.json()["accepted"] == 3
        process.send_signal(signal.SIGKILL)  # no shutdown, no close: only committed data stays
        process.wait(timeout=30)
    with server(db_path) as (url, _):
        again = httpx.post(f"{url}/feedback", json={"items": items}, timeout=30)
        assert again.json()["duplicate"] == 3
        quality = httpx.get(f"{url}/models/bc/quality", timeout=30).json()
        ever = quality["versions"][0]["windows"]["all_time"]
        assert (ever["tp"], ever["tn"], ever["fp"]) == (1, 1, 1)
