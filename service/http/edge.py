"""The one HTTP edge: every request passes here, whichever route it takes and however it came.

For each request (an `Exchange`) the edge sets the request id, admits or refuses a POST
(`max_inflight_requests`), finds the route, checks what the route needs before any byte of
the body (key, content type, declared length), reads the body under its size limit and
deadline, answers through the route's handler (the data-plane routes, `service.http.rest`)
or the framework (FastAPI: metadata, health, feedback, repository, metrics, docs), maps every
error to the one error shape, builds the answer's headers, counts the request and logs it.

Two faces feed it and write its answers, and share everything above:
- `service.http.server`, verdict's HTTP/1.1 server (`python -m service`);
- `service.http.asgi`, for any ASGI server (`uvicorn service.http.app:create_app --factory`,
  Starlette's TestClient).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

from service.dataplane.access import Access, Need
from service.errors import (
    OverloadedError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
    VerdictError,
    error_body,
)
from service.http.cors import Cors
from service.http.framework import ask_framework
from service.http.messages import (
    REQUEST_ID_HEADER,
    Answer,
    Body,
    Headers,
    RequestHeaders,
    media_type,
    presented_key,
    request_id,
)
from service.logs import REQUEST_ID
from service.monitoring.metrics import Metrics

if TYPE_CHECKING:
    from service.monitoring.tracing import RequestTrace, Tracing

log = logging.getLogger(__name__)
access_log = logging.getLogger("service.access")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]
Handler = Callable[["Exchange", bytes], Awaitable[Answer]]

UNMATCHED = "unmatched"
JSON_TYPES = ("application/json",)
INFER_TYPES = ("application/json", "application/octet-stream")
EXACT_TYPES = {t.encode(): t for t in INFER_TYPES}  # as clients send them, without parameters


class Route(NamedTuple):
    """A route the edge knows: its template, what it needs of the caller, which body types it
    reads (empty: any), and its handler (None: the framework answers)."""

    template: str
    methods: frozenset[str]
    need: Need = Need.NOTHING
    body_types: tuple[str, ...] = ()
    handler: Handler | None = None


class Router:
    """Path -> route and path parameters (`{name}` segments match one non-empty segment)."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._static: dict[str, Route] = {}
        self._patterns: dict[int, list[tuple[list[str], Route]]] = {}
        for route in routes:
            if "{" not in route.template:
                self._static[route.template] = route
            else:
                parts = route.template.split("/")
                self._patterns.setdefault(len(parts), []).append((parts, route))

    def match(self, path: str) -> tuple[Route | None, dict[str, str]]:
        """The route for `path` and its parameters, or (None, {})."""
        route = self._static.get(path)
        if route is not None:
            return route, {}
        segments = path.split("/")
        for parts, route in self._patterns.get(len(segments), ()):
            params: dict[str, str] = {}
            for want, got in zip(parts, segments, strict=True):
                if want[:1] == "{":
                    if not got:
                        break
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                return route, params
        return None, {}


class Exchange:
    """One request through the edge, from its headers to its answer."""

    __slots__ = (
        "admitted",
        "answer",
        "body",
        "complete",
        "deadline",
        "edge",
        "expired",
        "headers",
        "keep_alive",
        "method",
        "on_expire",
        "params",
        "path",
        "query",
        "raw_path",
        "request_id",
        "route",
        "scope",
        "start",
        "timer",
        "trace",
        "written",
    )

    def __init__(
        self, edge: Edge, method: str, raw_path: bytes, query: bytes, headers: Headers
    ) -> None:
        self.edge = edge
        self.method = method
        self.raw_path = raw_path
        path = raw_path.decode("latin-1")
        self.path = unquote(path) if "%" in path else path
        self.query = query
        self.headers = RequestHeaders(headers)
        self.start = perf_counter()
        self.deadline = self.start + edge.read_timeout_s
        self.request_id = request_id(self.headers.get(REQUEST_ID_HEADER))
        self.route: Route | None = None
        self.params: dict[str, str] = {}
        self.admitted = False
        self.answer: Answer | None = None  # decided before the handler: an early answer
        self.body: Body | None = None  # None once answered early (the rest is discarded)
        self.expired = False
        self.timer: asyncio.TimerHandle | None = None
        self.on_expire: Callable[[], Any] | None = None
        self.scope: Scope | None = None  # the ASGI scope, when an ASGI server brought it
        self.complete = False  # the whole body is in (set by the face that reads it)
        self.keep_alive = True  # the connection may go on after the answer
        self.written = False  # the answer is written
        self.trace: RequestTrace | None = None  # the request's span, when traces are on

    @property
    def template(self) -> str:
        """The route template (the metrics' `route` label)."""
        return self.route.template if self.route is not None else UNMATCHED

    def feed(self, chunk: bytes) -> None:
        """A piece of the body; over the limit (or undecodable), the answer is decided."""
        body = self.body
        if body is None:
            return
        try:
            body.add(chunk)
        except VerdictError as exc:
            self.body = None
            self.answer = self.edge.error_answer(exc)

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Time the request out at its deadline (408, and the connection closes)."""
        if self.timer is None and self.answer is None:
            self.timer = loop.call_later(max(self.deadline - perf_counter(), 0.0), self.expire)

    def disarm(self) -> None:
        """The request is in whole: no deadline any more."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expire(self) -> None:
        """Its deadline passed: the answer is 408 (and the connection closes)."""
        self.timer = None
        if self.answer is not None:
            return
        self.expired = True
        self.body = None
        timeout = self.edge.read_timeout_s
        self.answer = self.edge.error_answer(
            RequestTimeoutError(f"the request did not arrive within {timeout:g} s")
        )
        if self.on_expire is not None:
            self.on_expire()


class Edge:
    """The edge of one app (see the module's text)."""

    def __init__(
        self,
        routes: list[Route],
        framework: ASGIApp,
        access: Access,
        metrics: Metrics,
        *,
        max_body_bytes: int,
        read_timeout_s: float,
        max_inflight_requests: int,
        cors_origins: list[str],
        access_log: bool,
        tracing: Tracing | None = None,
    ) -> None:
        self.router = Router(routes)
        self.framework = framework
        self.access = access
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.limit = max_inflight_requests
        self.active = 0  # POST requests admitted and not yet answered
        self.cors = Cors(cors_origins) if cors_origins else None
        self.access_log = access_log
        self.tracing = tracing
        self._histogram = metrics.http_duration
        self._metrics = metrics
        self._children: dict[tuple[str, str, int], Any] = {}

    # -- a request's way through -------------------------------------------------------------

    def open(
        self, method: str, raw_path: bytes, query: bytes, headers: Headers, admit: bool = True
    ) -> Exchange:
        """A request whose headers are in: admitted (unless `admit` is False: a request that
        waits behind others on its connection is admitted at its turn, `admit`), routed
        and checked. `ex.answer` is set when it is answered without a body (refused, a CORS
        preflight); else its body is fed to `ex.feed` and `respond` answers it."""
        ex = Exchange(self, method, raw_path, query, headers)
        ex.route, ex.params = self.router.match(ex.path)
        if self.tracing is not None:
            ex.trace = self._trace(ex)
        if method == "OPTIONS" and self.cors is not None:
            preflight = self.cors.preflight(ex.headers)
            if preflight is not None:
                ex.answer = preflight
                return ex
        if admit:
            self.admit(ex)
            if ex.answer is not None:
                return ex
        try:
            route = ex.route
            if route is not None and method in route.methods:
                need = route.need
                if self.access.needs_key(need):
                    bearer_only = need is Need.ADMIN_KEY
                    self.access.check(need, presented_key(ex.headers, bearer_only))
                if route.body_types:
                    _check_media_type(ex.headers, route.body_types)
            ex.body = Body(ex.headers, self.max_body_bytes)
        except VerdictError as exc:
            ex.answer = self.error_answer(exc)
        return ex

    def admit(self, ex: Exchange) -> None:
        """Count a POST in flight, or refuse it (503) when `max_inflight_requests` are."""
        if ex.method != "POST" or ex.admitted:
            return
        if 0 < self.limit <= self.active:
            ex.body = None
            ex.answer = self.error_answer(
                OverloadedError(
                    f"the server is handling {self.limit} requests already; retry shortly"
                )
            )
            return
        self.active += 1
        ex.admitted = True

    async def respond(self, ex: Exchange) -> Answer:
        """The answer to a request whose body is in whole."""
        if ex.answer is not None:
            return ex.answer
        token = REQUEST_ID.set(ex.request_id)
        try:
            assert ex.body is not None
            body = ex.body.whole()
            route = ex.route
            if route is None or route.handler is None:
                return await ask_framework(self.framework, ex, body)
            if ex.method not in route.methods:
                allowed = ", ".join(sorted(route.methods)).encode()
                message = f"method {ex.method} is not allowed on {route.template}"
                return Answer(
                    405, error_body(message, "method_not_allowed"), headers=[(b"allow", allowed)]
                )
            return await route.handler(ex, body)
        except Exception as exc:
            return self.error_answer(exc, ex)
        finally:
            REQUEST_ID.reset(token)

    def head(self, ex: Exchange, answer: Answer) -> Headers:
        """The answer's headers (content type and length, request id, the answer's own, CORS)."""
        headers = [
            (b"content-type", answer.content_type),
            (b"content-length", b"%d" % len(answer.body)),
            (REQUEST_ID_HEADER, ex.request_id.encode("ascii")),
        ]
        if answer.headers:
            headers += answer.headers
        if self.cors is not None:
            headers += self.cors.headers(ex.headers)
        return headers

    def finish(self, ex: Exchange, status: int) -> None:
        """The request is answered (or abandoned): release admission, count it, log it."""
        ex.disarm()
        if ex.admitted:
            ex.admitted = False
            self.active -= 1
        elapsed = perf_counter() - ex.start
        key = (ex.template, ex.method, status)
        child = self._children.get(key)
        if child is None:
            child = self._metrics.histogram(self._histogram.labels(key[0], key[1], str(status)))
            self._children[key] = child
        child.observe(elapsed)
        if ex.trace is not None:
            ex.trace.end(
                {"http.response.status_code": status},
                str(status) if status >= 500 else None,
            )
            ex.trace = None
        if self.access_log:
            token = REQUEST_ID.set(ex.request_id)
            access_log.info("%s %s %d %.1fms", ex.method, ex.path, status, elapsed * 1000.0)
            REQUEST_ID.reset(token)

    def _trace(self, ex: Exchange) -> RequestTrace:
        """The request's server span, a child of the context its headers carry."""
        assert self.tracing is not None
        route = ex.route.template if ex.route is not None else None
        attributes: dict[str, Any] = {
            "http.request.method": ex.method,
            "url.path": ex.path,
            "verdict.request_id": ex.request_id,
        }
        if route is not None:
            attributes["http.route"] = route
        name = f"{ex.method} {route}" if route is not None else ex.method
        headers = ex.headers
        return self.tracing.start(name, lambda key: headers.text(key.encode("latin-1")), attributes)

    def reject(self, exc: BaseException) -> tuple[Exchange, Answer]:
        """An answer for what never became a request (malformed HTTP, headers too large or
        too slow), counted and logged like the others."""
        ex = Exchange(self, "-", b"/", b"", [])
        return ex, self.error_answer(exc)

    def error_answer(self, exc: BaseException, ex: Exchange | None = None) -> Answer:
        """The one error mapping: a `VerdictError` as its status and the error shape (500
        `internal_error` for anything else, logged)."""
        if not isinstance(exc, VerdictError):
            where = f"{ex.method} {ex.path}" if ex is not None else "a request"
            log.error("unhandled error on %s", where, exc_info=exc)
            return Answer(500, error_body("internal server error", "internal_error"))
        if exc.status_code >= 500:
            log.warning("%s", exc.message)
        headers: Headers = []
        if exc.retry_after_s is not None:
            headers.append((b"retry-after", b"%d" % exc.retry_after_s))
        if exc.status_code == 401:
            headers.append((b"www-authenticate", b'Bearer realm="verdict"'))
        # 408: the rest of the request may never come, so the connection cannot go on.
        return Answer(
            exc.status_code,
            error_body(exc.message, exc.code),
            headers=headers,
            close=isinstance(exc, RequestTimeoutError),
        )


def _check_media_type(headers: RequestHeaders, accepted: tuple[str, ...]) -> None:
    """415 unless the body's type is one the route reads (a missing type is taken as JSON)."""
    sent = headers.get(b"content-type")
    if sent is None or EXACT_TYPES.get(sent) in accepted:  # the usual case, without parsing
        return
    kind = media_type(headers)
    if kind is not None and kind not in accepted:
        wanted = " or ".join(accepted)
        raise UnsupportedMediaTypeError(
            f"content type {headers.text(b'content-type')!r} is not supported; send {wanted}"
        )
