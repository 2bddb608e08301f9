"""API keys, the admin key, metrics protection, CORS, request ids, and what logs and errors show."""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import LiveServer, make_settings, wait_ready
from tests.reliability.rel_support import BIN_ROW, is_error_shape, live_env

KEYS = ["key-one-AAAA", "key-two-BBBB", "key-three-CCCC"]
ADMIN = "admin-key-ZZZZ"
PREDICT = {"model": "bin", "instances": [BIN_ROW]}
INFER = {"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": BIN_ROW}]}


def _client(model_repo: Path, tmp_path: Path, **overrides: Any) -> Iterator[TestClient]:
    from service.http.app import create_app

    app = create_app(make_settings(model_repo, tmp_path, **overrides))
    with TestClient(app) as c:
        wait_ready(c)
        yield c


@pytest.fixture
def keyed(model_repo: Path, tmp_path: Path) -> Iterator[TestClient]:
    yield from _client(model_repo, tmp_path, api_keys=",".join(KEYS), admin_api_key=ADMIN)


def _protected(c: TestClient, headers: dict[str, str]) -> list[httpx.Response]:
    return [
        c.post("/predict", json=PREDICT, headers=headers),
        c.post("/v2/models/bin/infer", json=INFER, headers=headers),
        c.post("/v2/models/bin/versions/1/infer", json=INFER, headers=headers),
        c.post("/feedback", json={"items": [{"prediction_id": "x", "label": 0}]}, headers=headers),
    ]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEYS[0]}"},
        {"Authorization": f"Bearer {KEYS[0]}x"},
        {"X-API-Key": "nope"},
        {"Authorization": f"Bearer {ADMIN}"},  # the admin key is no API key
    ],
)
def test_without_a_valid_key_protected_endpoints_answer_401(
    keyed: TestClient, headers: dict[str, str]
) -> None:
    for r in _protected(keyed, headers):
        assert r.status_code == 401, (r.request.url, r.text)
        assert is_error_shape(r.json()) and r.json()["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("key", KEYS)
def test_every_configured_key_is_accepted_as_bearer_or_x_api_key(
    keyed: TestClient, key: str
) -> None:
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        predict, infer, infer_v, feedback = _protected(keyed, headers)
        assert predict.status_code == infer.status_code == infer_v.status_code == 200
        assert feedback.status_code == 200 and feedback.json()["unknown"] == 1


def test_health_metadata_and_metrics_stay_open(keyed: TestClient) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/bin", "/metrics"):
        assert keyed.get(path).status_code == 200, path


def test_keys_are_compared_with_compare_digest_against_every_key(
    keyed: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert keyed.post("/predict", json=PREDICT, headers={"X-API-Key": KEYS[0]}).status_code == 200
    # Every key is compared even after the first one matched: timing says nothing.
    assert sorted(calls) == sorted(k.encode() for k in KEYS)


def test_metrics_can_require_a_key(model_repo: Path, tmp_path: Path) -> None:
    for c in _client(model_repo, tmp_path, api_keys=KEYS[0], metrics_require_key=True):
        r = c.get("/metrics")
        assert r.status_code == 401 and is_error_shape(r.json())
        assert "www-authenticate" in r.headers
        assert c.get("/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"}).status_code == 200
        assert c.get("/v2/health/ready").status_code == 200


ADMIN_CALLS = [
    ("GET", "/v2/repository/index"),
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/bin/load"),
    ("POST", "/v2/repository/models/bin/unload"),
]


def test_the_repository_extension_is_disabled_without_an_admin_key(
    model_repo: Path, tmp_path: Path
) -> None:
    for c in _client(model_repo, tmp_path, api_keys=KEYS[0]):
        for method, path in ADMIN_CALLS:
            for headers in ({}, {"Authorization": f"Bearer {KEYS[0]}"}):
                r = c.request(method, path, headers=headers)
                assert r.status_code == 403 and r.json()["code"] == "admin_disabled", path
        assert c.post("/predict", json=PREDICT, headers={"X-API-Key": KEYS[0]}).status_code == 200


def test_the_repository_extension_needs_the_admin_key(keyed: TestClient) -> None:
    for method, path in ADMIN_CALLS:
        for headers in ({}, {"Authorization": f"Bearer {KEYS[0]}"}, {"X-API-Key": ADMIN}):
            r = keyed.request(method, path, headers=headers)
            assert r.status_code == 401 and "www-authenticate" in r.headers, (path, headers)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert keyed.get("/v2/repository/index", headers=admin).status_code == 200
    assert keyed.post("/v2/repository/models/bin/load", headers=admin).status_code == 200


def test_cors_is_off_by_default(client: TestClient) -> None:
    origin = {"Origin": "https://evil.example"}
    r = client.options("/predict", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/predict", json=PREDICT, headers=origin)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(model_repo: Path, tmp_path: Path) -> None:
    for c in _client(model_repo, tmp_path, cors_origins="https://ok.example"):
        good = c.post("/predict", json=PREDICT, headers={"Origin": "https://ok.example"})
        assert good.headers["access-control-allow-origin"] == "https://ok.example"
        bad = c.post("/predict", json=PREDICT, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in bad.headers


def test_request_ids_are_echoed_or_generated(client: TestClient) -> None:
    r = client.post("/predict", json=PREDICT, headers={"X-Request-ID": "abc-123.x"})
    assert r.headers["x-request-id"] == "abc-123.x"
    generated = client.get("/v2/health/live").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", generated)
    assert client.get("/v2/health/live").headers["x-request-id"] != generated
    # Ids that could forge log lines or flood them are replaced.
    for bad in (b"a b", b"x" * 200, "id\u00e9".encode(), b"a;b", b"a\tb"):
        got = client.get("/nope", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert got != bad and re.fullmatch(r"[0-9a-f]{16}", got)


def test_errors_never_show_server_paths_or_stack_traces(
    model_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_dir = str(tmp_path)
    for c in _client(model_repo, tmp_path, admin_api_key=ADMIN):
        broken = model_repo / "broken" / "1"  # dropped in after start
        broken.mkdir(parents=True)
        (broken / "manifest.json").write_text("{not json")
        (broken / "model.onnx").write_bytes(b"\x00garbage")
        admin = {"Authorization": f"Bearer {ADMIN}"}
        answers = [
            c.post("/v2/repository/models/broken/load", headers=admin),
            c.post("/v2/repository/models/missing/load", headers=admin),
            c.get("/v2/repository/index", headers=admin),
            c.post("/predict", json={"model": "nope", "instances": [BIN_ROW]}),
            c.post("/predict", content=b"{bad json"),
        ]
        # An inference failure whose exception names a file deep in the server.
        mv = c.app.state.repository.resolve("bin")  # type: ignore[attr-defined]

        def explode(x: Any) -> Any:
            raise RuntimeError(f"{secret_dir}/lib/onnxruntime/core/session.cc:42 boom")

        monkeypatch.setattr(mv.batcher, "_run", explode)
        failed = c.post("/predict", json=PREDICT)
        assert failed.status_code == 500 and failed.json()["code"] == "inference_failed"
        answers.append(failed)
    assert answers[0].status_code == 400 and "broken" in answers[0].text
    assert answers[1].status_code == 404
    for r in answers:
        assert secret_dir not in r.text and str(model_repo) not in r.text, r.text
        assert "Traceback" not in r.text and ".py" not in r.text and ".cc" not in r.text, r.text
        if r.status_code >= 400:
            assert is_error_shape(r.json())


SECRET = "SECRET-MARKER-7f3a"


def test_live_logs_hold_no_bodies_or_keys_and_carry_request_ids(
    start_server: Any, rel_repo: Path
) -> None:
    env = live_env(
        rel_repo,
        api_keys=KEYS[0],
        admin_api_key=ADMIN,
        log_json="true",
        access_log="true",
    )
    server: LiveServer = start_server(env)
    url = server.url
    good = {"Authorization": f"Bearer {KEYS[0]}"}
    sent_ids = []
    with httpx.Client(timeout=10) as http:
        for i, (headers, path, body) in enumerate(
            [
                (good, "/predict", {"model": "bin", "instances": [[1, 2, SECRET]]}),
                (good, "/predict", {"model": SECRET, "instances": [BIN_ROW]}),
                (good, "/predict", f'{{"{SECRET}": [1,'),
                (good, "/v2/models/bin/infer", {"inputs": [{"name": SECRET}]}),
                (good, "/feedback", {"items": [{"prediction_id": SECRET, "label": SECRET}]}),
                ({"Authorization": f"Bearer {SECRET}"}, "/predict", PREDICT),
                ({"X-API-Key": SECRET}, "/feedback", {"items": []}),
                ({"Authorization": f"Bearer {SECRET}"}, "/v2/repository/index", None),
                (good, "/predict", PREDICT),
            ]
        ):
            rid = f"req-{i}"
            sent_ids.append(rid)
            content = body if isinstance(body, str) else json.dumps(body) if body else b""
            r = http.post(url + path, content=content, headers={**headers, "X-Request-ID": rid})
            assert r.headers["x-request-id"] == rid
            assert r.status_code < 500, r.text
    log = server.stop()
    assert SECRET not in log, "a request body or key reached the log"
    for key in (*KEYS, ADMIN):
        assert key not in log
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    assert all({"ts", "level", "message", "request_id"} <= set(doc) for doc in lines)
    logged_ids = {doc["request_id"] for doc in lines}
    assert set(sent_ids) <= logged_ids, sorted(logged_ids)
