"""Fixtures for the feedback tests: a real SQLite file, a real Prometheus registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from feedback_support import KEY, Clock, Metrics, manifest_of
from prometheus_client import CollectorRegistry

from service.dataplane.feedback import FeedbackService
from service.monitoring.ids import PredictionIds
from service.monitoring.store import FeedbackStore
from tests.pgserver import pg, pg_server  # noqa: F401  (fixtures)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


@pytest.fixture
def ids() -> PredictionIds:
    return PredictionIds(KEY)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "feedback" / "feedback.db")


@pytest.fixture
def store(db_path: str) -> Iterator[FeedbackStore]:
    s = FeedbackStore(db_path)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(
    store: FeedbackStore, ids: PredictionIds, metrics: Metrics, clock: Clock
) -> FeedbackService:
    return FeedbackService(store, ids, manifest_of, metrics, clock=clock)
