"""Times what the predict path would pay per row: signing an id vs logging the prediction in SQLite.

Usage: python bench/ids_vs_log.py [--rows 20000] [--batch 64] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.monitoring.ids import PredictionIds

MODEL = "breast-cancer"


def _best_of(runs: int, fn: Callable[[], int]) -> float:
    """Best time per row over a few runs (the least disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        rows = fn()
        best = min(best, (time.perf_counter() - start) / rows)
    return best


def bench_ids(rows: int, batch: int) -> float:
    ids = PredictionIds(os.urandom(32))
    classes = [1] * batch
    scores = [0.73] * batch

    def run() -> int:
        for _ in range(rows // batch):
            ids.issue_many(MODEL, 1, classes, scores, time.time())
        return rows // batch * batch

    return _best_of(3, run)


def bench_log(rows: int, batch: int, synchronous: str, commit_every: int) -> float:
    """INSERT one row per prediction into a WAL SQLite log, committing every `commit_every` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp) / "log.db", isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute(
            "CREATE TABLE predictions (id TEXT PRIMARY KEY, model TEXT, version INTEGER,"
            " class_index INTEGER, score REAL, issued_at REAL) WITHOUT ROWID"
        )
        counter = iter(range(10**9))

        def run() -> int:
            done = 0
            while done < rows:
                db.execute("BEGIN")
                for _ in range(commit_every):
                    db.execute(
                        "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?)",
                        (os.urandom(12).hex() + str(next(counter)), MODEL, 1, 1, 0.73, time.time()),
                    )
                db.execute("COMMIT")
                done += commit_every
            return done

        # per-row commits fsync each row: fewer rows keep the run short
        per_row = _best_of(3, run) if commit_every > 1 else _best_of(1, run)
        db.close()
        return per_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    fsync_rows = min(args.rows, 500)
    results = {
        "signed id, issue_many per batch": bench_ids(args.rows, args.batch),
        "sqlite log, WAL, synchronous=FULL, commit per row": bench_log(fsync_rows, 1, "FULL", 1),
        "sqlite log, WAL, synchronous=NORMAL, commit per row": bench_log(
            args.rows // 4, 1, "NORMAL", 1
        ),
        "sqlite log, WAL, synchronous=FULL, commit per batch": bench_log(
            args.rows, args.batch, "FULL", args.batch
        ),
    }
    print(
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
        f"{platform.machine()}, batch {args.batch}"
    )
    base = results["signed id, issue_many per batch"]
    for name, seconds in results.items():
        print(f"{name:55s} {seconds * 1e6:10.2f} us/row  {seconds / base:8.1f}x")
    if args.out:
        args.out.write_text(json.dumps({k: v * 1e6 for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
