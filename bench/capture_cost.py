"""What input capture costs the predict path: requests/s of `POST /predict` with capture off
and at 1% (`VERDICT_CAPTURE_RATES=breast-cancer=0.01`, the other capture settings at their
defaults), 1 and 64 rows per request, on a real `python -m service` serving the bundled
breast-cancer model with a SQLite store.

The server is pinned to core 0 and wrk to core 1 (as `make bench`); the two modes alternate
for `--rounds` rounds, and the table keeps each case's median. Capture's own outcome counters
(`verdict_capture_rows_total`) are read from /metrics after each capture run.

Usage: python -m bench.capture_cost [--seconds 5] [--rounds 3] [--connections 8] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[1]
LUA = ROOT / "bench" / "wrk" / "post.lua"
PAYLOAD = ROOT / "bench" / "payloads" / "breast-cancer.json"
MODES = {"off": "", "1%": "breast-cancer=0.01"}


def _body(rows: int, path: Path) -> Path:
    source = json.loads(PAYLOAD.read_text())["rows"]
    instances = [source[i % len(source)] for i in range(rows)]
    path.write_text(json.dumps({"model": "breast-cancer", "instances": instances}))
    return path


def _wrk(url: str, body: Path, seconds: int, connections: int) -> dict[str, Any]:
    wrk = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s"]
    done = subprocess.run(
        [*wrk, str(LUA), f"{url}/predict", "--", str(body), "application/json"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    line = next(li for li in done.stdout.splitlines() if li.startswith("BENCH_JSON "))
    return dict(json.loads(line.removeprefix("BENCH_JSON ")))


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def offer_cost_us(rows: int, rate: float, calls: int = 200_000) -> float:
    """The sampling decision alone, in-process: µs per `Capture.offer` of a `rows`-row
    request (the writer not running, so no store work is in the figure)."""
    import time

    import numpy as np
    from prometheus_client import CollectorRegistry

    from service.monitoring.capture import Capture
    from service.monitoring.metrics import Metrics
    from service.monitoring.store import FeedbackStore

    with tempfile.TemporaryDirectory() as tmp:
        metrics = Metrics(CollectorRegistry())
        store = FeedbackStore(f"{tmp}/f.db")
        capture = Capture(store, metrics.capture_rows, {"m": rate}, {}, 100, 100_000, 30.0)
        capture.register("m", 1, {"input": {"name": "input", "feature_names": ["a", "b"]}})
        x = np.zeros((rows, 2), dtype=np.float32)
        ids = [f"id{i}" for i in range(rows)]
        t0 = time.perf_counter()
        for _ in range(calls):
            capture.offer("m", 1, x, ids)
        return 1e6 * (time.perf_counter() - t0) / calls


def _capture_counts(url: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("verdict_capture_rows_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = int(float(line.rsplit(" ", 1)[1]))
    return counts


def run_once(mode: str, rows: int, work: Path, seconds: int, connections: int) -> dict[str, Any]:
    """One server, one wrk run; returns requests/s, latency and capture's counters."""
    env = {
        "VERDICT_MODEL_REPOSITORY": str(ROOT / "models"),
        "VERDICT_FEEDBACK_URL": f"sqlite:///{work}/{mode.strip('%')}-{rows}.sqlite3",
        "VERDICT_PREDICTION_ID_KEY": "bench-key",
        "VERDICT_CAPTURE_RATES": MODES[mode],
    }
    server = LiveServer(env)
    try:
        server.wait_ready()
        subprocess.run(["taskset", "-a", "-p", "-c", "0", str(server.proc.pid)], check=True,
                       capture_output=True)  # fmt: skip
        body = _body(rows, work / f"body-{rows}.json")
        _wrk(server.url, body, 1, connections)  # warm-up
        cpu0 = _cpu_s(server.proc.pid)
        run = _wrk(server.url, body, seconds, connections)
        cpu = _cpu_s(server.proc.pid) - cpu0
        counts = _capture_counts(server.url)
    finally:
        server.stop()
    return {
        "mode": mode,
        "rows": rows,
        "requests_per_s": run["requests"] / (run["duration_us"] / 1e6),
        "p50_ms": run["p50_us"] / 1000,
        "p99_ms": run["p99_us"] / 1000,
        "errors": run["errors"],
        # The server's CPU (every thread, the capture writer's too) per answered request:
        # steadier than requests/s on a machine shared with other jobs.
        "cpu_us_per_request": 1e6 * cpu / max(run["requests"], 1),
        "capture": counts,
    }


def _cpu(runs: list[dict[str, Any]], rows: int, mode: str) -> list[float]:
    return [r["cpu_us_per_request"] for r in runs if r["rows"] == rows and r["mode"] == mode]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="verdict-bench-capture-") as tmp:
        for rows in (1, 64):
            for _ in range(args.rounds):
                for mode in MODES:
                    run = run_once(mode, rows, Path(tmp), args.seconds, args.connections)
                    print(json.dumps(run), flush=True)
                    runs.append(run)
    table = []
    for rows in (1, 64):
        off = [r["requests_per_s"] for r in runs if r["rows"] == rows and r["mode"] == "off"]
        on = [r["requests_per_s"] for r in runs if r["rows"] == rows and r["mode"] == "1%"]
        table.append(
            {
                "rows": rows,
                "off_rps": round(statistics.median(off)),
                "capture_1pct_rps": round(statistics.median(on)),
                "change": f"{100 * (statistics.median(on) / statistics.median(off) - 1):+.1f}%",
                "off_cpu_us": round(statistics.median(_cpu(runs, rows, "off")), 1),
                "capture_1pct_cpu_us": round(statistics.median(_cpu(runs, rows, "1%")), 1),
                "offer_us": round(offer_cost_us(rows, 0.01), 3),
                "off_all": [round(v) for v in off],
                "capture_all": [round(v) for v in on],
            }
        )
    for row in table:
        print(json.dumps(row))
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "connections": args.connections,
    }
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "table": table, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
