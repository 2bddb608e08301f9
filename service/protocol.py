"""uvicorn's httptools protocol, answering the predict routes without ASGI.

For `POST /predict` and v2 infer the protocol hands the parsed headers and the body to the
front door's route functions (`service.hotpath`) and writes the answer itself: no ASGI
scope, no receive and send messages, no per-request event, no header checks of an answer
whose headers verdict built. Measured at the floor (an answer of fixed bytes, 64-row binary
bodies, 8 connections): ~31 µs per request through uvicorn's ASGI cycle, ~11 µs this way.

Everything else (other routes and methods, `Expect: 100-continue`, upgrades, percent-encoded
paths, CORS, uvicorn's own concurrency limit) goes through uvicorn's ASGI cycle unchanged.
Requests on one connection are answered in order whichever way each goes: a request that
arrives while another is in flight waits in uvicorn's pipeline queue.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine, Generator
from time import perf_counter
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.batching import ALONE
from service.errors import ClientDisconnectedError, VerdictError
from service.hotpath import JSON_HEADER, FrontDoor, HotRoute, checked_request_id, error_answer
from service.logs import REQUEST_ID
from service.middleware import REQUEST_ID_HEADER
from service.routes.common import BodyCollector, RawHeaders, timeout_error

log = logging.getLogger(__name__)

CLOSE = b"connection: close\r\n"
RETRY = [(b"retry-after", b"1")]


class _NoEvent:
    """What uvicorn calls `cycle.message_event`; a hot cycle needs no wake-up."""

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


NO_EVENT = _NoEvent()


def front_door(app: Any) -> FrontDoor | None:
    """The front door inside uvicorn's wrapped app (its middleware keep the next as `.app`)."""
    for _ in range(16):
        front = getattr(app, "front", None)
        if isinstance(front, FrontDoor):
            return front
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


# uvicorn's default-headers list (`date`: a new list once a second) and it as header lines;
# one tuple, replaced whole, so servers sharing a process never read each other's half.
_encoded: tuple[Any, bytes] = (None, b"")


def _default_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers as header lines, encoded once per list."""
    global _encoded
    seen, lines = _encoded
    if seen is not headers:
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        _encoded = (headers, lines)
    return lines


class HotCycle:
    """One predict request on a connection, from its headers to its answer.

    It stands where uvicorn keeps its request-response cycle (`protocol.cycle`, the pipeline
    queue), and has the attributes uvicorn reads there: `response_complete`, `disconnected`,
    `keep_alive`, `message_event`.
    """

    message_event = NO_EVENT

    def __init__(
        self,
        protocol: VerdictHttpProtocol,
        route: HotRoute,
        path: str,
        keep_alive: bool,
    ) -> None:
        self.protocol = protocol
        self.front: FrontDoor = protocol.front  # type: ignore[assignment]
        self.route = route
        self.path = path
        self.headers = RawHeaders(protocol.headers)
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False
        self.started = False
        self.body_done = False
        self.admitted = False
        self.start_time = 0.0
        self.request_id = ""
        self.collector: BodyCollector | None = None
        self.error: BaseException | None = None
        # A coroutine started at once that went on in a task (`run_eagerly`), and its context.
        self.detached: tuple[Coroutine[Any, Any, None], contextvars.Context] | None = None
        self.timer: asyncio.TimerHandle | None = None
        try:
            self.collector = route.prepare(self.front, self.headers)
        except VerdictError as exc:  # answered (in order) once the request is started
            self.error = exc

    def start(self) -> None:
        """Its turn on the connection: admit it, then answer at once or when the body is in."""
        self.started = True
        self.start_time = perf_counter()
        self.request_id = checked_request_id(self.headers.raw(REQUEST_ID_HEADER))
        if self.disconnected or self.protocol.transport.is_closing():
            self.response_complete = True  # nobody to answer; never admitted
            return
        if not self.front.admit():
            self.answer(503, self.front.refusal, [JSON_HEADER, *RETRY])
            return
        self.admitted = True
        if self.error is not None:
            self.fail(self.error)
        elif self.body_done:
            self.dispatch()
        # Else the body deadline is armed by `arm_deadline`, once the bytes at hand are parsed:
        # usually the whole body is among them, and no timer is needed at all.

    def start_queued(self) -> None:
        """`start`, for a request that waited behind another (outside `data_received`)."""
        self.start()
        self.arm_deadline()

    def arm_deadline(self) -> None:
        """Time the body from the request's start, if it is still coming."""
        if (
            self.started
            and self.timer is None
            and self.collector is not None
            and not self.body_done
            and not self.response_complete
        ):
            timeout_s = self.front.deadlines.timeout_s
            left = timeout_s - (perf_counter() - self.start_time)
            self.timer = self.protocol.loop.call_later(max(left, 0.0), self.expire, timeout_s)

    def add(self, chunk: bytes) -> None:
        """A piece of the body (the parser has taken off any chunked framing)."""
        if self.error is not None or self.response_complete or self.collector is None:
            return
        try:
            self.collector.add(chunk)
        except VerdictError as exc:  # over the limit: answer as soon as it is our turn
            self.error = exc
            self.collector = None
            if self.started:
                self.fail(exc)

    def complete(self) -> None:
        """The whole body is in."""
        self.body_done = True
        if self.started and not self.response_complete and self.error is None:
            self.dispatch()

    def lost(self) -> None:
        """The connection is gone. A request still waiting for its body ends here, as the
        ASGI path ends it (400, nobody reads it); one being answered finishes on its own."""
        self.disconnected = True
        if self.started and not self.response_complete and self.collector is not None:
            self.fail(ClientDisconnectedError("the client closed the connection mid-body"))

    def expire(self, timeout_s: float) -> None:
        """The body took too long: 408, and the connection closes (the rest may never come)."""
        self.timer = None
        if not self.response_complete:
            self.keep_alive = False
            self.fail(timeout_error(timeout_s))

    def fail(self, exc: BaseException) -> None:
        """Answer an error found outside `run` (headers, body, deadline)."""
        token = REQUEST_ID.set(self.request_id)  # for the log lines, as in `run`
        try:
            status, payload, extra = error_answer(exc, self.path)
        finally:
            REQUEST_ID.reset(token)
        self.answer(status, payload, [JSON_HEADER, *extra])

    def answer(self, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Answer now, outside `run`; or, while the client is not reading what it was sent,
        once it has (so a client that never reads cannot grow the server's write buffer)."""
        if self.protocol.flow.write_paused and not self.disconnected:
            self.spawn(self.drain_then(status, payload, headers))
        else:
            self.respond(status, payload, headers)

    async def drain_then(
        self, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await self.protocol.flow.drain()
        self.respond(status, payload, headers)

    def dispatch(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        assert self.collector is not None
        try:
            body = self.collector.body()
        except VerdictError as exc:
            self.fail(exc)
            return
        self.collector = None
        if self.front.lone():
            self.run_eagerly(self.run(body))
        else:
            self.spawn(self.run(body))

    def run_eagerly(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` at once, up to the first thing it waits for (for a request that
        `FrontDoor.lone` says has nothing to be merged with). A lone request whose model
        runs at once (`Batcher.run_now`) is answered before this returns: no task, no turn
        of the loop. One that waits (merged with others, on the model's thread, for the
        write buffer) goes on in a task, in the same context, that resumes it where it
        waits. This is what Python 3.12's eager tasks do."""
        context = contextvars.copy_context()
        context.run(ALONE.set, True)
        try:
            waiting = context.run(coro.send, None)
        except StopIteration:
            return
        except BaseException as exc:
            self.task_failed(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if waiting is not None and not getattr(waiting, "_asyncio_future_blocking", False):
            context.run(coro.close)  # only an asyncio future can be awaited here, as in a task
            self.task_failed(RuntimeError(f"a hot route waited on {waiting!r}"))
            return
        # It goes on in a task at once, as 3.12's eager tasks do: uvicorn's shutdown sees it
        # (`server_state.tasks`) and can cancel it, and the cancellation reaches `coro` where
        # it waits. The task waits on the future `coro` yielded.
        self.detached = (coro, context)
        self.spawn(_go_on(coro, waiting), context)

    def spawn(
        self, coro: Coroutine[Any, Any, None], context: contextvars.Context | None = None
    ) -> None:
        """Run `coro` as a task the server waits for (and cancels) at shutdown."""
        protocol = self.protocol
        task = protocol.loop.create_task(coro, context=context)
        protocol.tasks.add(task)
        task.add_done_callback(self.task_done)

    def task_done(self, task: asyncio.Task[None]) -> None:
        """A task that ended without answering (cancelled by a forced shutdown, even before
        its first step, or failed): no answer, the connection closes, admission returns."""
        self.protocol.tasks.discard(task)
        if self.detached is not None:
            coro, context = self.detached
            self.detached = None
            if getattr(coro, "cr_frame", None) is not None:  # cancelled before it went on
                context.run(coro.close)
        self.task_failed(None if task.cancelled() else task.exception())

    def task_failed(self, exc: BaseException | None) -> None:
        """What answering raised (None: cancelled), or nothing: see `task_done`."""
        if exc is not None:
            log.error("answering POST %s failed", self.path, exc_info=exc)
        if not self.response_complete:
            self.response_complete = True
            self.finish(500)
            self.protocol.transport.close()

    async def run(self, body: bytes) -> None:
        token = REQUEST_ID.set(self.request_id)
        route = self.route
        try:
            try:
                payload, headers = await route.run(self.front, self.headers, body, *route.args)
                status = 200
            except Exception as exc:
                status, payload, extra = error_answer(exc, self.path)
                headers = [JSON_HEADER, *extra]
            flow = self.protocol.flow
            if flow.write_paused and not self.disconnected:
                await flow.drain()
            self.respond(status, payload, headers)
        finally:
            REQUEST_ID.reset(token)

    def respond(self, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Write the answer (unless the client has gone), then let the connection go on."""
        self.response_complete = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        protocol = self.protocol
        transport = protocol.transport
        try:
            if not self.disconnected and not transport.is_closing():
                head = [
                    STATUS_LINE[status],
                    _default_headers(protocol.server_state.default_headers),
                    b"content-length: %d\r\nx-request-id: %s\r\n"
                    % (len(payload), self.request_id.encode("ascii")),
                ]
                for name, value in headers:
                    if name == b"connection":  # an error that ends the connection
                        self.keep_alive = self.keep_alive and b"close" not in value.lower()
                        continue
                    head.append(name + b": " + value + b"\r\n")
                if not self.keep_alive:
                    head.append(CLOSE)
                head.append(b"\r\n")
                head.append(payload)
                transport.writelines(head)
                if not self.keep_alive:
                    transport.close()
        finally:
            self.finish(status)
        protocol.on_response_complete()

    def finish(self, status: int) -> None:
        """Release admission, observe, and write the access log line under the request id."""
        token = REQUEST_ID.set(self.request_id)
        try:
            self.front.finish(
                self.route.template, "POST", self.path, status, self.start_time, self.admitted
            )
        finally:
            self.admitted = False
            REQUEST_ID.reset(token)


class _Rest:
    """The rest of a coroutine that was started at once and is suspended on `waiting`, as an
    awaitable: a task awaiting it waits on `waiting`, and what the task is then sent or
    thrown (a cancellation) goes on to the coroutine, where it waits."""

    __slots__ = ("coro", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting = self.coro, self.waiting
        while True:
            try:
                sent = yield waiting
            except BaseException as exc:
                step: Callable[[Any], Any] = coro.throw
                arg: Any = exc
            else:
                step, arg = coro.send, sent
            try:
                waiting = step(arg)
            except StopIteration:
                return


async def _go_on(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    await _Rest(coro, waiting)


class VerdictHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the predict routes answered by `HotCycle`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        front = front_door(self.app)
        usable = (
            front is not None
            and front.hot
            and self.limit_concurrency is None
            and not getattr(self.config, "reset_contextvars", False)
        )
        self.front = front if usable else None

    def on_message_begin(self) -> None:
        # A request answered inside `data_received` (run at once) armed the keep-alive timer
        # while the next request in the same bytes was still to be parsed: one has begun.
        self._unset_keepalive_if_required()
        # uvicorn builds the ASGI scope here; a hot request never needs it (see below).
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def _asgi_scope(self) -> None:
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.cycle
        if type(cycle) is HotCycle:
            cycle.arm_deadline()

    def on_headers_complete(self) -> None:
        cycle = self._hot_cycle()
        if cycle is None:
            self._asgi_scope()
            super().on_headers_complete()
            return
        existing = self.cycle
        self.cycle = cycle  # type: ignore[assignment]
        if existing is None or existing.response_complete:
            cycle.start()
        else:  # in order, after what is in flight on this connection
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, None))  # type: ignore[arg-type]

    def _hot_cycle(self) -> HotCycle | None:
        front = self.front
        if front is None or self.expect_100_continue:
            return None
        parser = self.parser
        if parser.get_method() != b"POST" or parser.should_upgrade():
            return None
        raw_path = httptools.parse_url(self.url).path
        if b"%" in raw_path:
            return None
        path = self.root_path + raw_path.decode("ascii")
        route = front.route(path)
        if route is None:
            return None
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        return HotCycle(self, route, path, keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        if type(cycle) is HotCycle:
            cycle.lost()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if type(cycle) is HotCycle:
            # On the next loop turn, as uvicorn starts a task: a queued request answered at
            # once (401, 415, 503) would otherwise start the next one inside its own call,
            # and a long pipeline of them would go as deep as the Python stack allows.
            self.loop.call_soon(cycle.start_queued)
        else:
            super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is HotCycle:
            cycle.add(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is HotCycle:
            cycle.complete()
        else:
            super().on_message_complete()


def _fits_uvicorn() -> bool:
    """Whether this uvicorn's protocol has the parts `VerdictHttpProtocol` builds on."""
    needed = ("_start_asgi_task", "on_response_complete", "on_message_begin", "shutdown")
    return all(hasattr(HttpToolsProtocol, name) for name in needed) and len(STATUS_LINE) >= 500


# uvicorn's `http` setting (`service.protocol:HTTP_PROTOCOL`): verdict's protocol, or plain
# uvicorn's if a future uvicorn has changed what it builds on (the answers are the same).
HTTP_PROTOCOL: type[asyncio.Protocol] = VerdictHttpProtocol
if not _fits_uvicorn():  # pragma: no cover - depends on the installed uvicorn
    log.warning("this uvicorn does not fit service.protocol; predict requests go through ASGI")
    HTTP_PROTOCOL = HttpToolsProtocol
