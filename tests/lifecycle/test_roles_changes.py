"""Admin role changes against the shared store: a change decided on roles that another process
changed before it was written is refused (409 `roles_changed`) and the other change stands;
bad admin input is refused with its 4xx before the store is asked, so even while the store
cannot answer."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings, wait_ready
from tests.lifecycle.shadow_support import (
    ADMIN,
    ADMIN_KEY,
    MODEL,
    label_shadowed_rows,
    shifted_rows,
    write_pair,
)

PAIRED_ROWS = 40


def _client(repo: Path, tmp: Path) -> Iterator[TestClient]:
    from service.http.app import create_app

    app = create_app(make_settings(repo, tmp, admin_api_key=ADMIN_KEY))
    with TestClient(app) as c:
        wait_ready(c)
        yield c


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return write_pair(tmp_path / "models")


@pytest.fixture
def client(repo: Path, tmp_path: Path) -> Iterator[TestClient]:
    yield from _client(repo, tmp_path)


def _shadow(client: TestClient, body: Any) -> Any:
    return client.post(f"/v2/repository/models/{MODEL}/shadow", json=body, headers=ADMIN)


def _roles(client: TestClient) -> tuple[int, int | None, float]:
    r = client.get(f"/v2/repository/models/{MODEL}/roles", headers=ADMIN).json()
    return r["primary"], r["shadow"], r["sample_rate"]


def _label_paired_rows(client: TestClient) -> None:
    """Rows decided by both versions, and their labels: enough for a promotion at
    min_labels=PAIRED_ROWS."""
    label_shadowed_rows(client, client, *shifted_rows(PAIRED_ROWS, seed=7))


@pytest.fixture
def two_processes(repo: Path, tmp_path: Path) -> Iterator[tuple[TestClient, TestClient]]:
    """Two processes of one server: two apps on one SQLite file and one model folder."""
    for here in _client(repo, tmp_path):
        for there in _client(repo, tmp_path):
            yield here, there


def _change_elsewhere_after_the_decision(here: TestClient, there: TestClient) -> None:
    """Once `here` has decided and kept a promotion, and before it writes its roles, `there`
    stops the shadow, and `here`'s check of the stored roles applies that (the revision it
    read last is then the new one)."""
    lifecycle = here.app.state.dataplane.lifecycle  # type: ignore[attr-defined]
    run = lifecycle.run

    async def hooked(fn: Any, *args: Any) -> Any:
        result = await run(fn, *args)
        if fn.__name__ == "record_promotion" and args[0].outcome == "promoted":
            r = await asyncio.to_thread(_shadow, there, {"version": None})
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 10
            while lifecycle.repository.roles(MODEL).shadow is not None:
                assert time.monotonic() < deadline, "the change was never followed"
                await asyncio.sleep(0.02)
        return result

    lifecycle.run = hooked


def test_a_promotion_decided_before_another_process_changed_the_roles_is_refused(
    two_processes: tuple[TestClient, TestClient], tmp_path: Path
) -> None:
    here, there = two_processes
    assert _shadow(here, {"version": 2, "sample_rate": 1.0}).status_code == 200
    _label_paired_rows(here)
    _change_elsewhere_after_the_decision(here, there)
    r = here.post(
        f"/v2/repository/models/{MODEL}/promote", json={"min_labels": PAIRED_ROWS}, headers=ADMIN
    )
    assert r.status_code == 409 and r.json()["code"] == "roles_changed", r.text
    # The other process's change stands, in the store and on both processes; the decision is
    # kept with the failure beside it.
    db = sqlite3.connect(tmp_path / "var" / "feedback.sqlite3")
    assert db.execute("SELECT primary_version, shadow_version, revision FROM roles").fetchall() == [
        (1, None, 2)
    ]
    db.close()
    assert _roles(here) == _roles(there) == (1, None, 1.0)
    history = here.get(f"/v2/repository/models/{MODEL}/promotions", headers=ADMIN).json()
    assert [d["outcome"] for d in history["decisions"]] == ["failed", "promoted"]


def test_bad_admin_input_gets_its_4xx_while_the_store_cannot_answer(
    client: TestClient, tmp_path: Path
) -> None:
    assert _shadow(client, {"version": 2, "sample_rate": 0.5}).status_code == 200
    # The store's file becomes unreachable: its folder is a file now.
    store = client.app.state.dataplane.feedback.store  # type: ignore[attr-defined]
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    store.close()
    store.path = str(blocker / "feedback.sqlite3")
    # A good call needs the store: 503.
    r = _shadow(client, {"version": 2, "sample_rate": 0.25})
    assert r.status_code == 503 and r.json()["code"] == "store_unavailable", r.text
    # Bad input does not: its own 4xx.
    admin = f"/v2/repository/models/{MODEL}"
    for path, body, status, code in [
        (f"{admin}/shadow", {"version": "x"}, 400, "bad_request"),
        (f"{admin}/shadow", {"version": 2, "sample_rate": 2}, 400, "bad_request"),
        (f"{admin}/shadow", {"version": 9}, 404, "version_not_found"),
        ("/v2/repository/models/nope/shadow", {"version": 2}, 404, "model_not_found"),
        (f"{admin}/promote", {"confidence": 2}, 400, "bad_request"),
        (f"{admin}/promote", {"min_labels": 1}, 400, "bad_request"),
        ("/v2/repository/models/nope/promote", {}, 404, "model_not_found"),
        (f"{admin}/rollback", {"who": "me"}, 400, "bad_request"),
        (f"{admin}/rollback", {"requested_by": 3}, 400, "bad_request"),
        ("/v2/repository/models/nope/rollback", None, 404, "model_not_found"),
    ]:
        r = client.post(path, json=body, headers=ADMIN)
        assert (r.status_code, r.json()["code"]) == (status, code), (path, body, r.text)
    assert _roles(client) == (1, 2, 0.5)  # the roles in force stay
