"""verdict's HTTP/1.1 server: connections, parsing and writing; the edge does the rest.

Built on asyncio (uvloop when installed) and httptools' request parser, public APIs both.
Per connection, requests are answered in order (pipelined ones wait their turn, and the
connection stops reading while one waits); keep-alive, `Connection: close`, HTTP/1.0,
chunked bodies and `Expect: 100-continue` work as clients expect. Time limits: a request
must arrive whole (headers and body) within `read_timeout_s` of its first byte, or of its
turn when it waited behind another; an idle keep-alive connection closes after
`KEEP_ALIVE_S`. An answer given before the body is in (413, 401, 415, 503) is written at
once and the rest of the body is read and dropped, so that every client reads the answer
(closing at once would reset a client still sending); the connection then goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from time import perf_counter

import httptools

from service.errors import BadRequestError, HeadersTooLargeError, RequestTimeoutError
from service.http.edge import Edge, Exchange
from service.http.messages import Answer

log = logging.getLogger(__name__)

KEEP_ALIVE_S = 5.0
MAX_HEAD_BYTES = 64 * 1024  # request line and headers
MAX_HEADERS = 128
STATUS_LINES = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in HTTPStatus
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CLOSE = b"connection: close\r\n"


class HttpServer:
    """What the connections of one listening server share: the edge, the date header, the
    connections and answer tasks (for the drain at shutdown)."""

    def __init__(self, edge: Edge, read_timeout_s: float) -> None:
        self.edge = edge
        self.read_timeout_s = read_timeout_s
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self._date_second = 0
        self._date = b""

    def date(self) -> bytes:
        """The Date header line, made once a second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._date

    def connection(self) -> Connection:
        """A protocol for one new connection (asyncio's protocol factory)."""
        return Connection(self)

    async def drain(self, timeout_s: float) -> None:
        """Stop taking requests: idle connections close now, busy ones after their answer;
        after `timeout_s`, what is left is cancelled and closed."""
        self.closing = True
        for conn in list(self.connections):
            conn.finish_up()
        deadline = time.monotonic() + timeout_s
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.close()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.edge = server.edge
        self.loop = asyncio.get_event_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Exchange] = deque()  # requests in order; the first is answered next
        self.current: Exchange | None = None  # the request whose body is being read
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.in_message = False  # a request has begun and its headers are not all in
        self.message_start = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # when `timer` fires (perf_counter)
        self.idle_since = perf_counter()  # no request since then (the idle limit's start)
        self.paused = False  # reading paused: a request waits its turn, or writes are slow
        self.write_paused = False
        self.upgrade = False

    # -- asyncio -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        if self.server.closing:
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgrade = True  # answered as a plain request; the connection then closes
        except httptools.HttpParserError as exc:
            # A callback's own error comes back as the context of the parser's.
            cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
            self._fail(cause if cause is not None else BadRequestError("malformed HTTP request"))
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._cancel_timer()
        for i, ex in enumerate(self.queue):
            ex.disarm()
            # Nobody will read these answers; the one being computed finishes on its own.
            running = i == 0 and ex.complete and ex.answer is None
            if not ex.written and not running:
                ex.written = True
                self.edge.finish(ex, 400)
        self.queue.clear()
        self.current = None

    def pause_writing(self) -> None:
        # The client does not read what it was sent: read no more requests from it either.
        self.write_paused = True
        self._pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if len(self.queue) <= 1:
            self._resume()

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.in_message = True
        self.message_start = perf_counter()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self._count_head(len(name) + len(value))
        if len(self.headers) > MAX_HEADERS:
            raise HeadersTooLargeError(f"more than {MAX_HEADERS} headers")

    def on_headers_complete(self) -> None:
        self.in_message = False
        parser = self.parser
        try:
            url = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            raise BadRequestError("malformed request target") from None
        method = parser.get_method().decode("ascii")
        first = not self.queue
        ex = self.edge.open(method, url.path, url.query or b"", self.headers, admit=first)
        ex.start = self.message_start
        ex.deadline = self.message_start + self.server.read_timeout_s
        ex.keep_alive = parser.should_keep_alive() and not self.server.closing
        self.current = ex
        self.queue.append(ex)
        if len(self.queue) > 1:
            self._pause()  # in order: it waits for the answers before it
            return
        self._next()

    def on_body(self, body: bytes) -> None:
        ex = self.current
        if ex is None:
            return
        answered = ex.answer is not None
        ex.feed(body)
        if not answered and ex.answer is not None and self.queue[0] is ex:
            self._write(ex, ex.answer)  # over the limit: answer now, drop the rest

    def on_message_complete(self) -> None:
        ex = self.current
        if ex is None:
            return
        self.current = None
        ex.complete = True
        if self.queue and self.queue[0] is ex:
            self._next()

    # -- answering ---------------------------------------------------------------------------

    def _next(self) -> None:
        """Go on with the first request in line: write its answer when it is decided (and on
        to the next), start its answer when its body is in, else read on."""
        queue = self.queue
        while queue:
            ex = queue[0]
            if ex.written:
                if not ex.complete:
                    break  # the rest of its body is still to be read and dropped
                queue.popleft()
                if not ex.keep_alive:
                    self.close()
                    return
                if not queue:
                    self.idle_since = perf_counter()
                if queue:  # its turn: its time starts now, and it is admitted now
                    turn = queue[0]
                    turn.start = perf_counter()
                    turn.deadline = turn.start + self.server.read_timeout_s
                    self.edge.admit(turn)
                continue
            if ex.answer is not None:
                self._write(ex, ex.answer)
                if not ex.complete and ex.headers.get(b"expect") is not None:
                    self.close()  # the client holds its body back: it never comes
                    return
                continue
            if ex.complete:
                self._dispatch(ex)
            elif ex.headers.get(b"expect") == b"100-continue" and self.transport is not None:
                self.transport.write(CONTINUE)
            break
        if len(queue) <= 1 and not self.write_paused:
            self._resume()
        self._arm()

    def _dispatch(self, ex: Exchange) -> None:
        """Answer `ex` in a task of its own (the server cancels what is left at shutdown)."""
        task = self.loop.create_task(self._answer(ex))
        self.server.tasks.add(task)
        task.add_done_callback(lambda task: self._task_done(ex, task))

    async def _answer(self, ex: Exchange) -> None:
        answer = await self.edge.respond(ex)
        self._write(ex, answer)
        self._next()

    def _task_done(self, ex: Exchange, task: asyncio.Task[None]) -> None:
        """A task that ended without answering (a forced shutdown cancelled it, even before
        it started): no answer, the connection closes, admission returns."""
        self.server.tasks.discard(task)
        if not ex.written:
            ex.written = True
            self.edge.finish(ex, 500)
            self.close()
        if not task.cancelled() and task.exception() is not None:
            log.error("answering %s %s failed", ex.method, ex.path, exc_info=task.exception())

    def _write(self, ex: Exchange, answer: Answer) -> None:
        """Write the answer, unless the client has gone; count it."""
        ex.written = True
        transport = self.transport
        close = answer.close or not ex.keep_alive or self.upgrade or self.server.closing
        if close:
            ex.keep_alive = False  # after a body still coming is read and dropped
        if transport is not None and not transport.is_closing():
            lines = [STATUS_LINES.get(answer.status) or STATUS_LINES[500], self.server.date()]
            lines += [name + b": " + value + b"\r\n" for name, value in self.edge.head(ex, answer)]
            if close:
                lines.append(CLOSE)
            lines.append(b"\r\n")
            if ex.method != "HEAD":  # a HEAD answer has the headers of a GET, no body
                lines.append(answer.body)
            transport.write(b"".join(lines))
            if answer.close:
                transport.close()  # the rest of the request may never come
        self.edge.finish(ex, answer.status)

    # -- time limits and flow ----------------------------------------------------------------

    def _due(self) -> float | None:
        """Until when (perf_counter) the connection waits for what it waits for now: the
        first request's deadline while it is read (or its unwanted body dropped), the
        deadline of headers coming in, or the idle limit; None while an answer is made."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return None
        if self.queue:
            ex = self.queue[0]
            if ex.complete or (not ex.written and ex.answer is not None):
                return None
            return ex.deadline
        if self.in_message:
            return self.message_start + self.server.read_timeout_s
        if self.server.closing:
            return None
        return self.idle_since + KEEP_ALIVE_S

    def _arm(self) -> None:
        """One timer per connection, made only when none is due before what is needed now:
        when a timer fires it looks again at what is due (`_on_timer`), so a connection
        busy with many requests makes a new timer rarely, not per request."""
        due = self._due()
        if due is None or (self.timer is not None and self.timer_at <= due):
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = due
        self.timer = self.loop.call_later(max(due - perf_counter(), 0.0), self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        due = self._due()
        if due is None:
            return
        if due > perf_counter():  # things moved on since the timer was made
            self._arm()
            return
        if self.queue:
            ex = self.queue[0]
            if ex.written:  # its unwanted body never came in whole
                self.close()
                return
            ex.expire()
            if ex.answer is not None:
                self._write(ex, ex.answer)
        elif self.in_message:  # its headers never came in whole
            timeout = self.server.read_timeout_s
            self._fail(RequestTimeoutError(f"the request did not arrive within {timeout:g} s"))
        else:
            self.close()  # idle for KEEP_ALIVE_S

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail(self, exc: BaseException) -> None:
        """Answer what cannot be parsed or timed out before it was a request; then close."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        ex, answer = self.edge.reject(exc)
        if not self.queue:  # else an answer is due first: the connection just closes
            lines = [STATUS_LINES[answer.status], self.server.date()]
            lines += [name + b": " + value + b"\r\n" for name, value in self.edge.head(ex, answer)]
            transport.write(b"".join([*lines, CLOSE, b"\r\n", answer.body]))
        self.edge.finish(ex, answer.status)
        transport.close()

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES:
            raise HeadersTooLargeError(f"the request head is over {MAX_HEAD_BYTES} bytes")

    def _pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.paused = False
            self.transport.resume_reading()

    # -- shutdown ----------------------------------------------------------------------------

    def finish_up(self) -> None:
        """Shutdown: close now when idle, else after the answer in progress."""
        if not self.queue and not self.in_message and self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        """Close once what was written is sent."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
