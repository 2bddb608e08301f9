"""The benchmark's --smoke mode runs end to end and writes valid JSON lines (no timing checks)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench import load, report, run

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "benchmarks.md"
CASE_NUMBERS = (
    "requests",
    "requests_per_s",
    "rows_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "errors",
    "duration_s",
    "rows_per_request",
    "connections",
    "startup_s",
    "rss_peak_mb",
)


def _git_head(folder: Path) -> str | None:
    if shutil.which("git") is None:
        return None
    done = subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def _run_smoke(out: Path, *extra: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    files = list(out.glob("*.jsonl"))
    assert len(files) == 1
    return [json.loads(line) for line in files[0].read_text().splitlines()]


def _check_records(records: list[dict[str, Any]], servers: set[str]) -> None:
    assert records[0]["kind"] == "meta"
    assert records[0]["mode"] == "smoke"
    cases = [r for r in records if r["kind"] == "case"]
    assert {r["server"] for r in cases} == servers
    for r in cases:
        for field in CASE_NUMBERS:
            assert isinstance(r[field], int | float) and r[field] >= 0, (field, r)
        assert r["requests"] > 0
        assert r["errors"] == 0, r
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert 0 < r["wrk_cpu_share"] <= 1.5, r  # wrk did work, on one CPU
    server_records = [r for r in records if r["kind"] == "server"]
    assert {r["server"] for r in server_records} == servers
    for r in server_records:
        assert r["startup_s"] > 0
        assert r["rss_peak_mb"] > 0
    ceilings = [r for r in records if r["kind"] == "ceiling"]
    assert ceilings
    assert all(r["rows_per_s"] > 0 for r in ceilings)


def test_smoke_run_against_verdict_and_obvious_server(tmp_path: Path) -> None:
    docs_before = DOCS.read_bytes()
    records = _run_smoke(tmp_path / "results")
    _check_records(records, {"verdict", "obvious"})
    verdict = next(r for r in records if r["kind"] == "case" and r["server"] == "verdict")
    assert verdict["ratio_vs_obvious_requests"] > 0
    # auto: wrk keeps the normal policy on a CPU of its own.
    shared = records[0]["server_cpu"] == records[0]["wrk_cpu"]
    assert verdict["wrk_policy"] == ("batch" if shared else "normal")
    assert DOCS.read_bytes() == docs_before, "--smoke must not rewrite docs/benchmarks.md"


def test_smoke_run_with_the_repository_itself_as_baseline(tmp_path: Path) -> None:
    docs_before = DOCS.read_bytes()
    out = tmp_path / "results"
    records = _run_smoke(out, "--baseline", str(ROOT))
    _check_records(records, {"before", "verdict", "obvious"})
    meta = records[0]
    assert meta["baseline"]["path"] == str(ROOT)
    assert meta["baseline"]["commit"] == _git_head(ROOT)
    assert meta["checkout"]["path"] == str(ROOT)
    cases = [r for r in records if r["kind"] == "case"]
    # Round 1: the baseline next to verdict, before it; the obvious server last.
    json_cases = [r for r in cases if r["protocol"] == "json"]
    assert [r["server"] for r in json_cases] == ["before", "verdict", "obvious"]
    # gRPC: verdict only (the obvious server and the baseline are measured over HTTP).
    assert [r["server"] for r in cases if r["protocol"] == "grpc"] == ["verdict"]
    by_server = {r["server"]: r for r in json_cases}
    assert by_server["verdict"]["ratio_vs_before_requests"] > 0
    assert by_server["before"]["ratio_vs_obvious_requests"] > 0
    assert by_server["before"]["ratio_vs_before_requests"] is None
    markdown = next(out.glob("*.md")).read_text()
    assert "| Target | Bound | Before | Result | After | Result |" in markdown
    assert "### Before and after" in markdown
    assert "Before: this repository at " in markdown
    assert str(ROOT) not in markdown and str(tmp_path) not in markdown
    assert "| breast-cancer | 1r-1c-json | 1 | " in markdown
    assert "| breast-cancer | 1r-1c-json | before | " in markdown
    assert "| before | 1 | " in markdown  # the servers table
    assert DOCS.read_bytes() == docs_before, "--smoke must not rewrite docs/benchmarks.md"


@pytest.mark.parametrize(
    ("extra", "message"),
    [(("--target", "obvious"), "--target all or verdict"), ((), "not found")],
)
def test_baseline_needs_verdict_and_a_checkout(
    tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SystemExit, match=message):
        run.main(["--smoke", "--out", str(tmp_path), "--baseline", str(tmp_path), *extra])
    assert not list(tmp_path.iterdir())


def _tiny_repository(root: Path) -> Path:
    """A one-model repository: a 30-feature linear softmax built with the onnx helper API."""
    weights = numpy_helper.from_array(np.full((30, 2), 0.01, dtype=np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 30])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    folder = root / "breast-cancer" / "1"
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    manifest = {
        "name": "breast-cancer",
        "version": 1,
        "input": {"name": "input", "shape": [-1, 30], "dtype": "float32"},
        "output": {"name": "probabilities", "classes": ["benign", "malignant"]},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_smoke_run_against_obvious_server_on_a_tiny_model(tmp_path: Path) -> None:
    repository = _tiny_repository(tmp_path / "models")
    records = _run_smoke(
        tmp_path / "results",
        *("--target", "obvious", "--model-repository", str(repository)),
        *("--wrk-policy", "batch"),
    )
    _check_records(records, {"obvious"})
    assert records[0]["wrk_policy"] == "batch"
    assert {r["wrk_policy"] for r in records if r["kind"] == "case"} == {"batch"}


def test_wrk_runs_batch_only_where_it_shares_a_cpu_with_the_server() -> None:
    assert not run.wrk_batch("auto", "1", "0")
    assert run.wrk_batch("auto", "1", "0,1")
    assert run.wrk_batch("auto", "0", "0")
    assert not run.wrk_batch("normal", "1", "0,1")
    assert run.wrk_batch("batch", "1", "0")


def test_ratios_are_taken_within_a_round() -> None:
    def case(server: str, rps: float, rows: int = 1, conns: int = 1) -> dict[str, Any]:
        return {
            "kind": "case",
            "server": server,
            "model": "m",
            "rows_per_request": rows,
            "connections": conns,
            "protocol": "json",
            "requests_per_s": rps,
            "rows_per_s": rps * rows,
        }

    records = [
        case("verdict", 300.0),
        case("obvious", 100.0),
        case("verdict", 50.0, conns=32),
        dict(case("verdict-2w", 80.0, conns=32), wrk_cpu_share=0.4),
        {"kind": "ceiling", "model": "m", "batch": 1, "rows_per_s": 1000.0},
    ]
    report.add_ratios(records)
    assert "ratio_vs_before_requests" not in records[0]  # no baseline: the fields of old
    assert records[0]["ratio_vs_obvious_requests"] == 3.0
    assert records[0]["ratio_vs_ceiling"] == 0.3
    assert records[1]["ratio_vs_obvious_requests"] is None
    assert records[2]["ratio_vs_obvious_requests"] is None
    assert records[3]["ratio_vs_one_worker"] == 1.6
    # 80 req/s on the 1.6 CPUs wrk left: 50 per CPU, as much as one worker alone.
    assert records[3]["per_cpu_vs_one_worker"] == pytest.approx(1.0)
    assert records[2]["per_cpu_vs_one_worker"] is None


def _case(server: str, rps: float, conns: int = 1, workers: int = 1) -> dict[str, Any]:
    return {
        "kind": "case",
        "server": server,
        "workers": workers,
        "model": "m",
        "case": f"1r-{conns}c-json",
        "rows_per_request": 1,
        "connections": conns,
        "protocol": "json",
        "requests_per_s": rps,
        "rows_per_s": rps,
        "p50_ms": 0.2,
        "p90_ms": 0.3,
        "p99_ms": 0.4,
        "errors": 0,
    }


def _baseline_round() -> list[dict[str, Any]]:
    records = [
        _case("before", 200.0),
        _case("verdict", 300.0),
        _case("obvious", 100.0),
        _case("before", 100.0, conns=32),
        _case("verdict", 150.0, conns=32),
        _case("obvious", 50.0, conns=32),
        _case("before-2w", 150.0, conns=32, workers=2),
        _case("verdict-2w", 300.0, conns=32, workers=2),
    ]
    report.add_ratios(records)
    return records


def test_baseline_ratios_pair_each_server_with_its_before() -> None:
    before, verdict, obvious, _, _, _, before_2w, verdict_2w = _baseline_round()
    assert verdict["ratio_vs_before_requests"] == 1.5
    assert verdict["ratio_vs_before_rows"] == 1.5
    assert verdict_2w["ratio_vs_before_requests"] == 2.0
    assert before["ratio_vs_obvious_requests"] == 2.0
    assert before_2w["ratio_vs_one_worker"] == 1.5  # before-2w against before
    assert verdict_2w["ratio_vs_one_worker"] == 2.0
    for record in (before, obvious, before_2w):
        assert record["ratio_vs_before_requests"] is None


def test_report_shows_targets_for_before_and_after_and_a_table_per_case() -> None:
    meta = {
        "kind": "meta",
        "baseline": {"path": "/old", "commit": "e330cc1" + "0" * 33, "dirty": False},
        "checkout": {"path": "/new", "commit": "a83f406" + "0" * 33, "dirty": True},
    }
    markdown = report.render([meta, *_baseline_round()])
    lines = markdown.splitlines()
    assert "| Target | Bound | Before | Result | After | Result |" in lines
    assert "| m: 1 row, 1 conn, req/s vs obvious | ≥ 1.3× | 2.00 | PASS | 3.00 | PASS |" in lines
    assert "| m: 1 row, 32 conn, req/s vs obvious | ≥ 1.5× | 2.00 | PASS | 3.00 | PASS |" in lines
    assert (
        "| m: 2 workers vs 1 worker, 1 row, 32 conn req/s | ≥ 1.6× | 1.50 | MISS | 2.00 | PASS |"
        in lines
    )
    assert any(
        line.startswith("Before: `old` at `e330cc100000`; after: `new` at `a83f40600000` with")
        for line in lines
    )
    assert (
        "| m | 1r-1c-json | 1 | 200 | 300 | 200 | 300 | 0.200 | 0.200 | 0.400 | 0.400 | 1.50 |"
        in lines
    )
    assert (
        "| m | 1r-32c-json | 2 | 150 | 300 | 150 | 300 | 0.200 | 0.200 | 0.400 | 0.400 | 2.00 |"
        in lines
    )


def test_report_names_no_folder_of_this_machine(tmp_path: Path) -> None:
    root = tmp_path / "verdict"
    assert report.shown_path(str(root), root) == "."
    assert report.shown_path(str(root / "bench" / "results"), root) == "bench/results"
    assert report.shown_path(str(tmp_path / "before"), root) == "../before"
    assert report.shown_path("/elsewhere/deep/before", root) == "before"
    assert report.shown_path("../before", root) == "../before"
    command = f"python -m bench.run --baseline {tmp_path / 'before'} --out={root / 'out'} --quick"
    shown = report.shown_command(command, root)
    assert shown == "python -m bench.run --baseline ../before --out=out --quick"
    meta = {
        "kind": "meta",
        "command": f"python -m bench.run --baseline {report.ROOT.parent / 'before'}",
        "baseline": {"path": str(report.ROOT.parent / "before"), "commit": "e" * 40},
        "checkout": {"path": str(report.ROOT), "commit": "a" * 40, "dirty": False},
    }
    markdown = report.render([meta, *_baseline_round()])
    assert "Run `python -m bench.run --baseline ../before` on" in markdown
    assert "Before: `../before` at `eeeeeeeeeeee`; after: this repository at `aaaaaaaaaaaa`." in (
        markdown
    )
    assert str(report.ROOT) not in markdown and str(tmp_path) not in markdown


def test_report_without_baseline_has_no_before_columns() -> None:
    records = [r for r in _baseline_round() if not r["server"].startswith("before")]
    markdown = report.render(records)
    assert "| Target | Bound | Measured | Result |" in markdown
    assert "Before" not in markdown and "before" not in markdown


def test_docs_table_is_replaced_between_the_markers(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# B\n\n{report.START_MARKER}\nold\n{report.END_MARKER}\n\nafter\n")
    report.write_docs(docs, "new table\n")
    report.write_docs(docs, "newer table\n")
    text = docs.read_text()
    assert "old" not in text and "new table" not in text
    assert text == f"# B\n\n{report.START_MARKER}\nnewer table\n{report.END_MARKER}\n\nafter\n"


def test_binary_v2_body_is_a_json_header_then_little_endian_float32() -> None:
    rows = [[float(i + 30 * r) for i in range(30)] for r in range(3)]
    body = load.build_body("v2-binary", "m", rows, [30])
    assert body.path == "/v2/models/m/infer"
    assert body.header_length is not None
    header = json.loads(body.data[: body.header_length])
    assert header["inputs"][0]["shape"] == [3, 30]
    assert header["inputs"][0]["parameters"]["binary_data_size"] == 3 * 30 * 4
    assert header["outputs"] == [{"name": "probabilities", "parameters": {"binary_data": True}}]
    tensor = np.frombuffer(body.data[body.header_length :], dtype="<f4")
    assert tensor.tolist() == [v for row in rows for v in row]
    assert body.headers()["Inference-Header-Content-Length"] == str(body.header_length)


def test_image_rows_go_flat_to_predict_and_shaped_to_v2() -> None:
    rows = [[float(i) for i in range(64)]]
    flat = json.loads(load.build_body("json", "digits", rows, [1, 8, 8]).data)
    nested = json.loads(load.build_body("json", "digits", rows, [1, 8, 8], nested=True).data)
    v2 = json.loads(load.build_body("v2-json", "digits", rows, [1, 8, 8]).data)
    assert flat == {"model": "digits", "instances": rows}
    assert np.asarray(nested["instances"]).shape == (1, 1, 8, 8)
    assert v2["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert v2["inputs"][0]["data"] == rows[0]
