"""Shadow serving and promotion in process: the admin API and its errors, roles that survive a
reload, shadow decisions scored by the primary's labels, the promotion rule, rollback, and a
failing shadow that never changes an answer."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.monitoring.decisions import RolesRecord
from service.monitoring.store import FeedbackStore
from tests.conftest import (
    IMG_SHAPE,
    make_settings,
    model_weights,
    reference_probabilities,
    wait_ready,
    write_image,
)
from tests.lifecycle.shadow_support import (
    ADMIN,
    ADMIN_KEY,
    MODEL,
    shadow_outcomes,
    shifted_rows,
    write_pair,
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return write_pair(tmp_path / "models")


def _client(repo: Path, tmp: Path, **overrides: Any) -> Iterator[TestClient]:
    from service.http.app import create_app

    app = create_app(make_settings(repo, tmp, admin_api_key=ADMIN_KEY, **overrides))
    with TestClient(app) as c:
        wait_ready(c)
        yield c


@pytest.fixture
def client(repo: Path, tmp_path: Path) -> Iterator[TestClient]:
    yield from _client(repo, tmp_path)


def _shadow(client: TestClient, body: Any) -> Any:
    return client.post(f"/v2/repository/models/{MODEL}/shadow", json=body, headers=ADMIN)


def _predict(client: TestClient, rows: list[list[float]], **extra: Any) -> list[dict[str, Any]]:
    r = client.post("/predict", json={"model": MODEL, "instances": rows, **extra})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def _wait_decided(client: TestClient, n: int, timeout_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        view = client.get(f"/models/{MODEL}/shadow").json()
        if view.get("shadow_decisions", 0) >= n:
            return view
        assert time.monotonic() < deadline, f"shadow decisions never reached {n}: {view}"
        time.sleep(0.05)


def test_a_version_marked_shadow_keeps_the_primary_and_survives_a_reload(
    client: TestClient, repo: Path, tmp_path: Path
) -> None:
    # Without roles the latest version answers; marking v2 shadow pins v1 as the primary.
    assert (
        client.post("/predict", json={"model": MODEL, "instances": [[0, 0, 0]]}).json()["version"]
        == 2
    )
    r = _shadow(client, {"version": 2, "sample_rate": 0.25})
    assert r.status_code == 200, r.text
    assert r.json() == {"name": MODEL, "primary": 1, "shadow": 2, "sample_rate": 0.25}
    # Kept in the feedback store, for every process of the deployment; the model folder is
    # the deployer's, and the admin API leaves it as it is.
    db = sqlite3.connect(tmp_path / "var" / "feedback.sqlite3")
    assert db.execute(
        "SELECT model, primary_version, shadow_version, sample_rate, revision FROM roles"
    ).fetchall() == [(MODEL, 1, 2, 0.25, 1)]
    db.close()
    assert not (repo / MODEL / "roles.json").exists()
    assert (
        client.post("/predict", json={"model": MODEL, "instances": [[0, 0, 0]]}).json()["version"]
        == 1
    )
    # The shadow stays addressable by its version.
    assert _predict(client, [[0, 1, 0]], version=2)[0]["label"] == "spam"
    assert client.post(f"/v2/repository/models/{MODEL}/load", headers=ADMIN).status_code == 200
    roles = client.get(f"/v2/repository/models/{MODEL}/roles", headers=ADMIN).json()
    assert roles == {"name": MODEL, "primary": 1, "shadow": 2, "sample_rate": 0.25}
    metrics = client.get("/metrics").text
    assert f'verdict_model_role{{model="{MODEL}",role="primary",version="1"}} 1.0' in metrics
    assert f'verdict_model_role{{model="{MODEL}",role="shadow",version="2"}} 1.0' in metrics
    # Stopping the shadow keeps the primary pinned.
    assert _shadow(client, {"version": None}).json()["shadow"] is None
    assert client.get(f"/v2/repository/models/{MODEL}/roles", headers=ADMIN).json()["primary"] == 1


def test_roles_survive_a_restart_and_the_setting_applies_without_a_file(
    repo: Path, tmp_path: Path
) -> None:
    for c in _client(repo, tmp_path, shadows=f"{MODEL}=2:0.5"):
        roles = c.get(f"/v2/repository/models/{MODEL}/roles", headers=ADMIN).json()
        assert (roles["primary"], roles["shadow"], roles["sample_rate"]) == (1, 2, 0.5)
        assert _shadow(c, {"version": 2, "sample_rate": 0.05}).status_code == 200
    # The roles the admin API kept in the store take precedence over the setting, and over a
    # roles file, after a restart.
    (repo / MODEL / "roles.json").write_text(json.dumps({"primary": 2, "shadow": 1}))
    for c in _client(repo, tmp_path, shadows=f"{MODEL}=2:0.5"):
        roles = c.get(f"/v2/repository/models/{MODEL}/roles", headers=ADMIN).json()
        assert (roles["primary"], roles["shadow"], roles["sample_rate"]) == (1, 2, 0.05)
    # Cleared from the store (`verdict-store roles --clear`), the file applies again.
    FeedbackStore(str(tmp_path / "var" / "feedback.sqlite3")).clear_roles(MODEL)
    for c in _client(repo, tmp_path, shadows=f"{MODEL}=2:0.5"):
        roles = c.get(f"/v2/repository/models/{MODEL}/roles", headers=ADMIN).json()
        assert (roles["primary"], roles["shadow"], roles["sample_rate"]) == (2, 1, 0.1)


def test_the_shadow_version_is_loaded_whatever_the_version_policy(
    repo: Path, tmp_path: Path
) -> None:
    (repo / MODEL / "roles.json").write_text(json.dumps({"primary": 1, "shadow": 2}))
    # specific:1 would load v1 alone; the shadow is loaded beside it.
    for c in _client(repo, tmp_path, version_policy="specific:1"):
        roles = c.get(f"/v2/repository/models/{MODEL}/roles", headers=ADMIN).json()
        assert (roles["primary"], roles["shadow"]) == (1, 2)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"version": 2, "sample_rate": 2}, 400, "bad_request"),
        ({"version": "two"}, 400, "bad_request"),
        ({"sample_rate": 0.1}, 400, "bad_request"),
        ({"version": 2, "extra": 1}, 400, "bad_request"),
        ({"version": 9}, 404, "version_not_found"),
        ({"version": 2}, 200, None),
    ],
)
def test_bad_shadow_requests_get_a_clear_4xx(
    client: TestClient, body: Any, status: int, code: str | None
) -> None:
    r = _shadow(client, body)
    assert r.status_code == status, r.text
    if code is not None:
        assert r.json()["code"] == code and r.json()["error"]


def test_the_admin_routes_need_the_admin_key(client: TestClient) -> None:
    r = client.post(f"/v2/repository/models/{MODEL}/promote", json={})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    r = client.post(
        f"/v2/repository/models/{MODEL}/shadow",
        json={"version": 2},
        headers={"Authorization": "Bearer wrong"},
    )
    assert r.status_code == 401
    assert client.get(f"/v2/repository/models/{MODEL}/promotions").status_code == 401
    r = client.post(f"/v2/repository/models/{MODEL}/promote", headers=ADMIN)
    assert r.status_code == 409 and r.json()["code"] == "no_shadow"
    r = client.post(f"/v2/repository/models/{MODEL}/rollback", headers=ADMIN)
    assert r.status_code == 409 and r.json()["code"] == "nothing_to_roll_back"
    r = client.post("/v2/repository/models/nope/promote", headers=ADMIN)
    assert r.status_code == 404


def test_labels_score_both_versions_and_promotion_follows_the_rule(client: TestClient) -> None:
    assert _shadow(client, {"version": 2, "sample_rate": 1.0}).status_code == 200
    rows, truth = shifted_rows(120, seed=3)
    answers = []
    for i in range(0, len(rows), 10):
        answers += _predict(client, rows[i : i + 10])
    assert {a["prediction_id"][:2] for a in answers}  # ids issued
    _wait_decided(client, len(rows))
    items = [
        {"prediction_id": a["prediction_id"], "label": t}
        for a, t in zip(answers, truth, strict=True)
    ]
    r = client.post("/feedback", json={"items": items})
    assert r.json()["accepted"] == len(rows)

    view = client.get(f"/models/{MODEL}/shadow").json()
    comparison = view["comparison"]
    assert comparison["paired_labels"] == len(rows)
    assert comparison["shadow"]["cost_per_row"] == 0.0  # decides on the feature the truth follows
    assert comparison["primary"]["cost_per_row"] > 1.0
    assert comparison["cost_difference"]["upper"] < 0

    # The metrics count both roles on the same rows.
    metrics = client.app.state.registry  # type: ignore[attr-defined]

    def outcomes(version: str, role: str) -> float:
        return sum(
            metrics.get_sample_value(
                "verdict_shadow_outcomes_total",
                {"model": MODEL, "version": version, "role": role, "outcome": o},
            )
            or 0.0
            for o in ("tp", "fp", "tn", "fn")
        )

    assert outcomes("1", "primary") == len(rows) == outcomes("2", "shadow")
    shadow_fn = metrics.get_sample_value(
        "verdict_shadow_outcomes_total",
        {"model": MODEL, "version": "2", "role": "shadow", "outcome": "fn"},
    )
    assert shadow_fn == 0.0
    decided = metrics.get_sample_value(
        "verdict_shadow_rows_total", {"model": MODEL, "version": "2", "outcome": "decided"}
    )
    assert decided == len(rows)

    # Too few labels for the minimum asked: refused, with the figures, and kept.
    r = client.post(
        f"/v2/repository/models/{MODEL}/promote",
        json={"min_labels": 1000, "requested_by": "ci"},
        headers=ADMIN,
    )
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "promotion_refused"
    assert "120 labelled rows" in r.json()["error"] and "1000" in r.json()["error"]
    assert client.get(f"/v2/repository/models/{MODEL}/roles", headers=ADMIN).json()["primary"] == 1

    r = client.post(
        f"/v2/repository/models/{MODEL}/promote",
        json={"min_labels": 100, "confidence": 0.99},
        headers={**ADMIN, "X-Requested-By": "alice"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outcome"] == "promoted" and body["roles"]["primary"] == 2
    assert body["roles"]["shadow"] == 1
    assert body["requested_by"].startswith("alice (admin-key:")
    assert ADMIN_KEY not in body["requested_by"]
    assert _predict(client, [[1.0, -1.0, 0.0]])[0]["label"] == "ham"  # v2 answers now
    assert (
        client.post("/predict", json={"model": MODEL, "instances": [[0, 0, 0]]}).json()["version"]
        == 2
    )

    r = client.post(
        f"/v2/repository/models/{MODEL}/rollback", headers=ADMIN, json={"requested_by": "bob"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["roles"]["primary"] == 1 and r.json()["outcome"] == "rolled_back"
    history = client.get(f"/v2/repository/models/{MODEL}/promotions", headers=ADMIN).json()
    assert [d["outcome"] for d in history["decisions"]] == ["rolled_back", "promoted", "refused"]
    refused = history["decisions"][2]
    assert refused["figures"]["paired_labels"] == 120
    assert refused["figures"]["min_labels"] == 1000
    assert refused["requested_by"].startswith("ci (")
    # Nothing left to roll back.
    r = client.post(f"/v2/repository/models/{MODEL}/rollback", headers=ADMIN)
    assert r.status_code == 409


def test_labels_score_a_multiclass_shadow_as_correct_or_wrong_on_metrics(tmp_path: Path) -> None:
    """A multiclass model's paired rows are counted correct or wrong per role on /metrics, as
    its labels imply, and the binary outcomes stay off its series."""
    img_repo = tmp_path / "models"
    write_image(img_repo, version=1, seed=1)
    write_image(img_repo, version=2, seed=2)
    x = np.random.default_rng(11).normal(scale=2.0, size=(400, *IMG_SHAPE)).astype(np.float32)
    said = {}
    for version, seed in ((1, 1), (2, 2)):
        p = reference_probabilities(x, *model_weights("img", seed))
        top2 = np.sort(p, axis=1)[:, -2:]
        said[version] = p.argmax(axis=1), top2[:, 1] - top2[:, 0] > 1e-3
    # Rows that neither version decides on a near tie (onnxruntime and numpy agree on them).
    keep = said[1][1] & said[2][1]
    x, primary, shadow = x[keep][:120], said[1][0][keep][:120], said[2][0][keep][:120]
    n = len(x)
    assert n == 120 and (primary != shadow).sum() > 10  # the two versions disagree often
    # The truth follows the shadow on two rows of three, and neither version on the third.
    pairs = enumerate(zip(shadow.tolist(), primary.tolist(), strict=True))
    truth = [s if i % 3 else next(c for c in range(3) if c not in (s, p)) for i, (s, p) in pairs]

    for client in _client(img_repo, tmp_path / "run"):
        r = client.post(
            "/v2/repository/models/img/shadow",
            json={"version": 2, "sample_rate": 1.0},
            headers=ADMIN,
        )
        assert r.status_code == 200, r.text
        # The series start at 0 when the shadow is set, with the multiclass outcomes only.
        assert shadow_outcomes(client.get("/metrics").text, "img") == {
            (v, role, o): 0.0
            for v, role in (("1", "primary"), ("2", "shadow"))
            for o in ("correct", "wrong")
        }
        answers = []
        for i in range(0, n, 10):
            rows = x[i : i + 10].tolist()
            r = client.post("/predict", json={"model": "img", "instances": rows})
            assert r.status_code == 200 and r.json()["version"] == 1, r.text
            answers += r.json()["predictions"]
        assert [a["class_index"] for a in answers] == primary.tolist()
        deadline = time.monotonic() + 20
        while client.get("/models/img/shadow").json().get("shadow_decisions", 0) < n:
            assert time.monotonic() < deadline, "the shadow did not decide every row"
            time.sleep(0.05)
        items = [
            {"prediction_id": a["prediction_id"], "label": t}
            for a, t in zip(answers, truth, strict=True)
        ]
        assert client.post("/feedback", json={"items": items}).json()["accepted"] == n

        wrong = {
            "primary": int(sum(p != t for p, t in zip(primary, truth, strict=True))),
            "shadow": int(sum(s != t for s, t in zip(shadow, truth, strict=True))),
        }
        assert wrong["shadow"] == n // 3 and wrong["primary"] > wrong["shadow"]
        assert shadow_outcomes(client.get("/metrics").text, "img") == {
            ("1", "primary", "correct"): n - wrong["primary"],
            ("1", "primary", "wrong"): wrong["primary"],
            ("2", "shadow", "correct"): n - wrong["shadow"],
            ("2", "shadow", "wrong"): wrong["shadow"],
        }
        # The cost per row derived from the series is the one the promotion rule uses.
        comparison = client.get("/models/img/shadow").json()["comparison"]
        for role in ("primary", "shadow"):
            assert comparison[role]["errors"] == wrong[role]
            assert comparison[role]["cost_per_row"] == pytest.approx(wrong[role] / n)


def test_a_failing_shadow_never_changes_an_answer(client: TestClient) -> None:
    rows, _ = shifted_rows(60, seed=5)
    assert _shadow(client, {"version": 2, "sample_rate": 0.0}).status_code == 200
    before = [_predict(client, [row])[0] for row in rows]
    assert _shadow(client, {"version": 2, "sample_rate": 1.0}).status_code == 200
    repository = client.app.state.repository  # type: ignore[attr-defined]
    shadow = repository.served()[MODEL][2]

    def fail(x: Any) -> Any:
        raise RuntimeError("the shadow broke")

    shadow.batcher._run = fail  # fault injection: the shadow's model runs fail
    after = [_predict(client, [row])[0] for row in rows]
    strip = [{k: v for k, v in p.items() if k != "prediction_id"} for p in before]
    assert [{k: v for k, v in p.items() if k != "prediction_id"} for p in after] == strip
    registry = client.app.state.registry  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while (
        registry.get_sample_value(
            "verdict_shadow_rows_total", {"model": MODEL, "version": "2", "outcome": "failed"}
        )
        or 0
    ) < len(rows):
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("text", ["risk", "risk=two", "risk=2:1.5", "risk=0", "=2"])
def test_a_bad_shadows_setting_stops_the_server(text: str, tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="shadow"):
        make_settings(tmp_path, tmp_path, shadows=text)


def test_a_broken_roles_file_keeps_the_roles_in_force(repo: Path, tmp_path: Path) -> None:
    (repo / MODEL / "roles.json").write_text(
        json.dumps({"primary": 1, "shadow": 2, "sample_rate": 0.5})
    )
    for client in _client(repo, tmp_path):
        (repo / MODEL / "roles.json").write_text("{not json")
        assert client.post(f"/v2/repository/models/{MODEL}/load", headers=ADMIN).status_code == 200
        roles = client.get(f"/v2/repository/models/{MODEL}/roles", headers=ADMIN).json()
        assert (roles["primary"], roles["shadow"], roles["sample_rate"]) == (1, 2, 0.5)


def test_a_slow_shadow_never_changes_an_answer(repo: Path, tmp_path: Path) -> None:
    from bench.shadow_cost import write_slow

    write_slow(repo, version=3)  # a deep MLP: tens of milliseconds a run
    rows, _ = shifted_rows(30, seed=9)
    (repo / MODEL / "roles.json").write_text(
        json.dumps({"primary": 1, "shadow": 3, "sample_rate": 0})
    )
    for c in _client(repo, tmp_path):
        before = [_predict(c, [row])[0] for row in rows]
        assert _shadow(c, {"version": 3, "sample_rate": 1.0}).status_code == 200
        after = [_predict(c, [row])[0] for row in rows]
        registry = c.app.state.registry  # type: ignore[attr-defined]
        deadline = time.monotonic() + 30
        while (
            registry.get_sample_value(
                "verdict_shadow_rows_total", {"model": MODEL, "version": "3", "outcome": "decided"}
            )
            or 0
        ) + (
            registry.get_sample_value(
                "verdict_shadow_rows_total", {"model": MODEL, "version": "3", "outcome": "dropped"}
            )
            or 0
        ) < len(rows):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    strip = [{k: v for k, v in p.items() if k != "prediction_id"} for p in before]
    assert [{k: v for k, v in p.items() if k != "prediction_id"} for p in after] == strip


def test_a_change_decided_on_roles_changed_elsewhere_is_refused(
    client: TestClient, tmp_path: Path
) -> None:
    assert _shadow(client, {"version": 2, "sample_rate": 0.25}).status_code == 200
    # Another process changes the roles in the shared store between this process's reading
    # of them and its change (this process's readings are stopped to make that moment last).
    shared = client.app.state.shared_roles  # type: ignore[attr-defined]

    async def stale() -> dict[str, int]:
        return {MODEL: 1}  # the revision this process read last

    async def readings_over() -> None:
        async with shared._lock:  # a reading under way holds it; later ones are stopped
            pass

    shared.sync = stale
    client.portal.call(readings_over)  # type: ignore[union-attr]
    store = FeedbackStore(str(tmp_path / "var" / "feedback.sqlite3"))
    assert store.keep_roles(RolesRecord(MODEL, 1, 2, 0.75, changed_at=time.time()), 1) == 2
    store.close()
    r = _shadow(client, {"version": 2, "sample_rate": 0.5})
    assert r.status_code == 409 and r.json()["code"] == "roles_changed", r.text
    # Nothing of the refused change was kept; the other process's roles apply here now.
    roles = client.get(f"/v2/repository/models/{MODEL}/roles", headers=ADMIN).json()
    assert roles["sample_rate"] == 0.75
