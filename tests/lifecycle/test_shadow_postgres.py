"""Shadow evaluation on the shared PostgreSQL store: one replica serves and shadows, another
receives the labels and scores the shadow's decisions all the same; promotions are kept in
the shared database; and the store methods answer as the SQLite file does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.monitoring.decisions import PromotionRecord, RolesRecord, ShadowDecision
from service.monitoring.postgres import PostgresStore
from service.monitoring.records import LabelRecord
from service.monitoring.store import FeedbackStore
from tests.conftest import make_settings, wait_ready
from tests.lifecycle.shadow_support import (
    ADMIN,
    ADMIN_KEY,
    MODEL,
    label_shadowed_rows,
    shifted_rows,
    write_pair,
)
from tests.pgserver import PostgresServer, pg, pg_server  # noqa: F401  (fixtures)


@pytest.fixture
def replicas(pg: PostgresServer, tmp_path: Path) -> Iterator[list[TestClient]]:  # noqa: F811
    from service.http.app import create_app

    repo = write_pair(tmp_path / "models")
    with ExitStack() as stack:
        clients = []
        for i in range(2):
            settings = make_settings(
                repo,
                tmp_path / f"r{i}",
                admin_api_key=ADMIN_KEY,
                shadows=f"{MODEL}=2:1.0",
                promotion_min_labels=50,
            ).model_copy(update={"feedback_url": SecretStr(pg.url)})
            client = stack.enter_context(TestClient(create_app(settings)))
            wait_ready(client)
            clients.append(client)
        yield clients


def test_a_label_sent_to_another_replica_scores_the_shadow_decision(
    replicas: list[TestClient],
) -> None:
    serving, labelling = replicas
    rows, truth = shifted_rows(80, seed=7)
    label_shadowed_rows(serving, labelling, rows, truth)
    registry = labelling.app.state.registry  # type: ignore[attr-defined]
    for role, version in (("primary", "1"), ("shadow", "2")):
        counted = sum(
            registry.get_sample_value(
                "verdict_shadow_outcomes_total",
                {"model": MODEL, "version": version, "role": role, "outcome": o},
            )
            or 0.0
            for o in ("tp", "fp", "tn", "fn")
        )
        assert counted == len(rows), role

    # Every replica reads the same comparison, and a promotion on one is kept for all.
    views = [c.get(f"/models/{MODEL}/shadow").json()["comparison"] for c in replicas]
    assert views[0] == views[1] and views[0]["paired_labels"] == len(rows)
    r = labelling.post(f"/v2/repository/models/{MODEL}/promote", json={}, headers=ADMIN)
    assert r.status_code == 200, r.text
    history = serving.get(f"/v2/repository/models/{MODEL}/promotions", headers=ADMIN).json()
    assert [d["outcome"] for d in history["decisions"]] == ["promoted"]


def test_both_stores_answer_the_shadow_methods_alike(
    pg: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    stores = [PostgresStore(pg.url), FeedbackStore(str(tmp_path / "f.sqlite3"))]
    answers = []
    for store in stores:
        store.migrate()
        store.record(
            [
                LabelRecord("a", "m", 1, 1, 1, 0.9, 1.0, 2.0, 3.0),
                LabelRecord("b", "m", 1, 0, 1, 0.1, 1.0, 2.0, 3.0),
                LabelRecord("c", "m", 1, 0, 0, 0.1, 1.0, 2.0, 3.0),
            ]
        )
        decisions = [
            ShadowDecision("a", "m", 2, 1, 0.8, 4.0),
            ShadowDecision("b", "m", 2, 1, 0.7, 4.0),
            ShadowDecision("z", "m", 2, 0, 0.2, 4.0),  # not labelled (yet)
        ]
        added = store.record_shadow_decisions(decisions)
        again = store.record_shadow_decisions(decisions[:1])  # a repeat is ignored
        first = store.record_promotion(PromotionRecord("m", 1, 2, 5.0, "refused", "x", "{}"))
        second = store.record_promotion(PromotionRecord("m", 1, 2, 6.0, "promoted", "y", "{}"))
        answers.append(
            (
                added,
                again,
                sorted(store.shadow_decisions_of(["a", "b", "c"]), key=lambda d: d.prediction_id),
                sorted(
                    store.paired_cells("m", 1, 2), key=lambda c: (c.primary_predicted, c.actual)
                ),
                store.shadow_decided("m", 2),
                [(p.outcome, p.requested_by, p.id) for p in store.promotions("m")],
                second > first,
            )
        )
        store.close()
    assert answers[0][:5] == answers[1][:5]
    assert answers[0][0] == 3 and answers[0][1] == 0
    assert [c.count for c in answers[0][3]] == [1, 1]  # (0 -> 1, actual 1) and (1 -> 1, 1)
    assert (
        [o for o, _, _ in answers[0][5]]
        == ["promoted", "refused"]
        == [o for o, _, _ in answers[1][5]]
    )
    assert answers[0][6] and answers[1][6]


def test_both_stores_keep_roles_by_compare_and_set(
    pg: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    for store in (PostgresStore(pg.url), FeedbackStore(str(tmp_path / "f.sqlite3"))):
        store.migrate()
        assert store.stored_roles() == []
        first = RolesRecord("m", 1, 2, 0.25, changed_at=5.0)
        assert store.keep_roles(first, None) == 1
        assert store.keep_roles(first, None) is None  # another process stored some first
        promoted = RolesRecord("m", 2, 1, 0.25, changed_at=6.0)
        assert store.keep_roles(promoted, 1) == 2
        assert store.keep_roles(first, 1) is None  # decided on roles that changed since
        assert store.keep_roles(RolesRecord("n", None, None, 0.1, changed_at=7.0), None) == 1
        assert store.stored_roles() == [
            RolesRecord("m", 2, 1, 0.25, 2, 6.0),
            RolesRecord("n", None, None, 0.1, 1, 7.0),
        ]
        assert store.clear_roles("m") and not store.clear_roles("m")
        assert [r.model for r in store.stored_roles()] == ["n"]
        store.close()
