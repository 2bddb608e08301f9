"""The gRPC edge: grpcio's asyncio server on the event loop the HTTP server runs on.

Every RPC passes `GrpcServer._call`, whichever method it is: the request's trace (when traces
are on), the key the method needs (from the `authorization: Bearer <key>` or `x-api-key`
metadata), admission of an inference request (`max_inflight_requests`, counted apart from
HTTP's), the servicer, the one mapping of `VerdictError`s to status codes with the same
messages as over HTTP, and the request's duration in `verdict_grpc_request_duration_seconds`.

Messages are parsed and written by the servicer, not by grpcio: a request that is not a
valid message is then INVALID_ARGUMENT like any other bad input, never INTERNAL. A message
over `max_body_bytes` is refused by grpcio itself (RESOURCE_EXHAUSTED) before it is read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from service.dataplane import DataPlane
from service.dataplane.access import Access, Need
from service.errors import OverloadedError, ShuttingDownError, VerdictError, scrub_paths
from service.grpc.servicer import Servicer
from service.monitoring.metrics import Metrics
from service.settings import Settings

if TYPE_CHECKING:
    from service.monitoring.tracing import RequestTrace, Tracing

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
Handler = Callable[[bytes, "RequestTrace | None"], Awaitable[bytes]]
ERROR_CODE_KEY = "verdict-error-code"  # trailing metadata: the error's stable code
RETRY_AFTER_KEY = "retry-after"  # trailing metadata: seconds, as HTTP's Retry-After
# After the last RPC in flight has returned, how long its answer has to reach the client
# before the connections close: a client still reading a large answer (and acknowledging it)
# when the server closes would get a reset instead of its tail.
LINGER_S = 0.25
# Status codes of server faults: the request's span is marked as an error.
FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# HTTP status of a VerdictError -> its gRPC status code (docs/serving.md, "gRPC").
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    431: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}


class Rpc(NamedTuple):
    """One method: its name, what it needs of the caller, whether it is admitted as an
    inference request, and its handler."""

    name: str
    need: Need
    admit: bool
    handler: Handler


def rpc_table(servicer: Servicer) -> list[Rpc]:
    """Every method the server answers; any other is UNIMPLEMENTED."""
    return [
        Rpc("ServerLive", Need.NOTHING, False, servicer.server_live),
        Rpc("ServerReady", Need.NOTHING, False, servicer.server_ready),
        Rpc("ModelReady", Need.NOTHING, False, servicer.model_ready),
        Rpc("ServerMetadata", Need.NOTHING, False, servicer.server_metadata),
        Rpc("ModelMetadata", Need.NOTHING, False, servicer.model_metadata),
        Rpc("ModelInfer", Need.API_KEY, True, servicer.model_infer),
        Rpc("RepositoryIndex", Need.ADMIN_KEY, False, servicer.repository_index),
        Rpc("RepositoryModelLoad", Need.ADMIN_KEY, False, servicer.repository_model_load),
        Rpc("RepositoryModelUnload", Need.ADMIN_KEY, False, servicer.repository_model_unload),
    ]


def status_of(exc: VerdictError) -> grpc.StatusCode:
    """The gRPC status code of an error: overload is RESOURCE_EXHAUSTED (with a retry hint),
    other 503s UNAVAILABLE, bad input INVALID_ARGUMENT, server faults INTERNAL."""
    if isinstance(exc, OverloadedError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return STATUS_CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)


def presented_key(metadata: dict[str, str], bearer_only: bool) -> str | None:
    """The key a caller presents: `authorization: Bearer <key>`, else `x-api-key`."""
    auth = metadata.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None if bearer_only else metadata.get("x-api-key")


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """The request's text metadata by lower-case key (a repeated key keeps its first)."""
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            found.setdefault(key, value)
    return found


class GrpcServer:
    """The gRPC transport of one server process (see the module's text)."""

    def __init__(
        self,
        servicer: Servicer,
        access: Access,
        metrics: Metrics,
        tracing: Tracing | None,
        *,
        max_message_bytes: int,
        max_inflight_requests: int,
    ) -> None:
        self.access = access
        self.tracing = tracing
        self.max_message_bytes = max_message_bytes
        self.limit = max_inflight_requests
        self.active = 0  # inference requests admitted and not yet answered
        self.calls = 0  # RPCs of any kind whose handler has not returned
        self.draining = False  # set by `drain`: new RPCs are refused
        self._metrics = metrics
        self._children: dict[tuple[str, str], Any] = {}
        self._server: grpc.aio.Server | None = None
        handlers = {
            rpc.name: grpc.unary_unary_rpc_method_handler(self._behavior(rpc))
            for rpc in rpc_table(servicer)
        }
        self._handler = grpc.method_handlers_generic_handler(SERVICE, handlers)

    @classmethod
    def over(
        cls, plane: DataPlane, metrics: Metrics, tracing: Tracing | None, settings: Settings
    ) -> GrpcServer:
        """The gRPC transport over a server's data plane, metrics and tracing."""
        return cls(
            Servicer(plane),
            plane.access,
            metrics,
            tracing,
            max_message_bytes=settings.max_body_bytes,
            max_inflight_requests=settings.max_inflight_requests,
        )

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen on host:port (0: any free port); returns the port. `reuse_port` lets the
        workers of `--workers N` share the port (SO_REUSEPORT); else a port another server
        holds is an error. Raises OSError when it cannot listen."""
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers((self._handler,))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises this when the address cannot be bound
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        if bound == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._server = server
        return bound

    async def drain(self, timeout_s: float) -> None:
        """Refuse new RPCs (UNAVAILABLE, retry elsewhere), let those in flight finish for up
        to `timeout_s`, give their answers LINGER_S to reach the clients, then stop: what is
        still running is cancelled, and the port closes."""
        if self._server is None:
            return
        self.draining = True
        deadline = monotonic() + timeout_s
        while self.calls and monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(min(LINGER_S, max(0.0, deadline - monotonic())))
        await self._server.stop(max(0.0, deadline - monotonic()))

    def _behavior(self, rpc: Rpc) -> Callable[..., Awaitable[bytes]]:
        async def behavior(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            return await self._call(rpc, request, context)

        return behavior

    async def _call(
        self, rpc: Rpc, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        start = perf_counter()
        code = grpc.StatusCode.OK
        metadata: dict[str, str] | None = None
        trace = None
        if self.tracing is not None:
            metadata = _metadata(context)
            trace = self.tracing.start(
                f"{SERVICE}/{rpc.name}",
                metadata.get,
                {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": rpc.name},
            )
        admitted = False
        self.calls += 1
        try:
            try:
                if self.draining:
                    raise ShuttingDownError("the server is shutting down; retry on another one")
                if rpc.need is not Need.NOTHING:
                    if metadata is None:
                        metadata = _metadata(context)
                    bearer_only = rpc.need is Need.ADMIN_KEY
                    self.access.check(rpc.need, presented_key(metadata, bearer_only))
                if rpc.admit:
                    if 0 < self.limit <= self.active:
                        raise OverloadedError(
                            f"the server is handling {self.limit} requests already; retry shortly"
                        )
                    self.active += 1
                    admitted = True
                return await rpc.handler(request, trace)
            finally:
                self.calls -= 1
                if admitted:
                    self.active -= 1
        except VerdictError as exc:
            code = status_of(exc)
            if code in FAULTS:
                log.warning("%s", exc.message)
            trailing: list[tuple[str, str]] = [(ERROR_CODE_KEY, exc.code)]
            if exc.retry_after_s is not None:
                trailing.append((RETRY_AFTER_KEY, str(exc.retry_after_s)))
            await context.abort(code, scrub_paths(exc.message), tuple(trailing))
            raise  # pragma: no cover - abort raises
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = grpc.StatusCode.INTERNAL
            log.error("unhandled error on %s", rpc.name, exc_info=exc)
            await context.abort(
                code, "internal server error", ((ERROR_CODE_KEY, "internal_error"),)
            )
            raise  # pragma: no cover - abort raises
        finally:
            self._observe(rpc.name, code, perf_counter() - start)
            if trace is not None:
                trace.end(
                    {"rpc.grpc.status_code": code.value[0]},
                    code.name if code in FAULTS else None,
                )

    def _observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        key = (method, code.name)
        child = self._children.get(key)
        if child is None:
            child = self._metrics.histogram(self._metrics.grpc_duration.labels(*key))
            self._children[key] = child
        child.observe(seconds)
