"""What a shadow costs the primary: predict throughput and latency of one server process with
no shadow, a shadow on 10% and on 100% of the requests, and a slow shadow on 10% and 100%.

Each case is a fresh `python -m service` on the two versions of the shadow tests (a primary
and a challenger of the same size) plus a slow challenger (a deep MLP: about 19 ms for one
row and 67 ms for 32 on one core of the machine of docs/benchmarks.md, where the primary
takes tens of microseconds); wrk sends single-row `/predict` requests without a version, so
the primary answers and the shadow runs after the answer. Version 1 is the primary in every
case (a roles file per case); "no shadow" is a shadow at rate 0 (the sampling check still
runs). The cases run round-robin `--repeat` times (the machine is shared; the median run is
reported). The server's /metrics says how many sampled rows the shadow decided and how many
it dropped because its queue was full.

Usage: python -m bench.shadow_cost [--seconds 8] [--connections 8] [--repeat 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.conftest import BIN_CLASSES, BIN_FEATURES, LiveServer, make_manifest, write_version
from tests.lifecycle.shadow_support import MODEL, write_pair

LUA = Path(__file__).resolve().parent / "wrk" / "post.lua"
BODY = json.dumps({"model": MODEL, "instances": [[0.5, -0.3, 1.2]]})
# The slow challenger: 3 -> HIDDEN -> (DEPTH x HIDDEN) -> 2.
HIDDEN, DEPTH = 2048, 16
# (case, shadow version, sample rate); version 1 is the primary throughout.
CASES = (
    ("no shadow", 2, 0.0),
    ("shadow 10%", 2, 0.1),
    ("shadow 100%", 2, 1.0),
    ("slow shadow 10%", 3, 0.1),
    ("slow shadow 100%", 3, 1.0),
)


def write_slow(root: Path, version: int = 3) -> Path:
    """A deep MLP challenger (served unchecked: no reference sample)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "input"
    dims = [3, *([HIDDEN] * (DEPTH + 1)), 2]
    for i, (a, b) in enumerate(pairwise(dims)):
        w = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"h{i}"]))
        prev = f"h{i}"
        if b != 2:
            nodes.append(helper.make_node("Tanh", [prev], [f"a{i}"]))
            prev = f"a{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    raw = model.SerializeToString()
    manifest = make_manifest(
        MODEL,
        version,
        raw,
        task="binary",
        in_dims=(3,),
        classes=BIN_CLASSES,
        feature_names=BIN_FEATURES,
        threshold=0.5,
        positive_class="spam",
    )
    return write_version(root, MODEL, version, raw, manifest)


def _wrk(url: str, body: Path, seconds: int, connections: int) -> dict[str, Any]:
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            str(LUA),
            f"{url}/predict",
            "--",
            str(body),
            "application/json",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    line = next(li for li in done.stdout.splitlines() if li.startswith("BENCH_JSON "))
    return dict(json.loads(line.removeprefix("BENCH_JSON ")))


def _shadow_rows(text: str) -> dict[str, int]:
    rows: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("verdict_shadow_rows_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            rows[outcome] = rows.get(outcome, 0) + int(float(line.rsplit(" ", 1)[1]))
    return rows


def run_case(
    name: str, shadow: int, rate: float, work: Path, seconds: int, conns: int
) -> dict[str, Any]:
    """One row of the table: a fresh server with v1 primary and the shadow given (its roles
    file), wrk, then /metrics."""
    roles = {"primary": 1, "shadow": shadow, "sample_rate": rate}
    (work / "models" / MODEL / "roles.json").write_text(json.dumps(roles))
    env = {
        "VERDICT_MODEL_REPOSITORY": str(work / "models"),
        "VERDICT_FEEDBACK_URL": f"sqlite:///{work}/{name.replace(' ', '-')}.sqlite3",
        "VERDICT_PREDICTION_ID_KEY": "bench-key",
    }
    server = LiveServer(env)
    try:
        server.wait_ready()
        body = work / "body.json"
        body.write_text(BODY)
        answer = httpx.post(f"{server.url}/predict", content=BODY, timeout=30).json()
        assert answer["version"] == 1, answer  # the primary answers
        _wrk(server.url, body, 2, conns)  # warm-up
        run = _wrk(server.url, body, seconds, conns)
        rows = _shadow_rows(httpx.get(f"{server.url}/metrics", timeout=30).text)
    finally:
        server.stop()
    elapsed = run["duration_us"] / 1e6
    return {
        "case": name,
        "roles": roles,
        "requests_per_s": round(run["requests"] / elapsed, 1),
        "p50_ms": round(run["p50_us"] / 1000, 2),
        "p99_ms": round(run["p99_us"] / 1000, 2),
        "errors": run["errors"],
        "shadow_decided": rows.get("decided", 0),
        "shadow_dropped": rows.get("dropped", 0),
        "shadow_failed": rows.get("failed", 0),
    }


def _median(name: str, found: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run of a case by throughput, with every run's throughput beside it."""
    ordered = sorted(found, key=lambda r: r["requests_per_s"])
    row = dict(ordered[len(ordered) // 2])
    row["runs_requests_per_s"] = [r["requests_per_s"] for r in found]
    row["errors"] = sum(r["errors"] for r in found)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in CASES}
    with tempfile.TemporaryDirectory(prefix="verdict-bench-shadow-") as tmp:
        work = Path(tmp)
        write_pair(work / "models")
        write_slow(work / "models")
        for _ in range(args.repeat):
            for name, shadow, rate in CASES:
                row = run_case(name, shadow, rate, work, args.seconds, args.connections)
                print(json.dumps(row), flush=True)
                runs[name].append(row)
    rows = [_median(name, found) for name, found in runs.items()]
    for row in rows:
        print("MEDIAN", json.dumps(row), flush=True)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "seconds": args.seconds,
        "connections": args.connections,
    }
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
