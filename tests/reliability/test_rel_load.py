"""Load at capacity and a burst at 10x capacity, against a live server, from separate processes.

Capacity here is CONNECTIONS closed-loop clients: each sends its next request as soon as the
last one is answered, so the server is saturated. The burst opens 10x as many.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, write_binary, write_image
from tests.reliability.rel_support import live_env, port_of, rss_bytes

HERE = Path(__file__).resolve().parent
CONNECTIONS = 4
BURST_FACTOR = 10
ROWS = 64
MAX_QUEUE_ROWS = 4 * ROWS
MAX_INFLIGHT = 2 * CONNECTIONS
MAX_BODY = 256 * 1024
SECONDS = 5
# What the burst may add to the server's resident memory (see docs/reliability.md).
RSS_BOUND = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("load") / "models"
    write_binary(root)
    write_image(root)
    env = live_env(
        root,
        max_queue_rows=MAX_QUEUE_ROWS,
        max_inflight_requests=MAX_INFLIGHT,
        max_body_bytes=MAX_BODY,
        max_batch_rows=ROWS,
    )
    srv = LiveServer(env)
    srv.wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def body_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [[0.01 * i, -0.02 * i, 0.5] for i in range(ROWS)]
    path = tmp_path_factory.mktemp("body") / "predict.json"
    path.write_text(json.dumps({"model": "bin", "instances": rows}))
    return path


def _queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r'^verdict_queue_depth\{model="bin",version="1"\} (\S+)$', text, re.M)
    assert found, "no queue depth series"
    return float(found.group(1))


def _sequential(url: str, body: bytes, n: int) -> tuple[list[int], list[float]]:
    statuses, times = [], []
    with httpx.Client(timeout=10) as http:
        for _ in range(n):
            start = time.perf_counter()
            r = http.post(
                f"{url}/predict", content=body, headers={"Content-Type": "application/json"}
            )
            times.append(time.perf_counter() - start)
            statuses.append(r.status_code)
    return statuses, sorted(times)


def test_sustained_load_at_capacity_fails_nothing(server: LiveServer, body_file: Path) -> None:
    script = body_file.with_suffix(".lua")
    body = body_file.read_text()
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    done = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency", "--timeout", "10s",
         "-s", str(script), f"{server.url}/predict"],
        capture_output=True, text=True, timeout=SECONDS + 30,
    )  # fmt: skip
    out = done.stdout
    print(out)
    assert done.returncode == 0, done.stderr
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert requests > 0
    assert "Non-2xx" not in out, out
    assert "Socket errors" not in out, out


@pytest.mark.slow
def test_a_burst_at_10x_capacity_sheds_with_503_and_recovers(
    server: LiveServer, body_file: Path
) -> None:
    body = body_file.read_bytes()
    before_status, before = _sequential(server.url, body, 30)
    assert set(before_status) == {200}
    baseline_rss = rss_bytes(server.proc.pid)
    peak = [baseline_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes(server.proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        done = subprocess.run(
            [sys.executable, str(HERE / "rel_burst.py"), str(port_of(server.url)), "/predict",
             str(body_file), str(CONNECTIONS * BURST_FACTOR), str(SECONDS)],
            capture_output=True, text=True, timeout=SECONDS + 60,
        )  # fmt: skip
    finally:
        stop.set()
        sampler.join()
    assert done.returncode == 0, done.stderr
    burst: dict[str, Any] = json.loads(done.stdout)
    print(json.dumps(burst, indent=1), f"rss {baseline_rss} -> peak {peak[0]}")

    # Excess requests are shed with 503 + Retry-After in the error shape; nothing times out,
    # nothing is reset, nothing else fails.
    assert set(burst["status"]) <= {"200", "503"}, burst["status"]
    assert burst["status"].get("200", 0) > 0 and burst["status"].get("503", 0) > 0, burst
    assert burst["bad_503"] == 0
    assert burst["timeouts"] == 0 and not burst["errors"], burst
    # Memory stays bounded.
    assert peak[0] - baseline_rss < RSS_BOUND, (baseline_rss, peak[0])

    # Back to normal: nothing queued, nothing shed.
    time.sleep(0.2)
    assert _queue_depth(server.url) == 0
    after_status, after = _sequential(server.url, body, 30)
    assert set(after_status) == {200}, after_status
    print(f"sequential p50 before {before[15] * 1000:.2f} ms, after {after[15] * 1000:.2f} ms")
