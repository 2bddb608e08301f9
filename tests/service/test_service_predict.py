"""POST /predict: rows as lists or objects, image reshapes, versions, keys and every error."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.monitoring.ids import PredictionIds
from tests.conftest import (
    BIN_CLASSES,
    IMG_CLASSES,
    TEST_KEY,
    make_settings,
    model_weights,
    reference_probabilities,
    wait_ready,
    write_binary,
)


def _error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "code"}
    assert body["code"] == code
    return body


def test_binary_rows_as_lists_and_objects(client: TestClient) -> None:
    rows = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]
    r = client.post(
        "/predict",
        json={
            "model": "bin",
            "instances": [
                rows[0],
                dict(zip(["gamma", "alpha", "beta"], [3.0, 1.0, 2.0], strict=False)),
                rows[1],
            ],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"], body["threshold"]) == ("bin", 1, 0.3)
    w, b = model_weights("bin")
    expected = reference_probabilities(np.array([rows[0], rows[0], rows[1]], np.float32), w, b)
    ids = PredictionIds(TEST_KEY.encode())
    for pred, p in zip(body["predictions"], expected, strict=True):
        assert pred["probabilities"] == pytest.approx(
            dict(zip(BIN_CLASSES, p, strict=False)), abs=1e-6
        )
        assert pred["score"] == pytest.approx(p[1], abs=1e-6)
        positive = p[1] >= 0.3
        assert pred["decision"] == ("positive" if positive else "negative")
        assert pred["label"] == ("spam" if positive else "ham")
        assert pred["class_index"] == int(positive)
        ref = ids.parse(pred["prediction_id"])
        assert ref is not None
        assert (ref.model, ref.version, ref.class_index) == ("bin", 1, pred["class_index"])
        assert ref.score == pytest.approx(pred["score"], abs=1e-6)
    assert len({p["prediction_id"] for p in body["predictions"]}) == 3


def test_threshold_not_argmax_decides_binary_labels(client: TestClient) -> None:
    # Find rows whose spam probability lies between the threshold (0.3) and 0.5.
    w, b = model_weights("bin")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 3)).astype(np.float32)
    p = reference_probabilities(x, w, b)[:, 1]
    between = x[(p > 0.32) & (p < 0.48)][:3]
    assert len(between)
    r = client.post("/predict", json={"model": "bin", "instances": between.tolist()})
    assert all(pred["label"] == "spam" for pred in r.json()["predictions"])


@pytest.mark.parametrize(
    "row",
    [
        list(np.linspace(0, 1, 16)),
        np.linspace(0, 1, 16).reshape(4, 4).tolist(),
        np.linspace(0, 1, 16).reshape(1, 4, 4).tolist(),
    ],
    ids=["flat", "HxW", "1xHxW"],
)
def test_image_rows_flat_or_nested(client: TestClient, row: list) -> None:
    r = client.post("/predict", json={"model": "img", "instances": [row, row]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    w, b = model_weights("img")
    p = reference_probabilities(np.linspace(0, 1, 16, dtype=np.float32)[None], w, b)[0]
    for pred in preds:
        assert pred["label"] == IMG_CLASSES[int(p.argmax())]
        assert pred["probabilities"] == pytest.approx(
            dict(zip(IMG_CLASSES, p, strict=False)), abs=1e-6
        )
        assert "score" not in pred and "decision" not in pred


def test_explicit_and_latest_versions(model_repo: Path, tmp_path: Path) -> None:
    write_binary(model_repo, version=2, seed=9)
    app = create_app(make_settings(model_repo, tmp_path))  # default policy: all versions
    with TestClient(app) as c:
        wait_ready(c)
        x = [[1.0, 2.0, 3.0]]
        latest = c.post("/predict", json={"model": "bin", "instances": x}).json()
        v1 = c.post("/predict", json={"model": "bin", "version": 1, "instances": x}).json()
        v2 = c.post("/predict", json={"model": "bin", "version": "2", "instances": x}).json()
        assert latest["version"] == 2 and v1["version"] == 1 and v2["version"] == 2
        assert latest["predictions"][0]["score"] == v2["predictions"][0]["score"]
        assert v1["predictions"][0]["score"] != v2["predictions"][0]["score"]
        _error(
            c.post("/predict", json={"model": "bin", "version": 3, "instances": x}),
            404,
            "version_not_found",
        )


def test_model_may_be_omitted_only_when_one_is_served(
    model_repo: Path, tmp_path: Path, client
) -> None:
    body = _error(client.post("/predict", json={"instances": [[1, 2, 3]]}), 400, "bad_request")
    assert "bin" in body["error"] and "img" in body["error"]
    import shutil

    shutil.rmtree(model_repo / "img")
    app = create_app(make_settings(model_repo, tmp_path))
    with TestClient(app) as c:
        wait_ready(c)
        r = c.post("/predict", json={"instances": [[1, 2, 3]]})
        assert r.status_code == 200 and r.json()["model"] == "bin"


@pytest.mark.parametrize(
    ("payload", "status", "code", "needle"),
    [
        ({"model": "nope", "instances": [[1, 2, 3]]}, 404, "model_not_found", "nope"),
        ({"model": "bin", "instances": [[1, 2]]}, 422, "invalid_input", "3 feature values"),
        ({"model": "bin", "instances": [[1, 2, 3, 4]]}, 422, "invalid_input", "got 4"),
        ({"model": "bin", "instances": [[1, 2, 3], [1, 2]]}, 422, "invalid_input", "equal length"),
        ({"model": "bin", "instances": []}, 422, "invalid_input", "non-empty"),
        ({"model": "bin"}, 422, "invalid_input", "instances"),
        ({"model": "bin", "instances": [[1, "a", 3]]}, 422, "invalid_input", "numbers"),
        ({"model": "bin", "instances": [[1, None, 3]]}, 422, "invalid_input", "numbers"),
        ({"model": "bin", "instances": [[1, 1e39, 3]]}, 422, "invalid_input", "non-finite"),
        (
            {"model": "bin", "instances": [{"alpha": 1, "beta": 2}]},
            422,
            "invalid_input",
            "missing features ['gamma']",
        ),
        (
            {"model": "bin", "instances": [{"alpha": 1, "beta": 2, "gamma": 3, "delta": 4}]},
            422,
            "invalid_input",
            "unknown features ['delta']",
        ),
        ({"model": "img", "instances": [{"a": 1}]}, 422, "invalid_input", "lists of numbers"),
        ({"model": "img", "instances": [[0.0] * 15]}, 422, "invalid_input", "16 values"),
        ({"model": 3, "instances": [[1, 2, 3]]}, 400, "bad_request", "model"),
        ({"model": "bin", "version": [1], "instances": [[1, 2, 3]]}, 400, "bad_request", "version"),
        ({"model": "bin", "version": "x", "instances": [[1, 2, 3]]}, 404, "version_not_found", "x"),
    ],
)
def test_bad_input_is_a_clear_4xx(client: TestClient, payload, status, code, needle) -> None:
    body = _error(client.post("/predict", json=payload), status, code)
    assert needle in body["error"]


def test_malformed_bodies(client: TestClient) -> None:
    _error(client.post("/predict", content=b"{not json"), 400, "bad_request")
    _error(client.post("/predict", content=b""), 400, "bad_request")
    _error(client.post("/predict", content=b"[1, 2]"), 400, "bad_request")
    _error(client.post("/predict", content=b"NaN"), 400, "bad_request")
    r = client.post("/predict", content=b"a=1", headers={"content-type": "text/plain"})
    _error(r, 415, "unsupported_media_type")
    r = client.post("/predict", content=b"{}", headers={"content-encoding": "br"})
    _error(r, 415, "unsupported_media_type")
    r = client.post("/predict", content=b"not gzip", headers={"content-encoding": "gzip"})
    _error(r, 400, "bad_request")
    truncated = gzip.compress(b'{"model": "bin", "instances": [[1, 2, 3]]}')[:-12]
    r = client.post("/predict", content=truncated, headers={"content-encoding": "gzip"})
    _error(r, 400, "bad_request")
    _error(client.get("/predict"), 405, "method_not_allowed")
    _error(client.get("/no/such/route"), 404, "not_found")


def test_gzip_and_deflate_bodies(client: TestClient) -> None:
    raw = orjson.dumps({"model": "bin", "instances": [[1, 2, 3]]})
    for name, packed in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
        r = client.post("/predict", content=packed, headers={"content-encoding": name})
        assert r.status_code == 200, r.text


def test_zip_bomb_is_413(model_repo: Path, tmp_path: Path) -> None:
    app = create_app(make_settings(model_repo, tmp_path, max_body_bytes=1000))
    bomb = gzip.compress(b" " * 100_000)
    assert len(bomb) < 1000
    with TestClient(app) as c:
        wait_ready(c)
        r = c.post("/predict", content=bomb, headers={"content-encoding": "gzip"})
        _error(r, 413, "payload_too_large")


def test_too_many_rows(model_repo: Path, tmp_path: Path) -> None:
    app = create_app(make_settings(model_repo, tmp_path, max_rows_per_request=4))
    with TestClient(app) as c:
        wait_ready(c)
        body = _error(
            c.post("/predict", json={"model": "bin", "instances": [[1, 2, 3]] * 5}),
            422,
            "invalid_input",
        )
        assert "max_rows_per_request 4" in body["error"]


def test_body_over_the_limit_is_413_by_header_and_while_streaming(
    model_repo: Path, tmp_path: Path
) -> None:
    app = create_app(make_settings(model_repo, tmp_path, max_body_bytes=200))
    big = orjson.dumps({"model": "bin", "instances": [[1.5, 2.5, 3.5]] * 30})
    with TestClient(app) as c:
        wait_ready(c)
        _error(c.post("/predict", content=big), 413, "payload_too_large")

        def chunks():  # no Content-Length: counted while streaming
            for i in range(0, len(big), 50):
                yield big[i : i + 50]

        _error(c.post("/predict", content=chunks()), 413, "payload_too_large")
        small = orjson.dumps({"model": "bin", "instances": [[1, 2, 3]]})
        assert c.post("/predict", content=iter([small])).status_code == 200


def test_api_keys_guard_predict_and_infer_but_not_health_or_metrics(
    model_repo: Path, tmp_path: Path
) -> None:
    app = create_app(make_settings(model_repo, tmp_path, api_keys="key-one,key-two"))
    payload = {"model": "bin", "instances": [[1, 2, 3]]}
    infer = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    with TestClient(app) as c:
        wait_ready(c)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic a2V5"}):
            r = c.post("/predict", json=payload, headers=headers)
            _error(r, 401, "unauthorized")
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            _error(c.post("/v2/models/bin/infer", json=infer, headers=headers), 401, "unauthorized")
        assert (
            c.post(
                "/predict", json=payload, headers={"Authorization": "Bearer key-two"}
            ).status_code
            == 200
        )
        assert c.post("/predict", json=payload, headers={"X-API-Key": "key-one"}).status_code == 200
        r = c.post("/v2/models/bin/infer", json=infer, headers={"Authorization": "Bearer key-one"})
        assert r.status_code == 200
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics", "/v2"):
            assert c.get(path).status_code == 200
