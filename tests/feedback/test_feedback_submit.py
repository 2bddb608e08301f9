"""FeedbackService.submit: every answer kind, exactly once, outcomes, delay, failures."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest
from feedback_support import NOW, Clock, Metrics, manifest_of
from prometheus_client import CollectorRegistry

from service.dataplane.feedback import FeedbackService
from service.dataplane.feedback_items import items_of, parse_time, tally
from service.errors import InvalidFeedbackError, StoreUnavailableError
from service.monitoring.ids import PredictionIds
from service.monitoring.store import FeedbackStore

BENIGN, MALIGNANT = 0, 1


def submit(service: FeedbackService, items: Any) -> list[dict[str, Any]]:
    return asyncio.run(service.submit(items))


def results(answers: list[dict[str, Any]]) -> list[str]:
    return [a["result"] for a in answers]


def items_total(registry: CollectorRegistry, result: str, model: str = "bc") -> float:
    return (
        registry.get_sample_value(
            "verdict_feedback_items_total", {"model": model, "result": result}
        )
        or 0.0
    )


def labelled(registry: CollectorRegistry, predicted: str, actual: str) -> float:
    return (
        registry.get_sample_value(
            "verdict_labeled_predictions_total",
            {"model": "bc", "version": "1", "predicted": predicted, "actual": actual},
        )
        or 0.0
    )


def outcome(registry: CollectorRegistry, name: str) -> float:
    return (
        registry.get_sample_value(
            "verdict_outcomes_total", {"model": "bc", "version": "1", "outcome": name}
        )
        or 0.0
    )


def bc_ids(ids: PredictionIds, classes: list[int], issued_at: float = NOW - 60) -> list[str]:
    return ids.issue_many("bc", 1, classes, [0.5] * len(classes), issued_at)


def test_every_answer_kind(
    service: FeedbackService, ids: PredictionIds, registry: CollectorRegistry
) -> None:
    a, b, c = bc_ids(ids, [MALIGNANT, BENIGN, BENIGN])
    head, payload, mac = a.split(".")
    tampered = f"{head}.{payload[:-1]}{'A' if payload[-1] != 'A' else 'B'}.{mac}"
    gone = ids.issue("bc", 7, 0, 0.1, NOW)  # ours, but no such version is served
    answers = submit(
        service,
        [
            {"prediction_id": a, "label": "malignant"},
            {"prediction_id": b, "label": 1},
            {"prediction_id": a, "label": "malignant"},
            {"prediction_id": b, "label": "benign"},
            {"prediction_id": tampered, "label": "malignant"},
            {"prediction_id": gone, "label": "benign"},
            {"prediction_id": c, "label": "cat"},
            {"prediction_id": c, "label": 2},
            {"prediction_id": 12, "label": "benign"},
            {"prediction_id": c},
            {"prediction_id": c, "label": True},
            {"prediction_id": c, "label": "benign", "observed_at": "yesterday"},
            {"prediction_id": c, "label": "benign", "observed_at": NOW + 86_400},
            {"prediction_id": c, "label": "benign", "extra": 1},
            "not an object",
        ],
    )
    assert results(answers) == [
        "accepted",
        "accepted",
        "duplicate",
        "conflict",
        "unknown",
        "unknown",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
    ]
    assert answers[0] == {"prediction_id": a, "result": "accepted"}
    assert answers[8]["prediction_id"] is None
    assert all(answer.get("message") for answer in answers[3:])
    assert tally(answers) == {
        "accepted": 2,
        "duplicate": 1,
        "conflict": 1,
        "unknown": 2,
        "invalid": 9,
    }
    assert items_total(registry, "accepted") == 2
    assert items_total(registry, "duplicate") == 1
    assert items_total(registry, "conflict") == 1
    assert items_total(registry, "unknown") == 1  # the version-7 id names its model
    assert items_total(registry, "unknown", model="") == 1  # the tampered one cannot
    assert items_total(registry, "invalid") == 7
    assert items_total(registry, "invalid", model="") == 2


def test_outcomes_and_confusion_for_a_binary_model(
    service: FeedbackService, ids: PredictionIds, registry: CollectorRegistry
) -> None:
    # predicted (from the id's class index) -> actual: tp, fp, tn, fn, tp
    pairs = [(1, 1), (1, 0), (0, 0), (0, 1), (1, 1)]
    pids = bc_ids(ids, [p for p, _ in pairs])
    answers = submit(
        service,
        [
            {"prediction_id": pid, "label": actual}
            for pid, (_, actual) in zip(pids, pairs, strict=True)
        ],
    )
    assert results(answers) == ["accepted"] * 5
    assert (
        outcome(registry, "tp"),
        outcome(registry, "fp"),
        outcome(registry, "tn"),
        outcome(registry, "fn"),
    ) == (2, 1, 1, 1)
    assert labelled(registry, "malignant", "malignant") == 2
    assert labelled(registry, "malignant", "benign") == 1
    assert labelled(registry, "benign", "benign") == 1
    assert labelled(registry, "benign", "malignant") == 1


def test_multiclass_labels_count_by_name_and_have_no_outcomes(
    service: FeedbackService, ids: PredictionIds, registry: CollectorRegistry
) -> None:
    pids = ids.issue_many("digits", 2, [2, 0], [0.9, 0.8], NOW)
    answers = submit(
        service,
        [{"prediction_id": pids[0], "label": "two"}, {"prediction_id": pids[1], "label": 1}],
    )
    assert results(answers) == ["accepted", "accepted"]
    sample = registry.get_sample_value
    assert (
        sample(
            "verdict_labeled_predictions_total",
            {"model": "digits", "version": "2", "predicted": "two", "actual": "two"},
        )
        == 1
    )
    assert (
        sample(
            "verdict_labeled_predictions_total",
            {"model": "digits", "version": "2", "predicted": "zero", "actual": "one"},
        )
        == 1
    )
    assert (
        sample("verdict_outcomes_total", {"model": "digits", "version": "2", "outcome": "fn"})
        is None
    )


def test_label_delay_uses_observed_at_or_now_and_never_goes_negative(
    service: FeedbackService, ids: PredictionIds, registry: CollectorRegistry
) -> None:
    a, b, c, d = bc_ids(ids, [1, 1, 1, 1], issued_at=NOW - 100)
    submit(
        service,
        [
            {"prediction_id": a, "label": 1},  # now: 100 s
            {"prediction_id": b, "label": 1, "observed_at": NOW - 40},  # 60 s
            {"prediction_id": c, "label": 1, "observed_at": "2027-01-15T08:00:00Z"},
            {"prediction_id": d, "label": 1, "observed_at": NOW - 1000},  # before issue: 0
        ],
    )
    c_delay = parse_time("2027-01-15T08:00:00+00:00")
    assert c_delay is not None
    expected = 100 + 60 + (c_delay - (NOW - 100)) + 0
    total = registry.get_sample_value("verdict_label_delay_seconds_sum", {"model": "bc"})
    assert total == pytest.approx(expected, abs=0.01)
    assert registry.get_sample_value("verdict_label_delay_seconds_count", {"model": "bc"}) == 4
    assert (
        registry.get_sample_value(
            "verdict_label_delay_seconds_bucket", {"model": "bc", "le": "1.0"}
        )
        == 1
    )


def test_conflicts_leave_counters_unchanged_and_are_audited(
    service: FeedbackService,
    ids: PredictionIds,
    registry: CollectorRegistry,
    store: FeedbackStore,
) -> None:
    [pid] = bc_ids(ids, [1])
    submit(service, [{"prediction_id": pid, "label": "malignant"}])
    before = (labelled(registry, "malignant", "malignant"), outcome(registry, "tp"))
    answers = submit(service, [{"prediction_id": pid, "label": "benign"}] * 2)
    assert results(answers) == ["conflict", "conflict"]
    assert (labelled(registry, "malignant", "malignant"), outcome(registry, "tp")) == before
    assert labelled(registry, "malignant", "benign") == 0
    assert outcome(registry, "fp") == 0
    assert store.label_of(pid) == MALIGNANT
    assert [(kept, sent) for kept, sent, _ in store.conflicts(pid)] == [(1, 0), (1, 0)]


def test_exactly_once_across_a_restart(db_path: str, ids: PredictionIds) -> None:
    pids = bc_ids(ids, [1, 0])
    first_registry = CollectorRegistry()
    first = FeedbackService(
        FeedbackStore(db_path), ids, manifest_of, Metrics(first_registry), clock=Clock()
    )
    asyncio.run(first.open())
    submit(first, [{"prediction_id": pids[0], "label": 1}])
    asyncio.run(first.close())

    # A new process: fresh counters, same file.
    registry = CollectorRegistry()
    second = FeedbackService(
        FeedbackStore(db_path), ids, manifest_of, Metrics(registry), clock=Clock()
    )
    answers = submit(
        second, [{"prediction_id": pids[0], "label": 1}, {"prediction_id": pids[1], "label": 0}]
    )
    assert results(answers) == ["duplicate", "accepted"]
    assert outcome(registry, "tp") == 0  # counted by the first process, not again
    assert outcome(registry, "tn") == 1
    quality = asyncio.run(second.quality("bc"))
    all_time = quality["versions"][0]["windows"]["all_time"]
    assert (all_time["labelled"], all_time["tp"], all_time["tn"]) == (2, 1, 1)


def test_a_store_failure_acknowledges_nothing(
    db_path: str, ids: PredictionIds, registry: CollectorRegistry, metrics: Metrics
) -> None:
    store = FeedbackStore(db_path, busy_timeout_s=0.05)
    store.migrate()
    service = FeedbackService(store, ids, manifest_of, metrics, clock=Clock())
    pids = bc_ids(ids, [1, 0])
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailableError) as failure:
        submit(service, [{"prediction_id": pid, "label": 1} for pid in pids])
    assert failure.value.status_code == 503 and failure.value.code == "store_unavailable"
    holder.execute("ROLLBACK")
    holder.close()
    assert items_total(registry, "accepted") == 0
    assert outcome(registry, "tp") == 0
    assert [store.label_of(pid) for pid in pids] == [None, None]
    # The client retries: now it goes through, once.
    answers = submit(service, [{"prediction_id": pid, "label": 1} for pid in pids])
    assert results(answers) == ["accepted", "accepted"]
    assert items_total(registry, "accepted") == 2


def test_the_same_id_twice_in_one_request(service: FeedbackService, ids: PredictionIds) -> None:
    [pid] = bc_ids(ids, [1])
    answers = submit(
        service,
        [
            {"prediction_id": pid, "label": 1},
            {"prediction_id": pid, "label": "malignant"},
            {"prediction_id": pid, "label": 0},
        ],
    )
    assert results(answers) == ["accepted", "duplicate", "conflict"]


def test_unusable_bodies_are_request_errors(service: FeedbackService) -> None:
    with pytest.raises(InvalidFeedbackError) as not_list:
        submit(service, {"prediction_id": "x", "label": 1})
    assert not_list.value.status_code == 422
    with pytest.raises(InvalidFeedbackError):
        submit(service, [])
    service.max_items = 3
    with pytest.raises(InvalidFeedbackError) as too_many:
        submit(service, [{}] * 4)
    assert (too_many.value.status_code, too_many.value.code) == (422, "too_many_items")


def test_items_of_a_body_and_parse_time() -> None:
    assert items_of({"items": [1]}) == [1]
    assert items_of([1, 2]) == [1, 2]
    for body in ({"items": 3}, {"item": []}, "text", 3):
        with pytest.raises(InvalidFeedbackError) as refused:
            items_of(body)
        assert (refused.value.status_code, refused.value.code) == (422, "invalid_feedback")
    assert parse_time("1970-01-01T00:01:00Z") == 60.0
    assert parse_time("1970-01-01T02:01:00+02:00") == 60.0
    assert parse_time(60) == 60.0
    assert parse_time(60.5) == 60.5
    bad: Any
    for bad in ("1970-01-01T00:01:00", "soon", True, None, -1, float("nan"), float("inf"), []):
        assert parse_time(bad) is None


def test_an_accepted_label_is_committed_when_the_answer_comes(
    service: FeedbackService, ids: PredictionIds, db_path: str
) -> None:
    [pid] = bc_ids(ids, [1])
    assert results(submit(service, [{"prediction_id": pid, "label": 0}])) == ["accepted"]
    other = sqlite3.connect(db_path)  # another process's view of the file
    row = other.execute("SELECT actual FROM labels WHERE prediction_id = ?", (pid,)).fetchone()
    other.close()
    assert row == (BENIGN,)


def test_items_that_need_no_store_are_answered_while_it_is_down(
    db_path: str, ids: PredictionIds, metrics: Metrics, registry: CollectorRegistry
) -> None:
    store = FeedbackStore(db_path, busy_timeout_s=0.05)
    store.migrate()
    service = FeedbackService(store, ids, manifest_of, metrics, clock=Clock())
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        answers = submit(service, [{"prediction_id": "forged", "label": 1}])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert results(answers) == ["unknown"]
    assert items_total(registry, "unknown", model="") == 1
