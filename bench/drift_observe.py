"""Times DriftMonitor.observe per batch: what drift monitoring adds to the predict path.

Usage: python bench/drift_observe.py [--features 30] [--bins 10]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.monitoring.drift import DriftMonitor


class _Metrics:
    def __init__(self) -> None:
        self.feature_bin = Counter(
            "verdict_feature_bin",
            "bins",
            ["model", "version", "feature", "bin"],
            registry=CollectorRegistry(),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--bins", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(args.features)]
    cuts = args.bins - 1
    manifest = {
        "task": "binary",
        "input": {"feature_names": names},
        "reference": {
            "features": {n: {"edges": sorted(rng.normal(size=cuts).tolist())} for n in names},
            "score": {"edges": np.linspace(0, 1, cuts + 2)[1:-1].tolist()},
        },
    }
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"{args.features} features x {args.bins} bins + score; best of 5 runs"
    )
    for interval in (0.0, 1.0):
        monitor = DriftMonitor(_Metrics(), max_features=args.features, flush_interval_s=interval)
        monitor.register("m", 1, manifest)
        print(f"flush_interval_s={interval}")
        for rows in (1, 8, 64, 256, 1024):
            x = rng.normal(size=(rows, args.features)).astype(np.float32)
            scores = rng.random(rows).astype(np.float32)
            repeats = max(20, 20_000 // rows)
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(repeats):
                    monitor.observe("m", 1, x, scores)
                best = min(best, (time.perf_counter() - start) / repeats)
            print(f"  batch {rows:5d}: {best * 1e6:8.1f} us/batch {best * 1e6 / rows:7.2f} us/row")


if __name__ == "__main__":
    main()
