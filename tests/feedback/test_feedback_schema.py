"""Schemathesis against the feedback routes in-process: no 5xx, answers match the schema."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from feedback_support import KEY, Metrics, feedback_app, manifest_of
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from schemathesis.core.result import Ok

from service.dataplane.feedback import FeedbackService
from service.monitoring.ids import PredictionIds
from service.monitoring.store import FeedbackStore


def test_feedback_api_conforms_to_its_schema(tmp_path: Path) -> None:
    store = FeedbackStore(str(tmp_path / "feedback.db"))
    service = FeedbackService(
        store,
        PredictionIds(KEY),
        manifest_of,
        Metrics(CollectorRegistry()),
        versions_of=lambda model: [1] if model == "bc" else [],
    )
    app = feedback_app(service, tmp_path)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = []
    feedback_routes = {"POST /feedback", "GET /models/{name}/quality"}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        if result.ok().label in feedback_routes:
            operations.append(result.ok())
    assert {op.label for op in operations} == {
        "POST /feedback",
        "GET /models/{name}/quality",
    }
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate()

        check()
    store.close()
