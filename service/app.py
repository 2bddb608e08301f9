"""The app factory: settings, metrics, repository and routes, built in `create_app`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.drift import DriftMonitor
from service.errors import VerdictError, error_body
from service.feedback import FeedbackService
from service.hotpath import FrontDoor, Receive, Scope, Send
from service.ids import PredictionIds
from service.keys import load_prediction_key
from service.metrics import Metrics, mark_process_dead, multiproc_dir
from service.repository import Repository
from service.routes import admin, card, feedback, predict, v2
from service.settings import Settings
from service.store import FeedbackStore, StoreUnavailableError

log = logging.getLogger(__name__)

# Routers in the order they are mounted; add a module with a `router` here.
ROUTERS = [predict.router, v2.router, admin.router, feedback.router, card.router]
HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    415: "unsupported_media_type",
}
DESCRIPTION = """verdict serves classifiers exported to ONNX: `POST /predict` (simple API),
the Open Inference Protocol v2 (`/v2/...`, Triton/KServe clients work unchanged, including
the binary tensor data extension), the repository extension (admin key), and `/metrics`.
Every error answers `{"error": "<message>", "code": "<stable_code>"}`."""

# With several workers, each hands its buffered metric updates over this often (seconds).
METRICS_FLUSH_S = 1.0


def error_response(
    status: int, message: str, code: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The one error shape; never shows a filesystem path of the server."""
    return Response(
        error_body(message, code),
        status,
        headers=headers,
        media_type="application/json",
    )


class VerdictApp(FastAPI):
    """FastAPI with the front door (`service.hotpath`) in front of every HTTP request."""

    front: FrontDoor | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and scope["type"] == "http":
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


async def _flush_forever(metrics: Metrics, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            metrics.flush()
        except Exception:  # keep flushing: one bad write must not stop the others for good
            log.exception("flushing buffered metrics failed")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load models in the background (liveness answers at once), poll, and drain at the end."""
    state = app.state
    repo: Repository = state.repository
    fb: FeedbackService = state.feedback
    try:
        await fb.open()
    except StoreUnavailableError as exc:  # feedback answers 503 until the store works
        log.warning("feedback store unavailable at start: %s", exc.message)
    tasks: list[asyncio.Task[None]] = []
    if state.settings.listen_when_ready:
        await repo.start()  # uvicorn listens only after this: no traffic before the models
    else:
        tasks.append(asyncio.create_task(repo.start()))
    if state.settings.poll_interval_s > 0:
        tasks.append(asyncio.create_task(repo.poll_forever(state.settings.poll_interval_s)))
    if state.multiproc_dir:
        # Another worker may answer the scrape: hand buffered updates over every second.
        tasks.append(asyncio.create_task(_flush_forever(state.metrics, METRICS_FLUSH_S)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await repo.close()
            state.drift.flush()
            state.metrics.flush()
        except Exception:  # the store below is closed whatever happened here
            log.exception("draining the models at shutdown failed")
        try:
            await fb.close()  # commits are per request; this closes the file cleanly
        except Exception:
            log.exception("closing the feedback store at shutdown failed")
        mark_process_dead(state.multiproc_dir)


def _install_error_handlers(app: FastAPI) -> None:
    async def verdict_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, VerdictError)
        if exc.status_code >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc.message)
        return error_response(exc.status_code, exc.message, exc.code, exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg')}")
        return error_response(422, "; ".join(parts) or "invalid request", "validation_error")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, str(exc.detail), code, exc.headers)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", "internal_error")

    app.add_exception_handler(VerdictError, verdict_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _no_telemetry() -> dict[str, Any]:
    """Newer FastAPI checks OpenTelemetry providers on every request; we export Prometheus
    metrics instead, so switch that off where the option exists."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _wire_feedback_and_drift(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Ground truth (the SQLite store) and drift counting hang off the repository's hooks."""
    state = app.state
    repo: Repository = state.repository
    state.feedback = FeedbackService(
        FeedbackStore(settings.feedback_db, busy_timeout_s=settings.feedback_busy_timeout_s),
        state.ids,
        repo.manifest,
        metrics,
        max_items=settings.feedback_max_items,
        versions_of=repo.versions,
        predictions_issued=repo.predictions_issued,
    )
    # Counts reach the counters at most once a second, and before every /metrics answer.
    drift = DriftMonitor(
        metrics,
        max_features=settings.monitored_features_max,
        flush_interval_s=1.0,
        max_rows_per_s=settings.drift_max_rows_per_s,
    )
    state.drift = drift

    def on_load(mv: Any) -> None:
        drift.register(mv.name, mv.version, mv.manifest)

    def on_unload(mv: Any) -> None:
        drift.unregister(mv.name, mv.version)

    repo.add_listener(on_load=on_load, on_unload=on_unload)

    def observe(mv: Any, x: Any, class_index: Any, score: Any) -> None:
        drift.observe(mv.name, mv.version, x, score if mv.binary else None)

    state.prediction_observers.append(observe)
    state.before_metrics.append(drift.flush)


def create_app(
    settings: Settings | None = None, registry: CollectorRegistry | None = None
) -> FastAPI:
    """A new app with its own settings, metrics registry, repository and id signer."""
    settings = settings or Settings()
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    metrics = Metrics(registry)
    app = VerdictApp(
        title="verdict",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        **_no_telemetry(),
    )
    state = app.state
    state.settings = settings
    state.registry = registry
    state.metrics = metrics
    state.multiproc_dir = multiproc_dir(settings.metrics_multiproc_dir)
    state.repository = Repository(settings, metrics)
    state.ids = PredictionIds(load_prediction_key(settings))
    state.api_keys = [k.get_secret_value() for k in settings.api_keys if k.get_secret_value()]
    state.prediction_observers = []
    state.before_metrics = [metrics.flush]  # also flushed by any collection of `registry`
    _wire_feedback_and_drift(app, settings, metrics)
    for router in ROUTERS:
        app.include_router(router)
    _install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    # Request ids, admission, HTTP metrics and the predict routes; the rest goes on to FastAPI.
    app.front = FrontDoor(super(VerdictApp, app).__call__, state)
    return app
