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
from typing import Any

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
    """Request ids, admission, HTTP metrics and the predict routes, in front of `app`."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state
        settings = state.settings
        self.access_log = settings.access_log
        self.limit = settings.max_inflight_requests
        self.active = 0
        self.max_body_bytes = settings.max_body_bytes
        self.api_keys: list[str] = state.api_keys
        # With CORS on, the framework's CORS middleware must see every request.
        self.cors_origins: list[str] = list(settings.cors_origins)
        self.hot = not self.cors_origins
        self.deadlines = BodyDeadlines(settings.body_timeout_s)
        self.metrics = state.metrics
        self.histogram = state.metrics.http_duration
        self._children: dict[tuple[str, str, int], Any] = {}
        self._refusal = error_body(
            f"the server is handling {self.limit} requests already; retry shortly", "overloaded"
        )

    def _observe(self, template: str, method: str, status: int, seconds: float) -> None:
        key = (template, method, status)
        child = self._children.get(key)
        if child is None:
            child = self.metrics.buffered(self.histogram.labels(template, method, str(status)))
            self._children[key] = child
        child.observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = perf_counter()
        raw_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                raw_id = value
                break
        if raw_id is not None and VALID_REQUEST_ID.match(raw_id):
            request_id = raw_id.decode("ascii")
        else:
            request_id = new_request_id()
        token = REQUEST_ID.set(request_id)
        id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        method: str = scope["method"]
        template = "unmatched"
        status = 500
        admitted = False
        try:
            if method == "POST" and self.limit > 0:
                if self.active >= self.limit:
                    status = 503
                    cors = self._cors_headers(scope) if self.cors_origins else None
                    await self._send(send, 503, self._refusal, JSON_HEADER, id_header, True, cors)
                    return
                self.active += 1
                admitted = True
            route = self._match(scope) if method == "POST" and self.hot else None
            if route is not None:
                template, handler, args = route
                status = await handler(scope, receive, send, id_header, *args)
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
            if admitted:
                self.active -= 1
            elapsed = perf_counter() - start
            self._observe(template, method, status, elapsed)
            if self.access_log:
                access_log.info("%s %s %d %.1fms", method, scope["path"], status, elapsed * 1000.0)
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

    def _match(self, scope: Scope) -> tuple[str, Any, tuple[Any, ...]] | None:
        path: str = scope["path"]
        if path == PREDICT:
            return PREDICT, self._predict, ()
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            parts = path.split("/")
            if len(parts) == 5 and parts[3]:
                return INFER, self._infer, (parts[3], None)
            if len(parts) == 7 and parts[4] == "versions" and parts[3] and parts[5]:
                return INFER_VERSION, self._infer, (parts[3], parts[5])
        return None

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

    async def _error(
        self, send: Send, exc: VerdictError, path: str, id_header: tuple[bytes, bytes]
    ) -> int:
        if exc.status_code >= 500:
            log.warning("POST %s: %s", path, exc.message)
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
        body = error_body(exc.message, exc.code)
        await self._send(send, exc.status_code, body, JSON_HEADER, id_header, False, extra)
        return exc.status_code

    async def _predict(
        self, scope: Scope, receive: Receive, send: Send, id_header: tuple[bytes, bytes]
    ) -> int:
        headers = RawHeaders(scope["headers"])
        try:
            check_api_key(self.api_keys, headers)
            require_json(headers)
            body = await self.deadlines.read(receive, BodyCollector(headers, self.max_body_bytes))
            payload = await predict.predict_body(self.state, body)
        except VerdictError as exc:
            return await self._error(send, exc, PREDICT, id_header)
        except Exception:
            log.exception("unhandled error on POST %s", PREDICT)
            return await self._error(send, INTERNAL, PREDICT, id_header)
        await self._send(send, 200, payload, JSON_HEADER, id_header)
        return 200

    async def _infer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        id_header: tuple[bytes, bytes],
        model: str,
        version: str | None,
    ) -> int:
        headers = RawHeaders(scope["headers"])
        try:
            check_api_key(self.api_keys, headers)
            require_infer_type(headers)
            body = await self.deadlines.read(receive, BodyCollector(headers, self.max_body_bytes))
            payload, header_length = await v2.infer_body(
                self.state, body, headers.get(v2.HEADER_LENGTH), model, version
            )
        except VerdictError as exc:
            return await self._error(send, exc, scope["path"], id_header)
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            return await self._error(send, INTERNAL, scope["path"], id_header)
        if header_length is None:
            await self._send(send, 200, payload, JSON_HEADER, id_header)
        else:
            length = (HEADER_LENGTH_BYTES, str(header_length).encode())
            await self._send(send, 200, payload, BINARY_HEADER, id_header, False, [length])
        return 200
