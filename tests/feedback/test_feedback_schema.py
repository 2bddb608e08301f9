"""Schemathesis against the feedback routes in-process: no 5xx, answers match the schema."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from fastapi import FastAPI
from feedback_support import KEY, Metrics, manifest_of
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from schemathesis.core.result import Ok

from service.dataplane.feedback import FeedbackService
from service.monitoring.ids import PredictionIds
from service.http.routes.feedback import router
from service.settings import Settings
from service.monitoring.store import FeedbackStore


def test_feedback_api_conforms_to_its_schema(tmp_path: Path) -> None:
    store = FeedbackStore(str(tmp_path / "feedback.db"))
    app = FastAPI()
    app.state.settings = Settings(feedback_max_items=1000)
    app.state.api_keys = []
    app.include_router(router)
    app.state.feedback = FeedbackService(
        store,
        PredictionIds(KEY),
        manifest_of,
        Metrics(CollectorRegistry()),
        versions_of=lambda model: [1] if model == "bc" else [],
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
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
