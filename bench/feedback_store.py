"""Labels per second that POST /feedback accepts: SQLite and PostgreSQL stores, one and three
replicas (`python -m service` processes), batches of 1 and 100 labels per request.

Every label sent is a new one (accepted), signed by the fleet, so each one is a real write.
One wrk process per replica (`bench/wrk/feedback.lua`), all at once; a throwaway PostgreSQL
server (Debian's `postgresql`, as the tests use) for the PostgreSQL rows.

Usage: python -m bench.feedback_store [--seconds 5] [--connections 8] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import LiveServer, write_binary
from tests.pgserver import PostgresServer

LUA = Path(__file__).resolve().parent / "wrk" / "feedback.lua"
# Labels each replica has ready per case: more than a run sends, so none repeats.
LABELS_READY = {1: 40_000, 100: 300_000}


def _ids(url: str, n: int) -> list[str]:
    ids: list[str] = []
    with httpx.Client(timeout=120) as http:
        while len(ids) < n:
            rows = [[0.1, 0.2, 0.3]] * min(2000, n - len(ids))
            r = http.post(f"{url}/predict", json={"model": "bin", "instances": rows})
            r.raise_for_status()
            ids += [p["prediction_id"] for p in r.json()["predictions"]]
    return ids


def _bodies(ids: list[str], batch: int, path: Path) -> None:
    with open(path, "w") as out:
        for at in range(0, len(ids) - batch + 1, batch):
            items = [{"prediction_id": pid, "label": "spam"} for pid in ids[at : at + batch]]
            out.write(json.dumps({"items": items}, separators=(",", ":")) + "\n")


def _wrk(url: str, bodies: Path, seconds: int, connections: int) -> dict[str, Any]:
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(LUA), url, "--", str(bodies)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    line = next(li for li in done.stdout.splitlines() if li.startswith("BENCH_JSON "))
    return dict(json.loads(line.removeprefix("BENCH_JSON ")))


def run_case(
    store: str,
    replicas: int,
    batch: int,
    work: Path,
    pg: PostgresServer,
    seconds: int,
    conns: int,
) -> dict[str, Any]:
    """One row of the table: start the replicas on an empty store, send, count."""
    if store == "postgresql":
        pg.reset()
        url = pg.url
    else:
        url = f"sqlite:///{work}/{store}-{replicas}-{batch}.sqlite3"
    env = {
        "VERDICT_MODEL_REPOSITORY": str(work / "models"),
        "VERDICT_FEEDBACK_URL": url,
        "VERDICT_PREDICTION_ID_KEY": "bench-key",
    }
    servers = [LiveServer(env) for _ in range(replicas)]
    try:
        for server in servers:
            server.wait_ready()
        files = []
        for k, server in enumerate(servers):
            path = work / f"bodies-{k}.jsonl"
            _bodies(_ids(server.url, LABELS_READY[batch]), batch, path)
            files.append(path)
        with ThreadPoolExecutor(replicas) as pool:
            runs = list(
                pool.map(
                    lambda s: _wrk(s[0].url, s[1], seconds, conns), zip(servers, files, strict=True)
                )
            )
        accepted = 0
        for server in servers:
            text = httpx.get(f"{server.url}/metrics", timeout=30).text
            accepted += sum(
                int(float(line.rsplit(" ", 1)[1]))
                for line in text.splitlines()
                if line.startswith('verdict_feedback_items_total{model="bin",result="accepted"}')
            )
    finally:
        for server in servers:
            server.stop()
    sent = sum(r["requests"] for r in runs) * batch
    elapsed = max(r["duration_us"] for r in runs) / 1e6
    return {
        "store": store,
        "replicas": replicas,
        "batch": batch,
        "requests_per_s": round(sum(r["requests"] for r in runs) / elapsed, 1),
        "labels_per_s": round(accepted / elapsed),
        # Requests still in flight when wrk stops are counted by the server, not by wrk.
        "all_new": sent <= accepted <= sent + conns * replicas * batch,
        "errors": sum(r["errors"] for r in runs),
        "p50_ms": round(max(r["p50_us"] for r in runs) / 1000, 2),
        "p99_ms": round(max(r["p99_us"] for r in runs) / 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8, help="per replica")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="verdict-bench-fb-") as tmp:
        work = Path(tmp)
        write_binary(work / "models")
        pg = PostgresServer()
        try:
            for store in ("sqlite", "postgresql"):
                for replicas in (1, 3):
                    for batch in (1, 100):
                        row = run_case(
                            store, replicas, batch, work, pg, args.seconds, args.connections
                        )
                        print(json.dumps(row), flush=True)
                        rows.append(row)
        finally:
            pg.remove()
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "seconds": args.seconds,
        "connections_per_replica": args.connections,
    }
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
