"""The front door: every HTTP request passes here first, and the predict routes end here.

One ASGI callable does what would otherwise be four middleware layers: the request id and
the access log, the in-flight admission limit for POST, the HTTP duration histogram, and
for `POST /predict` and v2 infer the whole request (headers, body under a deadline, the
answer) without the framework's request, response, routing and dependency objects.
Everything else goes on to the FastAPI app. The answers and errors are the same either way:
the framework's routes call the same `predict_body` and `infer_body`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from time import perf_counter
from typing import Any, NamedTuple

from service.batching import ALONE
from service.errors import ClientDisconnectedError, VerdictError, error_body
from service.logs import REQUEST_ID
from service.middleware import REQUEST_ID_HEADER, VALID_REQUEST_ID, new_request_id
from service.routes import predict, v2
from service.routes.common import (
    BodyCollector,
    RawHeaders,
    check_api_key,
    require_infer_type,
    require_json,
    timeout_error,
)

log = logging.getLogger(__name__)
access_log = logging.getLogger("service.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_HEADER = (b"content-type", b"application/json")
BINARY_HEADER = (b"content-type", b"application/octet-stream")
PREDICT = "/predict"
INFER = "/v2/models/{model}/infer"
INFER_VERSION = "/v2/models/{model}/versions/{version}/infer"
INTERNAL = VerdictError("internal server error")
HEADER_LENGTH_BYTES = v2.HEADER_LENGTH.lower().encode("ascii")


class BodyDeadlines:
    """One timer for every body being read, instead of one timer per request.

    A reader registers its task with a deadline; while any are registered, a check runs every
    `timeout_s / 8` (at most every 0.5 s) and cancels the readers that are past theirs. The
    reader turns that cancellation into 408. A body that is already in (the usual case) is read
    without the timer being touched beyond one dict entry.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.period_s = min(timeout_s / 8, 0.5)
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    async def read(self, receive: Receive, collector: BodyCollector) -> bytes:
        """The whole body, or 408 once it has taken longer than `timeout_s`."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._reading[task] = loop.time() + self.timeout_s
        if self._timer is None:
            self._timer = loop.call_later(self.period_s, self._check)
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "http.disconnect":
                    raise ClientDisconnectedError("the client closed the connection mid-body")
                collector.add(message.get("body", b""))
                if not message.get("more_body", False):
                    return collector.body()
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                # Ours alone becomes 408; a cancellation from elsewhere goes on as one.
                if task.uncancel() == 0:
                    raise timeout_error(self.timeout_s) from None
            raise
        finally:
            self._reading.pop(task, None)

    def _check(self) -> None:
        self._timer = None
        if not self._reading:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, deadline in list(self._reading.items()):
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                self._reading.pop(task, None)
                task.cancel()
        if self._reading:
            self._timer = loop.call_later(self.period_s, self._check)


class FrontDoor:
    """Request ids, admission, HTTP metrics and the predict routes, in front of `app`.

    The predict routes are also answered straight from the HTTP protocol
    (`service.protocol`), without ASGI; both ways share `route`, `admit`, `finish` and the
    route functions below, so the answers and the metrics are the same.
    """

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state
        settings = state.settings
        self.access_log = settings.access_log
        self.limit = settings.max_inflight_requests
        self.active = 0
        self._lone_turn = False  # a request ran at once in this turn of the loop (`lone`)
        self.max_body_bytes = settings.max_body_bytes
        self.api_keys: list[str] = state.api_keys
        # With CORS on, the framework's CORS middleware must see every request.
        self.cors_origins: list[str] = list(settings.cors_origins)
        self.hot = not self.cors_origins
        self.deadlines = BodyDeadlines(settings.body_timeout_s)
        self.metrics = state.metrics
        self.histogram = state.metrics.http_duration
        self._children: dict[tuple[str, str, int], Any] = {}
        self.refusal = error_body(
            f"the server is handling {self.limit} requests already; retry shortly", "overloaded"
        )

    def lone(self) -> bool:
        """Whether an admitted predict request may run its model at once: it is the only POST
        in flight, and no other request has in this turn of the loop (the requests read
        after it in the same turn are merged, as under load; running each at once instead
        cost 30-40% of the requests/s at 32 connections)."""
        if self.active != 1 or self._lone_turn:
            return False
        self._lone_turn = True
        asyncio.get_running_loop().call_soon(self._end_lone_turn)
        return True

    def _end_lone_turn(self) -> None:
        self._lone_turn = False

    def admit(self) -> bool:
        """Count one more POST in flight, or False when the limit is reached (answer 503).
        Counted with no limit too: a predict request alone in flight runs its model at once
        (`service.protocol`)."""
        if 0 < self.limit <= self.active:
            return False
        self.active += 1
        return True

    def finish(
        self, template: str, method: str, path: str, status: int, start: float, admitted: bool
    ) -> None:
        """A request is answered: release its admission, observe its duration, log it."""
        if admitted:
            self.active -= 1
        elapsed = perf_counter() - start
        key = (template, method, status)
        child = self._children.get(key)
        if child is None:
            child = self.metrics.buffered(self.histogram.labels(template, method, str(status)))
            self._children[key] = child
        child.observe(elapsed)
        if self.access_log:
            access_log.info("%s %s %d %.1fms", method, path, status, elapsed * 1000.0)

    def route(self, path: str) -> HotRoute | None:
        """The predict route `path` names, or None (the rest goes to the framework)."""
        if path == PREDICT:
            return PREDICT_ROUTE
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            parts = path.split("/")
            if len(parts) == 5 and parts[3]:
                return HotRoute(INFER, _prepare_infer, _run_infer, (parts[3], None))
            if len(parts) == 7 and parts[4] == "versions" and parts[3] and parts[5]:
                return HotRoute(INFER_VERSION, _prepare_infer, _run_infer, (parts[3], parts[5]))
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = perf_counter()
        raw_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                raw_id = value
                break
        request_id = checked_request_id(raw_id)
        token = REQUEST_ID.set(request_id)
        id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        method: str = scope["method"]
        template = "unmatched"
        status = 500
        admitted = False
        try:
            if method == "POST":
                if not self.admit():
                    status = 503
                    # Labelled as `service.protocol` labels it: the predict route's template.
                    hot = self.route(scope["path"]) if self.hot else None
                    if hot is not None:
                        template = hot.template
                    cors = self._cors_headers(scope) if self.cors_origins else None
                    await self._send(send, 503, self.refusal, JSON_HEADER, id_header, True, cors)
                    return
                admitted = True
                alone = ALONE.set(self.lone())
            route = self.route(scope["path"]) if method == "POST" and self.hot else None
            if route is not None:
                template = route.template
                status = await self._answer(route, scope, receive, send, id_header)
                return

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [*message.get("headers", ()), id_header]
                await send(message)

            try:
                await self.app(scope, receive, send_with_id)
            finally:
                found = scope.get("route")
                template = getattr(found, "path", None) or "unmatched"
        finally:
            self.finish(template, method, scope["path"], status, start, admitted)
            if admitted:
                ALONE.reset(alone)
            REQUEST_ID.reset(token)

    def _cors_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        """What the CORS middleware would add to a simple request's answer: the refusal
        happens before it, and a browser must still be able to read the 503."""
        origin = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
                break
        if origin is None:
            return []
        if "*" in self.cors_origins:
            return [(b"access-control-allow-origin", b"*")]
        if origin.decode("latin-1") in self.cors_origins:
            return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        return []

    @staticmethod
    async def _send(
        send: Send,
        status: int,
        body: bytes,
        ctype: tuple[bytes, bytes],
        id_header: tuple[bytes, bytes],
        retry: bool = False,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [ctype, (b"content-length", str(len(body)).encode()), id_header]
        if retry:
            headers.append((b"retry-after", b"1"))
        if extra:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(
        self,
        route: HotRoute,
        scope: Scope,
        receive: Receive,
        send: Send,
        id_header: tuple[bytes, bytes],
    ) -> int:
        headers = RawHeaders(scope["headers"])
        try:
            collector = route.prepare(self, headers)
            body = await self.deadlines.read(receive, collector)
            payload, extra = await route.run(self, headers, body, *route.args)
        except Exception as exc:
            status, payload, extra = error_answer(exc, scope["path"])
            await self._send(send, status, payload, JSON_HEADER, id_header, False, extra)
            return status
        await self._send(send, 200, payload, extra[0], id_header, False, extra[1:])
        return 200


Headers = list[tuple[bytes, bytes]]


class HotRoute(NamedTuple):
    """A route the front door answers itself.

    `prepare` checks the headers before any byte of the body is read (API key, content type,
    declared length) and returns the body's collector; `run` answers the whole body with the
    payload and its headers, the content type first.
    """

    template: str
    prepare: Callable[[FrontDoor, RawHeaders], BodyCollector]
    run: Callable[..., Awaitable[tuple[bytes, Headers]]]
    args: tuple[Any, ...] = ()


def checked_request_id(raw: bytes | None) -> str:
    """The client's X-Request-ID when it is short and plain, else a new one."""
    if raw is not None and VALID_REQUEST_ID.match(raw):
        return raw.decode("ascii")
    return new_request_id()


def error_answer(exc: BaseException, path: str) -> tuple[int, bytes, Headers]:
    """Status, error body and extra headers for what a hot route raised (500 if unexpected)."""
    if not isinstance(exc, VerdictError):
        log.error("unhandled error on POST %s", path, exc_info=exc)
        exc = INTERNAL
    elif exc.status_code >= 500:
        log.warning("POST %s: %s", path, exc.message)
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    return exc.status_code, error_body(exc.message, exc.code), extra


def _prepare_predict(front: FrontDoor, headers: RawHeaders) -> BodyCollector:
    check_api_key(front.api_keys, headers)
    require_json(headers)
    return BodyCollector(headers, front.max_body_bytes)


async def _run_predict(front: FrontDoor, headers: RawHeaders, body: bytes) -> tuple[bytes, Headers]:
    return await predict.predict_body(front.state, body), [JSON_HEADER]


def _prepare_infer(front: FrontDoor, headers: RawHeaders) -> BodyCollector:
    check_api_key(front.api_keys, headers)
    require_infer_type(headers)
    return BodyCollector(headers, front.max_body_bytes)


async def _run_infer(
    front: FrontDoor, headers: RawHeaders, body: bytes, model: str, version: str | None
) -> tuple[bytes, Headers]:
    payload, header_length = await v2.infer_body(
        front.state, body, headers.get(v2.HEADER_LENGTH), model, version
    )
    if header_length is None:
        return payload, [JSON_HEADER]
    return payload, [BINARY_HEADER, (HEADER_LENGTH_BYTES, str(header_length).encode())]


PREDICT_ROUTE = HotRoute(PREDICT, _prepare_predict, _run_predict)
