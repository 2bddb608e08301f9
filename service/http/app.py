"""The app factory: `create_app(settings)` builds the whole service, and nothing happens at
import time. The route table says, for every route, what the edge checks and who answers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.dataplane import Access, DataPlane, FeedbackService, Inference, Lifecycle, Metadata
from service.dataplane.access import Need
from service.dataplane.lifecycle import key_identity
from service.dataplane.roles import SharedRoles
from service.dataplane.shadow import ShadowRunner
from service.errors import StoreUnavailableError, VerdictError, error_body
from service.http.asgi import asgi_request
from service.http.docs import install_docs, with_served_examples
from service.http.edge import INFER_TYPES, JSON_TYPES, Edge, Route
from service.http.rest import Rest
from service.http.routes import admin, cards, feedback, v2
from service.http.schemas import edge_paths
from service.models.repository import Repository
from service.monitoring.capture import Capture
from service.monitoring.drift import SERVER_MAX_ROWS_PER_S, DriftMonitor
from service.monitoring.ids import PredictionIds
from service.monitoring.keys import load_prediction_key
from service.monitoring.metrics import Metrics, mark_process_dead, multiproc_dir
from service.monitoring.stores import LabelStore, open_store
from service.monitoring.tracing import Tracing, provider_from_env
from service.settings import Settings

log = logging.getLogger(__name__)

ROUTERS = [v2.router, admin.router, feedback.router, cards.router]
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
FEEDBACK_MAX_ITEMS = 1000
POST, GET, BOTH = frozenset({"POST"}), frozenset({"GET"}), frozenset({"GET", "POST"})
V2_MODEL = "/v2/models/{model}"
V2_VERSION = "/v2/models/{model}/versions/{version}"


def route_table(rest: Rest) -> list[Route]:
    """Every route with a key, a body type, or an answer of the edge's own; the framework
    answers the rest (and these where `handler` is None)."""
    return [
        Route("/predict", POST, Need.API_KEY, JSON_TYPES, rest.predict),
        Route(V2_MODEL + "/infer", POST, Need.API_KEY, INFER_TYPES, rest.infer),
        Route(V2_VERSION + "/infer", POST, Need.API_KEY, INFER_TYPES, rest.infer),
        Route("/feedback", POST, Need.API_KEY, JSON_TYPES),
        Route("/v2/repository/index", BOTH, Need.ADMIN_KEY),
        Route("/v2/repository/models/{model}/load", POST, Need.ADMIN_KEY),
        Route("/v2/repository/models/{model}/unload", POST, Need.ADMIN_KEY),
        Route("/v2/repository/models/{model}/roles", GET, Need.ADMIN_KEY),
        Route("/v2/repository/models/{model}/shadow", POST, Need.ADMIN_KEY, JSON_TYPES),
        Route("/v2/repository/models/{model}/promote", POST, Need.ADMIN_KEY),
        Route("/v2/repository/models/{model}/rollback", POST, Need.ADMIN_KEY),
        Route("/v2/repository/models/{model}/promotions", GET, Need.ADMIN_KEY),
        Route("/metrics", GET, Need.METRICS_KEY),
        Route("/v2", GET),
        Route("/v2/health/live", GET),
        Route("/v2/health/ready", GET),
        Route(V2_MODEL, GET),
        Route(V2_VERSION, GET),
        Route(V2_MODEL + "/ready", GET),
        Route(V2_VERSION + "/ready", GET),
        Route(V2_MODEL + "/config", GET),
        Route(V2_VERSION + "/config", GET),
        Route("/models/{name}/quality", GET),
        Route("/models/{name}/shadow", GET),
        Route("/models/{name}/card", GET),
        Route("/models/{name}/card/assets/{file}", GET),
        Route("/docs", GET),
        Route("/docs/oauth2-redirect", GET),
        Route("/docs/assets/{file}", GET),
        Route("/redoc", GET),
        Route("/openapi.json", GET),
    ]


class VerdictApp(FastAPI):
    """FastAPI, with the edge (`service.http.edge`) in front of every HTTP request."""

    edge: Edge

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await asgi_request(self.edge, scope, receive, send)
        else:  # lifespan
            await super().__call__(scope, receive, send)


async def _flush_forever(metrics: Metrics, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            metrics.flush()
        except Exception:  # keep flushing: one bad write must not stop the others for good
            log.exception("flushing buffered metrics failed")


async def _start_models(repo: Repository, shared_roles: SharedRoles) -> None:
    """Load the models with the roles the store keeps for the deployment, so that a process
    (re)starting in a running fleet serves the same primaries as the others from its first
    request; with the store unavailable, roles.json and VERDICT_SHADOWS apply until it answers.
    """
    try:
        await shared_roles.sync()
    except StoreUnavailableError as exc:
        log.warning(
            "the roles kept in the feedback store could not be read at start (%s); the roles "
            "files and VERDICT_SHADOWS apply until it answers",
            exc.message,
        )
    await repo.start()


@asynccontextmanager
async def lifespan(app: FastAPI, load_first: bool = False) -> AsyncIterator[None]:
    """Open the store, load the models (in the background: liveness answers at once; before
    anything else with `load_first`), follow the stored roles, poll; at the end drain the
    models and close the store."""
    state = app.state
    repo: Repository = state.repository
    fb: FeedbackService = state.feedback
    try:
        await fb.open()
    except StoreUnavailableError as exc:  # feedback answers 503 until the store works
        log.warning("feedback store unavailable at start: %s", exc.message)
    capture: Capture | None = state.capture
    if capture is not None:
        capture.start()
    tasks: list[asyncio.Task[None]] = []
    if load_first:
        await _start_models(repo, state.shared_roles)
    else:
        tasks.append(asyncio.create_task(_start_models(repo, state.shared_roles)))
    tasks.append(asyncio.create_task(state.shared_roles.follow()))
    if state.settings.poll_interval_s > 0:
        tasks.append(asyncio.create_task(repo.poll_forever(state.settings.poll_interval_s)))
    if state.metrics.multiproc:
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
            if state.dataplane.inference.shadows is not None:
                await state.dataplane.inference.shadows.drain()
            await repo.close()
            state.drift.flush()
            state.metrics.flush()
        except Exception:  # the store below is closed whatever happened here
            log.exception("draining the models at shutdown failed")
        if capture is not None:  # store what is queued, off the loop, before the store closes
            await asyncio.to_thread(capture.stop)
        try:
            await fb.close()  # commits are per request; this closes the file cleanly
        except Exception:
            log.exception("closing the feedback store at shutdown failed")
        if state.tracing is not None:  # export the last spans (a network call: off the loop)
            await asyncio.to_thread(state.tracing.shutdown)
        mark_process_dead(state.metrics.multiproc)


def _install_error_handlers(app: VerdictApp) -> None:
    """The framework's errors go through the edge's one error mapping."""

    def answer(exc: Exception, request: Request) -> Response:
        edge_answer = app.edge.error_answer(exc)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in edge_answer.headers}
        return Response(edge_answer.body, edge_answer.status, headers, "application/json")

    async def verdict_error(request: Request, exc: Exception) -> Response:
        return answer(exc, request)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg')}")
        body = error_body("; ".join(parts) or "invalid request", "validation_error")
        return Response(body, 422, media_type="application/json")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return Response(
            error_body(str(exc.detail), code), exc.status_code, exc.headers, "application/json"
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        return answer(exc, request)

    app.add_exception_handler(VerdictError, verdict_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _no_telemetry() -> dict[str, Any]:
    """Newer FastAPI checks OpenTelemetry providers on every request; switch that off where
    the option exists: verdict's edge makes every request's span itself when traces are on
    (`service.monitoring.tracing`), whichever part answers it."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _openapi(app: VerdictApp) -> dict[str, Any]:
    """The framework's OpenAPI document, with the routes the edge answers itself added, and
    examples for the models served now."""
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        spec["paths"] = {**edge_paths(), **spec["paths"]}
        app.openapi_schema = spec
    return with_served_examples(app.openapi_schema, app.state.repository)


def _capture(
    settings: Settings,
    store: LabelStore,
    metrics: Metrics,
    repository: Repository,
    inference: Inference,
) -> Capture | None:
    """Input capture when some model has a rate (docs/lifecycle.md); None leaves the predict
    path with one attribute check."""
    rates = {model: rate for model, rate in settings.capture_rates.items() if rate > 0}
    if not rates:
        return None
    capture = Capture(
        store,
        metrics.capture_rows,
        rates,
        settings.capture_drop(),
        max_rows_per_s=settings.capture_max_rows_per_s,
        max_rows=settings.capture_max_rows,
        retention_days=settings.capture_retention_days,
    )
    repository.add_listener(
        on_load=lambda mv: capture.register(mv.name, mv.version, mv.manifest),
        on_unload=lambda mv: capture.unregister(mv.name, mv.version),
    )
    inference.capture = capture
    return capture


def create_app(
    settings: Settings | None = None,
    registry: CollectorRegistry | None = None,
    tracer_provider: Any = None,
) -> VerdictApp:
    """A new app with its own settings, metrics registry, model repository, data plane and
    edge; `registry` lets a caller read the metrics; `tracer_provider` (an OpenTelemetry
    SDK TracerProvider) turns traces on with it, else the OTEL_* environment decides."""
    settings = settings or Settings()
    provider = tracer_provider if tracer_provider is not None else provider_from_env()
    tracing = Tracing(provider) if provider is not None else None
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    metrics = Metrics(registry, multiproc_dir())
    app = VerdictApp(
        title="verdict",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, with its assets
        redoc_url=None,
        **_no_telemetry(),
    )
    repository = Repository(settings, metrics)
    store = open_store(settings.store_url)
    ids = PredictionIds(load_prediction_key(settings, store))
    feedback_service = FeedbackService(
        store,
        ids,
        repository.manifest,
        metrics,
        max_items=FEEDBACK_MAX_ITEMS,
        versions_of=repository.versions,
        predictions_issued=repository.predictions_issued,
        shadowed=repository.has_shadow,
    )
    inference = Inference(repository, ids, settings.max_rows_per_request)
    inference.shadows = ShadowRunner(
        repository,
        metrics,
        lambda decisions: feedback_service.call_store(store.record_shadow_decisions, decisions),
    )
    shared_roles = SharedRoles(repository, store, feedback_service.call_store)
    lifecycle = Lifecycle(
        repository,
        store,
        feedback_service.call_store,
        shared_roles,
        min_labels=settings.promotion_min_labels,
        confidence=settings.promotion_confidence,
        admin_identity=key_identity(settings.admin_key()),
    )
    access = Access(settings.keys(), settings.admin_key(), settings.metrics_require_key)
    plane = DataPlane(inference, Metadata(repository), feedback_service, access, lifecycle)
    # Counts reach the counters at most once a second, and before every /metrics answer.
    drift = DriftMonitor(
        metrics,
        max_features=settings.monitored_features_max,
        flush_interval_s=1.0,
        max_rows_per_s=SERVER_MAX_ROWS_PER_S,
    )
    repository.add_listener(
        on_load=lambda mv: drift.register(mv.name, mv.version, mv.manifest),
        on_unload=lambda mv: drift.unregister(mv.name, mv.version),
    )
    inference.observers.append(
        lambda mv, x, class_index, score: drift.observe(mv.name, mv.version, x, score, class_index)
    )
    capture = _capture(settings, store, metrics, repository, inference)
    state = app.state
    state.settings = settings
    state.registry = registry
    state.metrics = metrics
    state.repository = repository
    state.ids = ids
    state.feedback = feedback_service
    state.drift = drift
    state.capture = capture
    state.shared_roles = shared_roles
    state.dataplane = plane
    state.tracing = tracing
    for router in ROUTERS:
        app.include_router(router)
    install_docs(app)
    app.edge = Edge(
        route_table(Rest(inference)),
        super(VerdictApp, app).__call__,
        access,
        metrics,
        max_body_bytes=settings.max_body_bytes,
        read_timeout_s=settings.read_timeout_s,
        max_inflight_requests=settings.max_inflight_requests,
        cors_origins=settings.cors_origins,
        access_log=settings.access_log,
        tracing=tracing,
    )
    _install_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
