"""Write deploy/locust/breast_cancer_sample.json: seeded rows and labels for the load test."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer

OUT = Path(__file__).resolve().parent.parent / "deploy" / "locust" / "breast_cancer_sample.json"
ROWS = 200
SEED = 20261123


def build_sample(rows: int = ROWS, seed: int = SEED) -> dict[str, object]:
    """A seeded, class-stratified draw of rows with their true labels (sklearn's names)."""
    data = load_breast_cancer()
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for cls in np.unique(data.target):
        members = np.flatnonzero(data.target == cls)
        share = round(rows * len(members) / len(data.target))
        picked.extend(rng.choice(members, size=share, replace=False).tolist())
    picked = sorted(picked)[:rows]
    names = [str(n) for n in data.target_names]
    return {
        "dataset": "sklearn.datasets.load_breast_cancer",
        "seed": seed,
        "model": "breast-cancer",
        "feature_names": [str(f) for f in data.feature_names],
        "rows": [[float(v) for v in data.data[i]] for i in picked],
        "labels": [names[int(data.target[i])] for i in picked],
    }


def main() -> None:
    """Write (or with --check, compare) the sample file."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="fail if the file differs")
    args = parser.parse_args()
    text = json.dumps(build_sample(), separators=(",", ":")) + "\n"
    if args.check:
        if args.out.read_text() != text:
            raise SystemExit(f"{args.out} is stale: run python scripts/gen_locust_sample.py")
        return
    args.out.write_text(text)


if __name__ == "__main__":
    main()
