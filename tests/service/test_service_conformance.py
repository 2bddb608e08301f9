"""Conformance at load: checksums of every listed file, the parity gate, and the reference
sample re-run on the serving provider; a refused version never replaces what serves."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from service.http.app import create_app
from service.models.repository import Repository
from service.monitoring.metrics import Metrics
from tests.conftest import (
    build_onnx,
    make_manifest,
    make_settings,
    wait_ready,
    write_binary,
    write_version,
)

ADMIN = {"Authorization": "Bearer admin-secret"}
ROW = {"model": "bin", "instances": [[1, 2, 3]]}


def _read(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def _write(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _replace_model(folder: Path, graph: bytes) -> None:
    """Swap model.onnx and make every checksum agree with it: only conformance can tell."""
    (folder / "model.onnx").write_bytes(graph)
    manifest = _read(folder)
    manifest["sha256"] = manifest["files"]["model.onnx"] = hashlib.sha256(graph).hexdigest()
    _write(folder, manifest)


def _shift_bias(graph: bytes, delta: float) -> bytes:
    """The same graph with `delta` added to the logit of the positive class."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(graph)
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name == "b":
            b = numpy_helper.to_array(tensor).copy()
            b[1] += delta
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(b, "b"))
    return model.SerializeToString()


def _rewrite_sample(folder: Path, change: Any, update_checksum: bool = True) -> None:
    path = folder / "reference_sample.json"
    sample = json.loads(path.read_text())
    change(sample)
    raw = json.dumps(sample).encode()
    path.write_bytes(raw)
    if update_checksum:
        manifest = _read(folder)
        manifest["files"]["reference_sample.json"] = hashlib.sha256(raw).hexdigest()
        _write(folder, manifest)


def _refusals(app: Any, version: str, check: str) -> float | None:
    return app.state.registry.get_sample_value(
        "verdict_model_refusals_total", {"model": "bin", "version": version, "check": check}
    )


def _diff(app: Any, version: str) -> float | None:
    return app.state.registry.get_sample_value(
        "verdict_conformance_max_abs_diff",
        {"model": "bin", "version": version, "provider": "CPUExecutionProvider"},
    )


def test_a_conforming_version_shows_what_it_measured_per_provider(client: TestClient) -> None:
    params = client.get("/v2/models/bin").json()["parameters"]
    conformance = params["conformance"]
    assert conformance["status"] == "passed" and conformance["rows"] == 16
    assert conformance["atol"] == 0.005
    training, server = conformance["measured"]
    assert training["where"] == "training" and server["where"] == "server"
    assert server["provider"] == "CPUExecutionProvider" and server["labels_equal"] is True
    assert 0 <= server["max_abs_diff"] < 1e-5
    app = client.app
    assert _diff(app, "1") == pytest.approx(server["max_abs_diff"])  # type: ignore[arg-type]


def test_a_doctored_model_is_refused_and_the_previous_version_keeps_serving(
    model_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(model_repo, tmp_path, admin_api_key="admin-secret"))
    with TestClient(app) as c:
        wait_ready(c)
        before = c.post("/predict", json=ROW).json()["predictions"][0]["score"]
        folder = write_binary(model_repo, version=2, seed=4)
        # Another model's weights under v2's manifest, checksums updated: a doctored model.
        _replace_model(folder, build_onnx((3,), 2, seed=11)[0])
        with caplog.at_level(logging.ERROR):
            r = c.post("/v2/repository/models/bin/load", headers=ADMIN)
        assert r.status_code == 400 and r.json()["code"] == "model_load_failed"
        error = r.json()["error"]
        assert "bin v2 refused: conformance" in error and "on CPUExecutionProvider" in error
        assert "max |p - expected|" in error and "still serving versions [1]" in error
        assert "what served before keeps serving" in caplog.text
        row = next(
            x for x in c.get("/v2/repository/index", headers=ADMIN).json() if x["version"] == "2"
        )
        assert row["state"] == "UNAVAILABLE" and "conformance" in row["reason"]
        assert c.get("/v2/models/bin/versions/2/ready").status_code == 404
        after = c.post("/predict", json=ROW).json()
        assert after["version"] == 1 and after["predictions"][0]["score"] == before
        assert _refusals(app, "2", "conformance") == 1.0
        assert _diff(app, "2") is not None and _diff(app, "2") > 0.005  # type: ignore[operator]


def test_a_difference_within_the_tolerance_passes_and_beyond_it_is_refused(
    model_repo: Path, tmp_path: Path
) -> None:
    graph, _, _ = build_onnx((3,), 2, seed=4)
    near = write_binary(model_repo, version=2, seed=4)
    _replace_model(near, _shift_bias(graph, 1e-3))  # probabilities move by < 2.5e-4
    far = write_binary(model_repo, version=3, seed=4)
    _replace_model(far, _shift_bias(graph, 0.1))  # by up to 0.025 > atol 0.005
    app = create_app(make_settings(model_repo, tmp_path))
    with TestClient(app) as c:
        wait_ready(c)
        assert app.state.repository.versions("bin") == [1, 2]
        served = c.get("/v2/models/bin/versions/2").json()["parameters"]["conformance"]
        assert served["status"] == "passed"
        assert 1e-6 < served["measured"][-1]["max_abs_diff"] < 0.005
        assert _refusals(app, "3", "conformance") == 1.0
        assert 0.005 < _diff(app, "3") < 0.03  # type: ignore[operator]


def test_a_sample_whose_labels_disagree_is_refused(model_repo: Path, tmp_path: Path) -> None:
    folder = write_binary(model_repo, version=2, seed=4)

    def flip_a_stable_label(sample: dict[str, Any]) -> None:
        i = sample["label_stable"].index(True)
        sample["labels"][i] = 1 - sample["labels"][i]

    _rewrite_sample(folder, flip_a_stable_label)
    repo = Repository(make_settings(model_repo, tmp_path), Metrics(CollectorRegistry()))

    async def main() -> str:
        await repo.start()
        reason = next(r["reason"] for r in repo.index() if r["version"] == "2")
        await repo.close()
        return reason

    reason = asyncio.run(main())
    assert "labels differ on 1 of" in reason and "max |p - expected|" in reason


DOCTORED_MANIFESTS: dict[str, tuple[Any, str, str]] = {
    # case: (change to the manifest, the check that refuses, words of the reason)
    "parity failed": (
        lambda m: m["parity"].update(passed=False),
        "parity",
        "failed parity gate",
    ),
    "parity of the issue, without `passed`": (
        lambda m: m.update(parity={"max_abs_diff": 0.9, "labels_equal": False}),
        "parity",
        "failed parity gate",
    ),
    "model checksum in files": (
        lambda m: m["files"].update({"model.onnx": "0" * 64}),
        "files",
        "disagree",
    ),
    "sample checksum": (
        lambda m: m["files"].update({"reference_sample.json": "0" * 64}),
        "files",
        "sha256 of reference_sample.json",
    ),
    "listed file missing": (
        lambda m: m["files"].update({"calibration.json": "0" * 64}),
        "files",
        "calibration.json is missing",
    ),
    "hand-edited threshold": (
        lambda m: m["decision"].update(threshold=0.5),
        "conformance",
        "retrain rather than edit the threshold",
    ),
    "no tolerance": (
        lambda m: m["conformance"].update(atol=0),
        "manifest",
        "conformance.atol must be a positive number",
    ),
}


@pytest.mark.parametrize("case", sorted(DOCTORED_MANIFESTS))
def test_a_doctored_manifest_is_refused_with_its_reason(
    model_repo: Path, tmp_path: Path, case: str
) -> None:
    change, check, words = DOCTORED_MANIFESTS[case]
    folder = write_binary(model_repo, version=2, seed=4)
    manifest = _read(folder)
    change(manifest)
    _write(folder, manifest)
    metrics = Metrics(CollectorRegistry())
    repo = Repository(make_settings(model_repo, tmp_path), metrics)

    async def main() -> str:
        await repo.start()
        assert repo.versions("bin") == [1]
        reason = next(r["reason"] for r in repo.index() if r["version"] == "2")
        await repo.close()
        return reason

    reason = asyncio.run(main())
    assert reason.startswith("bin v2 refused") and words in reason, reason
    labels = {"model": "bin", "version": "2", "check": check}
    assert metrics.registry.get_sample_value("verdict_model_refusals_total", labels) == 1.0


def test_an_edited_sample_is_caught_on_a_hot_reload(model_repo: Path, tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    repo = Repository(make_settings(model_repo, tmp_path), metrics)
    folder = model_repo / "bin" / "1"

    async def main() -> None:
        await repo.start()
        serving = repo.resolve("bin")
        # Only the sample changes (not the manifest or the model): polling still sees it, and
        # the changed file no longer matches its checksum.
        _rewrite_sample(folder, lambda s: s["probabilities"][0].reverse(), update_checksum=False)
        await repo.poll_once()
        assert repo.resolve("bin") is serving
        (row,) = [r for r in repo.index() if r["name"] == "bin"]
        assert row["state"] == "READY"
        labels = {"model": "bin", "version": "1", "check": "files"}
        assert metrics.registry.get_sample_value("verdict_model_refusals_total", labels) == 1.0
        await repo.close()

    asyncio.run(main())


def test_a_manifest_written_before_conformance_serves_unchecked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    graph, _, _ = build_onnx((3,), 2, seed=0)
    manifest = make_manifest(
        "old",
        1,
        graph,
        task="binary",
        in_dims=(3,),
        classes=["no", "yes"],
        feature_names=["a", "b", "c"],
        threshold=0.5,
        positive_class="yes",
    )
    assert "files" not in manifest and "conformance" not in manifest
    write_version(root, "old", 1, graph, manifest)
    app = create_app(make_settings(root, tmp_path))
    with caplog.at_level(logging.WARNING), TestClient(app) as c:
        wait_ready(c)
        conformance = c.get("/v2/models/old").json()["parameters"]["conformance"]
        r = c.post("/predict", json={"instances": [[0.1, 0.2, 0.3]]})
    assert r.status_code == 200
    assert conformance["status"] == "unchecked" and conformance["measured"] == []
    assert "written before conformance checks" in conformance["reason"]
    assert "old v1 serves not conformance-checked" in caplog.text
    assert (
        app.state.registry.get_sample_value(
            "verdict_conformance_max_abs_diff",
            {"model": "old", "version": "1", "provider": "CPUExecutionProvider"},
        )
        is None
    )


def test_the_sample_runs_on_the_session_that_serves(model_repo: Path, tmp_path: Path) -> None:
    """The check runs through the version's own session (its providers), not a new CPU one."""
    from service.models import conformance, loading
    from service.models.runtime import RuntimeOptions

    seen: list[list[str]] = []
    real = conformance.check_conformance

    def spy(folder, manifest, session, *args):  # type: ignore[no-untyped-def]
        seen.append(session.providers)
        out = session.run(np.zeros((1, 3), np.float32))
        assert out.shape == (1, 2)
        return real(folder, manifest, session, *args)

    loading.check_conformance = spy  # type: ignore[assignment]
    try:
        loaded = loading.load_version(
            model_repo / "bin" / "1", "bin", 1, RuntimeOptions(("CPUExecutionProvider",))
        )
    finally:
        loading.check_conformance = real  # type: ignore[assignment]
    assert seen == [loaded.session.providers] and loaded.conformance.status == "passed"


def test_a_copy_of_the_bundled_model_with_a_failed_parity_gate_is_refused(
    tmp_path: Path,
) -> None:
    import shutil

    bundled = Path(__file__).resolve().parents[2] / "models" / "breast-cancer" / "1"
    root = tmp_path / "models"
    shutil.copytree(bundled, root / "breast-cancer" / "1")
    copy = root / "breast-cancer" / "2"
    shutil.copytree(bundled, copy)
    manifest = _read(copy)
    manifest["version"] = 2
    manifest["parity"] = {"max_abs_diff": 0.9, "labels_equal": False}  # the example
    _write(copy, manifest)
    repo = Repository(make_settings(root, tmp_path), Metrics(CollectorRegistry()))

    async def main() -> tuple[list[int], str, dict[str, Any]]:
        await repo.start()
        reason = next(r["reason"] for r in repo.index() if r["version"] == "2")
        record = repo.resolve("breast-cancer").conformance.record(repo.manifest("breast-cancer", 1))  # type: ignore[arg-type]
        versions = repo.versions("breast-cancer")
        await repo.close()
        return versions, reason, record

    versions, reason, record = asyncio.run(main())
    assert versions == [1] and "failed parity gate" in reason
    assert record["status"] == "passed" and record["measured"][-1]["max_abs_diff"] < 1e-5
