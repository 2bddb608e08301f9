"""The in-process ceiling: session.run rows/s on one thread, no HTTP (run under taskset -c 0)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.payloads import PAYLOAD_DIR, load_rows


def measure(
    model_file: Path,
    rows: list[list[float]],
    batch: int,
    seconds: float,
    warmup_s: float = 0.5,
) -> dict[str, float | int]:
    """Call session.run on `batch` rows in a loop for `seconds`; return calls/s and rows/s."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    node = session.get_inputs()[0]
    row_shape = [int(d) for d in node.shape[1:]]
    picked = [rows[i % len(rows)] for i in range(batch)]
    x = np.asarray(picked, dtype=np.float32).reshape([batch, *row_shape])
    feed = {node.name: x}
    for phase_s, counted in ((warmup_s, False), (seconds, True)):
        calls = 0
        start = time.perf_counter()
        deadline = start + phase_s
        while True:
            session.run(None, feed)
            calls += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        if counted:
            elapsed = now - start
            return {
                "batch": batch,
                "calls": calls,
                "seconds": elapsed,
                "calls_per_s": calls / elapsed,
                "rows_per_s": calls * batch / elapsed,
            }
    raise AssertionError("unreachable")


def main() -> None:
    """Print one JSON line per batch size."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument("--payload", required=True, help="payload name in bench/payloads")
    parser.add_argument("--payload-dir", type=Path, default=PAYLOAD_DIR)
    parser.add_argument("--batch", type=int, action="append", required=True)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    rows = load_rows(args.payload, args.payload_dir)
    for batch in args.batch:
        result = measure(args.model_file, rows, batch, args.seconds, args.warmup)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
