"""Model repository: checks against the graph and sha256, refusals, reloads, admin extension."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
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


def _sleep(client: TestClient, seconds: float) -> None:
    """Let the app's event loop run (retired versions drain there)."""
    assert client.portal is not None
    client.portal.call(asyncio.sleep, seconds)


def _drained(client: TestClient, timeout_s: float = 10.0) -> None:
    """Let the app's event loop run until every retired version has drained: a few
    milliseconds on a fast host, longer on a busy one."""
    repository = client.app.state.repository  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while repository._retiring:
        assert time.monotonic() < deadline, "a retired version did not drain"
        _sleep(client, 0.01)


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    doc = json.loads(path.read_text())
    for dotted, value in changes.items():
        node = doc
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    path.write_text(json.dumps(doc))


def _repo(root: Path, tmp: Path, **kw) -> Repository:
    return Repository(make_settings(root, tmp, **kw), Metrics(CollectorRegistry()))


BAD_MANIFESTS: dict[str, dict[str, Any]] = {
    "sha256": {"sha256": "0" * 64},
    "input name": {"input__name": "features"},
    "input dims": {"input__shape": [-1, 4], "input__feature_names": ["a", "b", "c", "d"]},
    "input dtype": {"input__dtype": "float64"},
    "output name": {"output__name": "scores"},
    "class count": {
        "output__classes": ["a", "b", "c"],
        "output__shape": [-1, 3],
        "task": "multiclass",
    },
    "feature count": {"input__feature_names": ["a", "b"]},
    "threshold": {"decision__threshold": 1.5},
    "positive class": {"output__positive_class": "other"},
    "folder name": {"name": "other"},
    "folder version": {"version": 2},
    "task": {"task": "regression"},
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_mismatched_manifest_is_refused_with_a_reason(tmp_path: Path, case: str, caplog) -> None:
    root = tmp_path / "models"
    _edit_manifest(write_binary(root), **BAD_MANIFESTS[case])
    repo = _repo(root, tmp_path)

    async def main() -> None:
        with caplog.at_level(logging.ERROR):
            await repo.start()
        assert not repo.ready
        assert repo.not_ready() == ["bin"]
        (row,) = repo.index()
        assert row["state"] == "UNAVAILABLE" and "refused" in row["reason"]
        assert "refused" in caplog.text
        await repo.close()

    asyncio.run(main())


def test_corrupt_graph_and_graph_that_is_not_a_softmax_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    garbage = b"\x08\x07garbage-not-a-graph"
    write_version(
        root,
        "corrupt",
        1,
        garbage,
        make_manifest(
            "corrupt",
            1,
            garbage,
            task="multiclass",
            in_dims=(3,),
            classes=["a", "b"],
            feature_names=["x", "y", "z"],
        ),
    )
    logits, _, _ = build_onnx((3,), 2, softmax=False)
    write_version(
        root,
        "nosoftmax",
        1,
        logits,
        make_manifest(
            "nosoftmax",
            1,
            logits,
            task="multiclass",
            in_dims=(3,),
            classes=["a", "b"],
            feature_names=["x", "y", "z"],
        ),
    )
    fixed, _, _ = build_onnx((3,), 2, fixed_batch=1)
    write_version(
        root,
        "fixed",
        1,
        fixed,
        make_manifest(
            "fixed",
            1,
            fixed,
            task="multiclass",
            in_dims=(3,),
            classes=["a", "b"],
            feature_names=["x", "y", "z"],
        ),
    )
    repo = _repo(root, tmp_path)

    async def main() -> dict[str, str]:
        await repo.start()
        reasons = {r["name"]: r["reason"] for r in repo.index()}
        await repo.close()
        return reasons

    reasons = asyncio.run(main())
    assert "onnxruntime cannot load" in reasons["corrupt"]
    assert "probability" in reasons["nosoftmax"] or "softmax" in reasons["nosoftmax"]
    assert "batch axis" in reasons["fixed"]


def test_a_refused_new_version_leaves_the_old_one_serving(model_repo: Path, tmp_path: Path) -> None:
    app = create_app(make_settings(model_repo, tmp_path, admin_api_key="admin-secret"))
    with TestClient(app) as c:
        wait_ready(c)
        folder = write_binary(model_repo, version=2, seed=4)
        _edit_manifest(folder, sha256="f" * 64)
        r = c.post("/v2/repository/models/bin/load", headers=ADMIN)
        assert r.status_code == 400 and r.json()["code"] == "model_load_failed"
        assert "sha256" in r.json()["error"] and "still serving versions [1]" in r.json()["error"]
        rows = c.get("/v2/repository/index", headers=ADMIN).json()
        v2 = next(row for row in rows if row["name"] == "bin" and row["version"] == "2")
        assert v2["state"] == "UNAVAILABLE" and "sha256" in v2["reason"]
        r = c.post("/predict", json={"model": "bin", "instances": [[1, 2, 3]]})
        assert r.json()["version"] == 1
        # Corrupt the served version's files too: the loaded session keeps serving.
        (model_repo / "bin" / "1" / "model.onnx").write_bytes(b"broken")
        r = c.post("/v2/repository/models/bin/load", headers=ADMIN)
        assert r.status_code == 400 and "still serving versions [1]" in r.json()["error"]
        assert (
            c.post("/predict", json={"model": "bin", "instances": [[1, 2, 3]]}).status_code == 200
        )
        assert c.get("/v2/health/ready").status_code == 200


def test_a_good_new_version_takes_over_atomically(model_repo: Path, tmp_path: Path) -> None:
    app = create_app(
        make_settings(model_repo, tmp_path, admin_api_key="admin-secret", version_policy="latest")
    )
    with TestClient(app) as c:
        wait_ready(c)
        repo = app.state.repository
        pinned = repo.acquire("bin")  # a request in flight on v1
        write_binary(model_repo, version=2, seed=4)
        r = c.post("/v2/repository/models/bin/load", headers=ADMIN)
        assert r.json()["versions"] == ["2"]
        assert (
            c.post("/predict", json={"model": "bin", "instances": [[1, 2, 3]]}).json()["version"]
            == 2
        )
        # v1 no longer takes new traffic but still finishes the pinned request.
        assert pinned.version == 1 and pinned.retiring
        assert c.portal is not None
        out = c.portal.call(pinned.batcher.submit, np.ones((1, 3), np.float32))
        assert out.probabilities.shape == (1, 2)
        repo.release(pinned)
        metrics = c.get("/metrics").text
        assert (
            'verdict_model_info{model="bin",provider="CPUExecutionProvider",'
            'threshold="0.3",version="2"} 1.0' in metrics
        )


def test_version_policy_all_and_specific(model_repo: Path, tmp_path: Path) -> None:
    write_binary(model_repo, version=2, seed=4)
    write_binary(model_repo, version=3, seed=5)
    for policy, expected in (("all", [1, 2, 3]), ("latest:2", [2, 3]), ("specific:1,3", [1, 3])):
        repo = _repo(model_repo, tmp_path, version_policy=policy)

        async def main(r: Repository = repo) -> list[int]:
            await r.start()
            versions = r.versions("bin")
            await r.close()
            return versions

        assert asyncio.run(main()) == expected


def test_polling_loads_new_versions_and_unloads_removed_models(
    model_repo: Path, tmp_path: Path
) -> None:
    repo = _repo(model_repo, tmp_path)

    async def main() -> None:
        await repo.start()
        assert repo.resolve("bin").version == 1
        await repo.poll_once()  # nothing changed
        assert repo.resolve("bin").version == 1
        write_binary(model_repo, version=2, seed=4)
        await repo.poll_once()
        assert repo.resolve("bin").version == 2
        write_binary(model_repo, name="fresh")
        await repo.poll_once()
        assert repo.resolve("fresh").version == 1
        import shutil

        shutil.rmtree(model_repo / "fresh")
        await repo.poll_once()
        assert "fresh" not in repo.served()
        assert repo.ready
        await repo.close()

    asyncio.run(main())


def test_manifest_lookup_for_loaded_and_unloaded_versions(model_repo: Path, tmp_path: Path) -> None:
    write_binary(model_repo, version=2, seed=4)
    repo = _repo(model_repo, tmp_path, version_policy="latest")

    async def main() -> None:
        await repo.start()
        assert repo.versions("bin") == [2]
        current = repo.manifest("bin", 2)
        assert current is not None and current["version"] == 2
        old = repo.manifest("bin", 1)  # not loaded, read from disk
        assert old is not None and old["output"]["classes"] == ["ham", "spam"]
        assert repo.manifest("bin", 7) is None
        assert repo.manifest("nope", 1) is None
        assert repo.manifest("../etc", 1) is None
        await repo.close()

    asyncio.run(main())


def test_readiness_waits_for_every_model_and_liveness_does_not(
    model_repo: Path, tmp_path: Path
) -> None:
    _edit_manifest(model_repo / "img" / "1", sha256="0" * 64)
    app = create_app(make_settings(model_repo, tmp_path))
    with TestClient(app) as c:
        assert c.get("/v2/health/live").status_code == 200
        for _ in range(200):
            if app.state.repository.started:
                break
            import time

            time.sleep(0.02)
        r = c.get("/v2/health/ready")
        assert r.status_code == 503 and r.json()["ready"] is False and "img" in r.json()["error"]
        assert c.get("/v2/models/img/ready").status_code == 503
        assert c.get("/v2/models/bin/ready").status_code == 200
        r = c.post("/predict", json={"model": "img", "instances": [[0] * 16]})
        assert r.status_code == 503 and r.json()["code"] == "model_not_ready"
        assert r.headers["Retry-After"] == "1"
        # Fix the model and load it through the admin API: ready.
        folder = model_repo / "img" / "1"
        digest = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
        _edit_manifest(folder, sha256=digest)
        assert c.post("/v2/repository/models/img/load").status_code == 403  # no admin key


def test_repository_extension_requires_the_admin_key(model_repo: Path, tmp_path: Path) -> None:
    app = create_app(make_settings(model_repo, tmp_path, admin_api_key="admin-secret"))
    with TestClient(app) as c:
        wait_ready(c)
        for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "admin-secret"}):
            r = c.post("/v2/repository/index", headers=headers)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized"
            assert r.headers["WWW-Authenticate"]
        rows = c.post("/v2/repository/index", headers=ADMIN, json={"ready": True}).json()
        assert [(r["name"], r["version"], r["state"]) for r in rows] == [
            ("bin", "1", "READY"),
            ("img", "1", "READY"),
        ]
        assert c.post("/v2/repository/models/img/unload", headers=ADMIN).status_code == 200
        assert c.post("/predict", json={"model": "img", "instances": [[0] * 16]}).status_code == 404
        assert c.get("/v2/health/ready").status_code == 200  # an unloaded model is not expected
        rows = c.get("/v2/repository/index", headers=ADMIN).json()
        assert {"name": "img", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in rows
        assert c.post("/v2/repository/models/img/load", headers=ADMIN).status_code == 200
        assert c.post("/predict", json={"model": "img", "instances": [[0] * 16]}).status_code == 200
        r = c.post("/v2/repository/models/nope/load", headers=ADMIN)
        assert r.status_code == 404 and r.json()["code"] == "model_not_found"
        r = c.post("/v2/repository/models/nope/unload", headers=ADMIN)
        assert r.status_code == 404
        r = c.post("/v2/repository/index", headers=ADMIN, content=b"[")
        assert r.status_code == 400


def test_repository_extension_is_disabled_without_an_admin_key(client: TestClient) -> None:
    for method, path in (
        ("GET", "/v2/repository/index"),
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/bin/load"),
        ("POST", "/v2/repository/models/bin/unload"),
    ):
        r = client.request(method, path, headers=ADMIN)
        assert r.status_code == 403 and r.json()["code"] == "admin_disabled"
    assert client.get("/v2/models/bin/ready").status_code == 200


def test_startup_falls_back_to_the_newest_version_that_passes(
    model_repo: Path, tmp_path: Path
) -> None:
    _edit_manifest(write_binary(model_repo, version=2, seed=4), input__name="wrong")
    repo = _repo(model_repo, tmp_path, version_policy="latest")

    async def main() -> None:
        await repo.start()
        assert repo.ready and repo.versions("bin") == [1]
        states = {(r["name"], r["version"]): r for r in repo.index()}
        assert states[("bin", "2")]["state"] == "UNAVAILABLE"
        assert "graph inputs are ['input']" in states[("bin", "2")]["reason"]
        assert states[("bin", "1")]["state"] == "READY"
        await repo.close()

    asyncio.run(main())


def test_reloading_changed_files_of_the_same_version(model_repo: Path, tmp_path: Path) -> None:
    app = create_app(make_settings(model_repo, tmp_path, admin_api_key="admin-secret"))
    with TestClient(app) as c:
        wait_ready(c)
        x = {"model": "bin", "instances": [[1, 2, 3]]}
        before = c.post("/predict", json=x).json()["predictions"][0]["score"]
        write_binary(model_repo, version=1, seed=8)  # new weights, same version number
        assert c.post("/v2/repository/models/bin/load", headers=ADMIN).status_code == 200
        after = c.post("/predict", json=x).json()["predictions"][0]["score"]
        assert after != before
        # Let the retired session drain, then the info series must still be there.
        _drained(c)
        get = app.state.registry.get_sample_value
        labels = {
            "model": "bin",
            "version": "1",
            "provider": "CPUExecutionProvider",
            "threshold": "0.3",
        }
        assert get("verdict_model_info", labels) == 1
        c.post("/v2/repository/models/bin/unload", headers=ADMIN)
        _drained(c)
        assert get("verdict_model_info", labels) is None


def test_listeners_hear_loads_and_unloads_and_counts_are_kept(
    model_repo: Path, tmp_path: Path
) -> None:
    app = create_app(make_settings(model_repo, tmp_path, admin_api_key="admin-secret"))
    events: list[tuple[str, str, int]] = []
    repo = app.state.repository
    repo.add_listener(
        on_load=lambda mv: events.append(("load", mv.name, mv.version)),
        on_unload=lambda mv: events.append(("unload", mv.name, mv.version)),
    )
    repo.add_listener(on_load=lambda mv: 1 / 0)  # a failing listener is logged only
    flushed: list[int] = []
    drift_flush = app.state.drift.flush
    app.state.drift.flush = lambda: (flushed.append(1), drift_flush())  # before each scrape
    with TestClient(app) as c:
        wait_ready(c)
        assert sorted(events) == [("load", "bin", 1), ("load", "img", 1)]
        assert repo.predictions_issued("bin", 1)[0] == 0
        c.post("/predict", json={"model": "bin", "instances": [[1, 2, 3], [3, 2, 1]]})
        issued, since = repo.predictions_issued("bin", 1)
        assert issued == 2 and since > 0
        assert repo.predictions_issued("bin", 2) is None
        c.post("/v2/repository/models/bin/unload", headers=ADMIN)
        _drained(c)
        assert ("unload", "bin", 1) in events
        c.get("/metrics")
        assert flushed == [1]


def test_a_reload_reads_the_model_folder_off_the_event_loop(
    model_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every process reloads a model on each role change, under traffic: the folder's scan and
    fingerprints must not block the event loop."""
    import threading

    import service.models.repository as repository_module

    repo = _repo(model_repo, tmp_path)
    threads: dict[str, set[int]] = {}

    def recorded(what: str, fn: Any) -> Any:
        def call(*args: Any) -> Any:
            threads.setdefault(what, set()).add(threading.get_ident())
            return fn(*args)

        return call

    async def main() -> list[int]:
        await repo.start()
        loop_thread = threading.get_ident()
        monkeypatch.setattr(repo, "scan", recorded("scan", repo.scan))
        monkeypatch.setattr(repo, "_fingerprint", recorded("fingerprint", repo._fingerprint))
        monkeypatch.setattr(
            repository_module,
            "file_fingerprint",
            recorded("file_fingerprint", repository_module.file_fingerprint),
        )
        threads.clear()
        versions = await repo.load_model("bin")
        await repo.close()
        assert set(threads) == {"scan", "fingerprint", "file_fingerprint"}
        assert all(loop_thread not in ids for ids in threads.values()), threads
        return versions

    assert asyncio.run(main()) == [1]


def test_stored_roles_naming_versions_not_served_are_logged(
    model_repo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica without the versions the stored roles name says so, and serves what it has."""
    from service.models.roles import Roles

    write_binary(model_repo, version=2, seed=4)
    repo = _repo(model_repo, tmp_path)

    async def main() -> tuple[int, bool]:
        await repo.start()
        with caplog.at_level(logging.ERROR, logger="service.models.repository"):
            await repo.use_stored_roles("bin", Roles(7, 8, 0.1))
        answer = repo.resolve("bin").version, repo.has_shadow("bin")
        await repo.close()
        return answer

    assert asyncio.run(main()) == (2, False)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "model bin: primary version 7 is not served; version 2 answers instead" in errors
    assert "model bin: shadow version 8 is not served; nothing is shadowed" in errors
