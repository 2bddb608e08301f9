"""`verdict-train export` on a store filled directly: the version and time window, the time
split that keeps a request's rows on one side, features dropped before storing, an image
model's values as columns, and refusals."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest

from service.monitoring.examples import META_COLUMNS, holdout_start
from service.monitoring.records import CaptureRecord, LabelRecord
from service.monitoring.store import FeedbackStore
from tests.conftest import write_binary, write_image
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


def export(
    url: str, repo: Path, out: Path, *extra: str, model: str = "bin"
) -> list[dict[str, str]]:
    args = ["export", model, "--store", url, "--repository", str(repo), "--out", str(out)]
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


def test_export_reads_an_older_schema_without_migrating_it(
    filled: tuple[str, Path], tmp_path: Path
) -> None:
    url, repo = filled
    db = sqlite3.connect(tmp_path / "f.db")
    db.executescript("DROP TABLE roles; PRAGMA user_version = 2;")  # as release 2 left it
    db.close()
    assert len(export(url, repo, tmp_path / "x.csv")) == 20
    db = sqlite3.connect(tmp_path / "f.db")
    assert db.execute("PRAGMA user_version").fetchone() == (2,)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert "roles" not in tables and "captures" in tables


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
    mistyped = tmp_path / "mistyped.db"  # refused, and no empty file left there
    store = ["--store", f"sqlite:///{mistyped}", "--repository", str(repo)]
    assert main(["export", "bin", *store, "--out", str(tmp_path / "x.csv")]) == 1
    assert f"no SQLite feedback store at {mistyped}" in capsys.readouterr().err
    assert not mistyped.exists()


def test_the_held_out_start_keeps_whole_time_stamps() -> None:
    assert holdout_start([], 0.3) is None
    assert holdout_start([1.0, 2.0, 3.0], 0.0) is None
    assert holdout_start([1.0, 2.0, 2.0, 3.0], 0.25) == 3.0
    assert holdout_start([1.0, 2.0, 2.0, 3.0], 0.5) == 2.0


def test_export_of_an_image_model_writes_a_column_per_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The inputs of a [1, 4, 4] model, captured as flat lists, become 16 columns named by
    their index, in the order of the flat row; the split and the filters are the tabular ones."""
    repo = tmp_path / "models"
    write_image(repo, version=1)
    write_image(repo, version=2, seed=2)
    store = FeedbackStore(str(tmp_path / "f.db"))
    rows, labels = [], []
    for i in range(10):
        version, at = (1 if i < 6 else 2), T0 + i
        pixels = [float(i) + k / 16 for k in range(16)]
        rows.append(CaptureRecord(f"q{i}", "img", version, at, json.dumps({"input": pixels})))
        labels.append(LabelRecord(f"q{i}", "img", version, i % 3, 2, 0.9, at, at + 5, at))
    store.capture(rows, max_rows=100)
    store.record(labels)
    store.close()
    url = f"sqlite:///{tmp_path}/f.db"
    out = tmp_path / "img.csv"
    args = ["export", "img", "--store", url, "--repository", str(repo), "--out", str(out)]
    assert main([*args, "--holdout-fraction", "0.2"]) == 0
    with out.open() as fh:
        header = next(csv.reader(fh))
    pixels = [f"input[0][{i}][{j}]" for i in range(4) for j in range(4)]
    assert header == [*META_COLUMNS, *pixels]
    got = export(url, repo, out, "--holdout-fraction", "0.2", model="img")
    assert [float(got[3][p]) for p in pixels] == [3.0 + k / 16 for k in range(16)]
    assert [r["split"] for r in got] == ["train"] * 8 + ["holdout"] * 2
    assert got[0]["label"] == "two" and got[1]["predicted"] == "one"
    assert len(export(url, repo, out, "--version", "2", model="img")) == 4
    window = export(url, repo, out, "--since", str(T0 + 8), model="img")
    assert [r["prediction_id"] for r in window] == ["q8", "q9"]

    # A version that takes another shape cannot share the columns; a capture with the wrong
    # number of values is not written as if it were an image.
    v2 = repo / "img" / "2" / "manifest.json"
    manifest = json.loads(v2.read_text())
    manifest["input"]["shape"] = [-1, 1, 2, 8]
    v2.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(args) == 1
    assert "take different inputs" in capsys.readouterr().err
    assert len(export(url, repo, out, "--version", "1", model="img")) == 6
    store = FeedbackStore(str(tmp_path / "f.db"))
    short = json.dumps({"input": [1.0, 2.0]})
    store.capture([CaptureRecord("bad", "img", 1, T0 + 20, short)], max_rows=100)
    store.record([LabelRecord("bad", "img", 1, 0, 0, 0.9, T0 + 20, T0 + 25, T0 + 20)])
    store.close()
    assert main([*args, "--version", "1"]) == 1
    assert "holds 2 values of 'input', not the 16" in capsys.readouterr().err
