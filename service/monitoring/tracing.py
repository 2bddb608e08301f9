"""OpenTelemetry traces of requests, for every transport: off unless OTEL_* asks for them.

`tracing_from_env()` builds a tracer provider from the standard OpenTelemetry variables, or
returns None: then no request builds a span or calls OpenTelemetry at all (each transport
checks `tracing is None` once per request). Traces are on when `OTEL_TRACES_EXPORTER` names
an exporter (`otlp`, `console`) or an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
keeps them off. The SDK reads the rest itself: `OTEL_SERVICE_NAME` (default here:
`verdict`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`,
`OTEL_EXPORTER_OTLP_*` (endpoint, headers, timeout, certificate, protocol: `http/protobuf`
by default, or `grpc`). Incoming context is read with the propagators of `OTEL_PROPAGATORS`
(W3C `traceparent`/`tracestate` and baggage by default).

A request has one server span (`RequestTrace`) with children: `decode` and `encode` (made
by the transport), `queue wait` and `model run` (made by the data plane from the batcher's
timings; the model run carries the rows of the run and links to the spans of the other
requests merged into it). Spans are handed to a batch processor that exports them from its
own thread: ending a span never blocks the event loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:  # OpenTelemetry is imported only once traces are on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from service.models.batching import BatchResult

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
DEFAULT_SERVICE_NAME = "verdict"
DEFAULT_OTLP_PROTOCOL = "http/protobuf"  # the OpenTelemetry specification's default
INSTRUMENTATION = "verdict"


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something verdict cannot export to."""


def _otlp_exporter(env: Mapping[str, str]) -> Any:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or DEFAULT_OTLP_PROTOCOL
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    raise TracingConfigError(
        f"OTLP protocol {protocol!r} is not supported; use grpc or http/protobuf"
    )


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "otlp":
        return _otlp_exporter(env)
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    raise TracingConfigError(
        f"OTEL_TRACES_EXPORTER {name!r} is not supported; use otlp, console or none"
    )


def provider_from_env(environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """A tracer provider with the exporters the environment names, or None (traces off)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = env.get("OTEL_TRACES_EXPORTER")
    if named is None and not any(env.get(v) for v in ENDPOINT_VARIABLES):
        return None
    names = [n.strip() for n in (named or "otlp").split(",") if n.strip() not in ("", "none")]
    if not names:
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler follows OTEL_TRACES_SAMPLER
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    return provider


class Tracing:
    """Starts the server span of each request on one tracer provider."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(INSTRUMENTATION)

    def start(
        self, name: str, header: Callable[[str], str | None], attributes: dict[str, Any]
    ) -> RequestTrace:
        """The server span of a request whose incoming context `header(name)` reads (a
        header, gRPC metadata)."""
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind

        parent = propagate.extract(None, getter=cast(Any, _Getter(header)))
        span = self.tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        return RequestTrace(self.tracer, span)

    def shutdown(self) -> None:
        """Export what is left and stop the exporters (blocks: call it off the event loop)."""
        self.provider.shutdown()


class _Getter:
    """An OpenTelemetry getter over one request's headers (the carrier argument is unused)."""

    def __init__(self, header: Callable[[str], str | None]) -> None:
        self.header = header

    def get(self, carrier: object, key: str) -> list[str] | None:
        value = self.header(key)
        return None if value is None else [value]

    def keys(self, carrier: object) -> list[str]:
        return []


class RequestTrace:
    """One request's server span and the children made for it."""

    __slots__ = ("context", "span", "tracer")

    def __init__(self, tracer: Tracer, span: Span) -> None:
        from opentelemetry.trace import set_span_in_context

        self.tracer = tracer
        self.span = span
        self.context = set_span_in_context(span)

    @property
    def tag(self) -> object:
        """What the batcher hands back for this request: its span's context (links)."""
        return self.span.get_span_context()

    @contextmanager
    def stage(self, name: str) -> Iterator[Span]:
        """A child span around a step of the request (decode, encode)."""
        span = self.tracer.start_span(name, context=self.context)
        try:
            yield span
        finally:
            span.end()

    def set(self, attributes: dict[str, Any]) -> None:
        """Attributes of the request (model, version, rows)."""
        self.span.set_attributes(attributes)

    def ran(self, submitted_ns: int, result: BatchResult) -> None:
        """The `queue wait` and `model run` children, from the batcher's timings of a
        request handed to it at `submitted_ns` (time.time_ns)."""
        from opentelemetry.trace import Link, SpanContext

        run_ns = submitted_ns + int(result.queue_s * 1e9)
        done_ns = run_ns + int(result.compute_s * 1e9)
        self.tracer.start_span("queue wait", context=self.context, start_time=submitted_ns).end(
            end_time=run_ns
        )
        mine = self.span.get_span_context()
        links = [Link(t) for t in result.tags if isinstance(t, SpanContext) and t != mine]
        run = self.tracer.start_span(
            "model run",
            context=self.context,
            start_time=run_ns,
            links=links,
            attributes={
                "verdict.batch.rows": result.run_rows,
                "verdict.batch.requests": len(result.tags),
            },
        )
        run.end(end_time=done_ns)

    def end(self, attributes: dict[str, Any], error: str | None = None) -> None:
        """End the request's span with its status attributes; `error` marks a server fault."""
        span = self.span
        span.set_attributes(attributes)
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, error))
        span.end()


def now_ns() -> int:
    """The clock spans use (ns since the epoch)."""
    return time.time_ns()
