"""The app factory: settings, metrics, repository and routes, built in `create_app`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from time import perf_counter
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.codecs import encode_json
from service.drift import DriftMonitor
from service.errors import VerdictError, scrub_paths
from service.feedback import FeedbackService
from service.ids import PredictionIds
from service.keys import load_prediction_key
from service.metrics import Metrics, mark_process_dead, multiproc_dir
from service.middleware import AdmissionMiddleware, RequestContextMiddleware
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

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_response(
    status: int, message: str, code: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The one error shape; never shows a filesystem path of the server."""
    return Response(
        encode_json({"error": scrub_paths(message), "code": code}),
        status,
        headers=headers,
        media_type="application/json",
    )


class HttpMetricsMiddleware:
    """Times every HTTP request by route template (never the raw path), method and code."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.histogram = metrics.http_duration
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            key = (template, scope["method"], status)
            child = self._children.get(key)
            if child is None:
                child = self.histogram.labels(template, scope["method"], str(status))
                self._children[key] = child
            child.observe(perf_counter() - start)


Handler = Callable[[Request, list[str]], Awaitable[Response]]


class FastPathMiddleware:
    """POST /predict and v2 infer skip the framework's routing and dependency solving.

    They are the product's hot path; the routes stay registered (OpenAPI, and the fallback for
    anything this does not match exactly). Errors map to the same error body.
    """

    def __init__(self, app: ASGIApp, routes: list[Any]) -> None:
        self.app = app
        by_path = {getattr(r, "path", None): r for r in routes}
        self.predict_route = by_path["/predict"]
        self.infer_route = by_path["/v2/models/{model}/infer"]
        self.infer_version_route = by_path["/v2/models/{model}/versions/{version}/infer"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == "/predict":
            scope["route"] = self.predict_route
            call: Callable[[Request], Awaitable[Response]] = predict.predict
        elif path.startswith("/v2/models/") and path.endswith("/infer"):
            parts = path.split("/")
            if len(parts) == 5 and parts[3]:
                model, version = parts[3], None
                scope["route"] = self.infer_route
            elif len(parts) == 7 and parts[4] == "versions" and parts[3] and parts[5]:
                model, version = parts[3], parts[5]
                scope["route"] = self.infer_version_route
            else:
                await self.app(scope, receive, send)
                return

            async def call(request: Request) -> Response:
                return await v2.infer(request, model, version)

        else:
            await self.app(scope, receive, send)
            return
        try:
            response = await call(Request(scope, receive))
        except VerdictError as exc:
            if exc.status_code >= 500:
                log.warning("POST %s: %s", path, exc.message)
            response = error_response(exc.status_code, exc.message, exc.code, exc.headers)
        await response(scope, receive, send)


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
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(repo.start())]
    if state.settings.poll_interval_s > 0:
        tasks.append(asyncio.create_task(repo.poll_forever(state.settings.poll_interval_s)))
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
        metrics, max_features=settings.monitored_features_max, flush_interval_s=1.0
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
    app = FastAPI(
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
    state.before_metrics = []
    _wire_feedback_and_drift(app, settings, metrics)
    for router in ROUTERS:
        app.include_router(router)
    _install_error_handlers(app)
    app.add_middleware(FastPathMiddleware, routes=[r for rt in ROUTERS for r in rt.routes])
    app.add_middleware(AdmissionMiddleware, limit=settings.max_inflight_requests)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestContextMiddleware, access_log=settings.access_log)
    return app
