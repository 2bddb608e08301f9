"""Model changes under load: hot reload, corrupt or mismatched files, and nothing unpickled."""

from __future__ import annotations

import ast
import hashlib
import json
import pickle
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.conftest import (
    LiveServer,
    build_onnx,
    model_weights,
    reference_probabilities,
    wait_until,
    write_binary,
)
from tests.reliability.rel_support import BIN_ROW, live_env

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-reload-key"
ROW = np.array([BIN_ROW], dtype=np.float32)
CLIENTS = 4


def _expected(seed: int) -> float:
    w, b = model_weights("bin", seed)
    return float(reference_probabilities(ROW, w, b)[0, 1])


class Load:
    """CLIENTS threads sending /predict for `bin` until stopped; every answer is kept."""

    def __init__(self, url: str, check_ready: bool = False) -> None:
        self.url = url
        self.check_ready = check_ready
        self.stop = threading.Event()
        self.answers: list[tuple[float, int, Any]] = []  # (sent at, status, body)
        self.not_ready = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CLIENTS)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = http.post(
                        f"{self.url}/predict", json={"model": "bin", "instances": [BIN_ROW]}
                    )
                    self.answers.append((sent, r.status_code, r.json()))
                except httpx.HTTPError as exc:
                    self.answers.append((sent, 0, repr(exc)))
                if self.check_ready and http.get(f"{self.url}/v2/health/ready").status_code != 200:
                    self.not_ready += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def failures(self) -> list[Any]:
        return [(s, b) for _, s, b in self.answers if s != 200]


def _run_for(seconds: float) -> None:
    time.sleep(seconds)


def test_hot_reload_under_load_fails_nothing_and_answers_stay_consistent(
    start_server: Callable[..., LiveServer], rel_repo: Path
) -> None:
    server = start_server(live_env(rel_repo, admin_api_key=ADMIN, max_queue_delay_ms=2))
    scores = {1: _expected(0), 2: _expected(7)}
    with Load(server.url) as load:
        _run_for(0.7)
        write_binary(rel_repo, version=2, seed=7)
        r = httpx.post(
            f"{server.url}/v2/repository/models/bin/load",
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=60,
        )
        switched_at = time.monotonic()
        assert r.status_code == 200 and r.json()["versions"] == ["1", "2"], r.text
        _run_for(0.7)
    assert load.answers and not load.failures(), load.failures()[:5]
    seen = set()
    for sent, _, body in load.answers:
        version = body["version"]
        seen.add(version)
        # The answer is what the version it names computes: never a mix of two versions.
        assert abs(body["predictions"][0]["score"] - scores[version]) < 1e-5, body
        if sent > switched_at:
            assert version == 2, "a request sent after the switch was served by the old version"
    assert seen == {1, 2}, seen


def _corrupt_drops(repo: Path) -> list[tuple[str, Callable[[], None]]]:
    """Each bad version is built in a staging folder beside the repository and renamed into
    place in one step, as verdict-train publishes a version (docs/training.md): a poll never
    sees the valid model a drop starts from before it is spoiled."""
    staging = repo.parent / "staging"  # same file system: the rename is atomic

    def publish(version: int, spoil: Callable[[Path], None]) -> None:
        folder = write_binary(staging, version=version, seed=3)
        spoil(folder)
        folder.rename(repo / "bin" / str(version))

    def rehash(folder: Path, model_file: str) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["model_file"] = model_file
        manifest["sha256"] = hashlib.sha256((folder / model_file).read_bytes()).hexdigest()
        if model_file in manifest["files"]:
            manifest["files"][model_file] = manifest["sha256"]
        (folder / "manifest.json").write_text(json.dumps(manifest))

    def bad_checksum(folder: Path) -> None:
        (folder / "model.onnx").write_bytes(build_onnx((3,), 2, seed=4)[0])

    def not_onnx(folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"\x08\x01garbage, not a protobuf graph" * 10)
        rehash(folder, "model.onnx")

    def wrong_inputs(folder: Path) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["input"]["shape"] = [-1, 5]
        manifest["input"]["feature_names"] = ["a", "b", "c", "d", "e"]
        (folder / "manifest.json").write_text(json.dumps(manifest))

    def pickled(folder: Path) -> None:
        (folder / "model.pkl").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
        rehash(folder, "model.pkl")

    def v1_overwritten() -> None:
        (repo / "bin" / "1" / "model.onnx").write_bytes(b"truncated")

    return [
        ("bin v2 refused: sha256", partial(publish, 2, bad_checksum)),
        ("bin v3 refused: onnxruntime cannot load", partial(publish, 3, not_onnx)),
        ("bin v4 refused:", partial(publish, 4, wrong_inputs)),
        ("bin v5 refused: model_file must be an ONNX file", partial(publish, 5, pickled)),
        ("bin v1 refused: sha256", v1_overwritten),
    ]


def _logged(server: LiveServer, text: str) -> bool:
    return text in server.output()


def test_corrupt_or_mismatched_models_are_refused_under_load(
    start_server: Callable[..., LiveServer], rel_repo: Path
) -> None:
    server = start_server(live_env(rel_repo, poll_interval_s=0.1))
    with Load(server.url, check_ready=True) as load:
        for reason, drop in _corrupt_drops(rel_repo):
            drop()
            wait_until(partial(_logged, server, reason), 30, f"the log line {reason!r}")
        _run_for(0.3)
    assert load.answers and not load.failures(), load.failures()[:5]
    assert load.not_ready == 0, "readiness dropped while bad models were refused"
    # The previous version kept serving every request, with its own answers.
    assert {body["version"] for _, _, body in load.answers} == {1}
    score = _expected(0)
    assert all(abs(b["predictions"][0]["score"] - score) < 1e-5 for _, _, b in load.answers)
    assert "still serving versions [1]" in server.output()


FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "torch"}


def test_the_service_never_unpickles_anything() -> None:
    problems = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names]
                if isinstance(node, ast.ImportFrom) and node.module:
                    names.append(node.module)
                for name in names:
                    if name.split(".")[0] in FORBIDDEN_MODULES:
                        problems.append(f"{path.name}:{node.lineno} imports {name}")
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr in ("load", "loads"):
                    owner = ast.unparse(func.value)
                    if owner in ("np", "numpy", "torch", "pickle", "joblib", "marshal"):
                        problems.append(f"{path.name}:{node.lineno} calls {owner}.{func.attr}")
                for kw in node.keywords:
                    if kw.arg == "allow_pickle":
                        problems.append(f"{path.name}:{node.lineno} passes allow_pickle")
        for word in ("pickle", "joblib", "torch.load", "np.load", "numpy.load"):
            if word in source:
                problems.append(f"{path.name} mentions {word}")
    assert not problems, problems


def test_a_pickled_model_file_is_refused_without_being_read(rel_repo: Path) -> None:
    from service.models.manifest import check_manifest

    manifest = json.loads((rel_repo / "bin" / "1" / "manifest.json").read_text())
    manifest["model_file"] = "model.pkl"
    assert any("ONNX" in p for p in check_manifest(manifest, "bin", 1))
