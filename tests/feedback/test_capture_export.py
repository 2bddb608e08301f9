"""`verdict-train export` on a store filled directly: the version and time window, the time
split that keeps a request's rows on one side, features dropped before storing, and refusals."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest

from service.monitoring.examples import holdout_start
from service.monitoring.records import CaptureRecord, LabelRecord
from service.monitoring.store import FeedbackStore
from tests.conftest import write_binary
from training.__main__ import main

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.fixture
def filled(tmp_path: Path) -> tuple[str, Path]:
    """20 labelled captures of `bin` (v1 at T0+0..9, v2 at T0+10..19, two rows per second),
    one capture without a label, and one row whose `beta` was dropped before storing."""
    write_binary(tmp_path / "models", version=1)
    write_binary(tmp_path / "models", version=2, seed=3)
    store = FeedbackStore(str(tmp_path / "f.db"))
    rows, labels = [], []
    for i in range(20):
        version = 1 if i < 10 else 2
        at = T0 + i // 2
        inputs = {"alpha": float(i), "beta": -1.0, "gamma": 0.5}
        if i == 3:
            del inputs["beta"]
        rows.append(CaptureRecord(f"p{i:02d}", "bin", version, at, json.dumps(inputs)))
        labels.append(LabelRecord(f"p{i:02d}", "bin", version, 0, i % 2, 0.2, at, at + 60, at))
    rows.append(CaptureRecord("unlabelled", "bin", 2, T0 + 30, "{}"))
    store.capture(rows, max_rows=100)
    store.record(labels)
    store.close()
    return f"sqlite:///{tmp_path}/f.db", tmp_path / "models"


def export(url: str, repo: Path, out: Path, *extra: str) -> list[dict[str, str]]:
    args = ["export", "bin", "--store", url, "--repository", str(repo), "--out", str(out)]
    assert main([*args, *extra]) == 0
    with out.open() as fh:
        return list(csv.DictReader(fh))


def test_export_writes_every_labelled_capture_with_a_time_split(
    filled: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, repo = filled
    rows = export(url, repo, tmp_path / "all.csv", "--holdout-fraction", "0.25")
    assert [r["prediction_id"] for r in rows] == [f"p{i:02d}" for i in range(20)]
    # 25% of 20 is 5 rows; the 5th newest shares its second with the 6th, so 6 are held out.
    assert [r["split"] for r in rows] == ["train"] * 14 + ["holdout"] * 6
    assert rows[1]["label"] == "spam" and rows[0]["label"] == "ham"
    assert rows[0]["predicted"] == "ham" and float(rows[0]["captured_at"]) == T0
    assert rows[3]["beta"] == "" and rows[4]["beta"] == "-1.0"
    assert "1 rows lack 'beta'" in capsys.readouterr().err


def test_export_narrows_to_a_version_and_a_window(filled: tuple[str, Path], tmp_path: Path) -> None:
    url, repo = filled
    v2 = export(url, repo, tmp_path / "v2.csv", "--version", "2")
    assert {r["version"] for r in v2} == {"2"} and len(v2) == 10
    window = export(
        url, repo, tmp_path / "w.csv", "--since", "2027-01-15T08:00:02Z", "--until", str(T0 + 4)
    )
    assert [r["prediction_id"] for r in window] == ["p04", "p05", "p06", "p07"]


def test_export_refuses_nothing_to_export_and_bad_times(
    filled: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, repo = filled
    args = ["export", "bin", "--store", url, "--repository", str(repo)]
    assert main([*args, "--out", str(tmp_path / "x.csv"), "--since", str(T0 + 100)]) == 1
    assert "no labelled captured predictions" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "x.csv"), "--since", "yesterday"]) == 1
    assert "not a time" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
    empty = tmp_path / "empty.db"  # a file no service has opened: schema version 0
    empty.touch()
    store = ["--store", f"sqlite:///{empty}", "--repository", str(repo)]
    assert main(["export", "bin", *store, "--out", str(tmp_path / "x.csv")]) == 1
    assert "schema version 0" in capsys.readouterr().err
    with sqlite3.connect(empty) as db:  # and it was not migrated from here
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_the_held_out_start_keeps_whole_time_stamps() -> None:
    assert holdout_start([], 0.3) is None
    assert holdout_start([1.0, 2.0, 3.0], 0.0) is None
    assert holdout_start([1.0, 2.0, 2.0, 3.0], 0.25) == 3.0
    assert holdout_start([1.0, 2.0, 2.0, 3.0], 0.5) == 2.0
