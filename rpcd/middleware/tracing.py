"""
Tracing with OpenTelemetry (the built-in interceptor C{tracing}).

One L{Tracing} object is an interceptor for both sides:

  - on the server, it continues the caller's trace from W3C trace context
    (C{traceparent} / C{tracestate}) in the call's metadata (rpcd's native
    protocol) or in the HTTP request's headers (JSON-RPC over HTTP); gob and
    Go's jsonrpc carry no metadata, so their calls start new traces.  It
    records a C{SERVER} span and makes it current while the handler starts,
    so the calls the handler makes continue the trace;
  - on the client (C{connect(..., interceptors=[Tracing()])}), it records a
    C{CLIENT} span, child of the current span (the handler's, inside a
    daemon), and sends its trace context in the call's metadata.

Spans follow OpenTelemetry's RPC semantic conventions: named
C{Service/Method}, with C{rpc.system = "rpcd"}, C{rpc.service},
C{rpc.method}, C{rpc.rpcd.status_code} (the numeric code, as
C{rpc.grpc.status_code} is for gRPC), C{network.peer.address} and
C{rpc.rpcd.protocol}; status ERROR for codes that are errors on that side
(on a server: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
UNAVAILABLE, DATA_LOSS; on a client, every code but OK).

Only C{opentelemetry-api} is needed: without the SDK, spans are not
recorded but trace context still flows from caller to callee.  To export,
install the extra (C{pip install rpcd[otel]}) and either configure the
SDK's global tracer provider yourself, or let the interceptor make one::

    [[interceptors]]
    use = "tracing"
    options = { exporter = "otlp", service_name = "rpcd-orders" }  # or "console"

(C{otlp} sends over HTTP to C{OTEL_EXPORTER_OTLP_ENDPOINT}, by default
C{http://localhost:4318}.)  The access log shows the trace id of each call
when both are in the chain (in either order).
"""

from __future__ import annotations

from typing import Any, Callable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.errors import Code, RPCError
from rpcd.core.interceptors import TRACE_HEADERS
from rpcd.core.interfaces import IClientInterceptor, IServerInterceptor

PROPAGATOR = TraceContextTextMapPropagator()
"""W3C trace context: C{traceparent} and C{tracestate}."""

SERVER_ERRORS = frozenset({Code.UNKNOWN, Code.DEADLINE_EXCEEDED, Code.UNIMPLEMENTED,
                           Code.INTERNAL, Code.UNAVAILABLE, Code.DATA_LOSS})
"""Codes that mark a server span as an error (as for gRPC)."""


def make_provider(exporter: str, service_name: str = "rpcd") -> Any:
    """
    An SDK tracer provider exporting in batches.

    @param exporter: C{"otlp"} (HTTP) or C{"console"}.
    @param service_name: the resource's C{service.name}.
    @return: the provider.
    @raise ValueError: an unknown exporter, or the SDK (or the OTLP
        exporter) is not installed.
    """
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ValueError("exporting spans needs the OpenTelemetry SDK: pip install 'rpcd[otel]'") from None
    if exporter == "console":
        made: Any = ConsoleSpanExporter()
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ValueError("exporter 'otlp' needs opentelemetry-exporter-otlp-proto-http: "
                             "pip install 'rpcd[otel]'") from None
        made = OTLPSpanExporter()
    else:
        raise ValueError(f"unknown exporter {exporter!r} (choose otlp or console)")
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    # The batch processor exports from its own thread: the reactor never
    # waits on the network for spans.
    provider.add_span_processor(BatchSpanProcessor(made))
    return provider


def _code(outcome: Any) -> int:
    if not isinstance(outcome, Failure):
        return int(Code.OK)
    error = outcome.value
    if isinstance(error, RPCError):
        return int(error.code)
    if isinstance(error, CancelledError):
        return int(Code.CANCELLED)
    return int(Code.UNKNOWN)


def _code_name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:
        return str(code)


@implementer(IServerInterceptor, IClientInterceptor)
class Tracing:
    """
    Server and client spans, and W3C trace context in metadata.
    """

    def __init__(self, tracer_provider: Any = None, exporter: str | None = None,
                 service_name: str = "rpcd", clock: Any = None) -> None:
        """
        @param tracer_provider: the provider of spans (OpenTelemetry's
            global one by default).
        @param exporter: C{"otlp"} or C{"console"}: make an SDK provider
            exporting there instead (see L{make_provider}).
        @param service_name: the C{service.name} of that provider.
        @param clock: unused (spans are timed by OpenTelemetry); accepted
            for the config loader.
        @raise ValueError: as L{make_provider}.
        """
        if exporter is not None:
            tracer_provider = make_provider(exporter, service_name)
        self.tracer = trace.get_tracer("rpcd", tracer_provider=tracer_provider)

    def intercept(self, call: Any, proceed: Callable[[Any], Deferred[Any]]) -> Deferred[Any]:
        """
        Record a span around the call (see the module docstring).
        """
        server = call.side == "server"
        if server:
            carrier: dict[str, Any] = {}
            headers = call.session.data.get(TRACE_HEADERS)
            if headers:
                carrier.update(headers)
            for field in ("traceparent", "tracestate"):
                value = call.metadata.get(field)
                if isinstance(value, str):
                    carrier[field] = value
            parent = PROPAGATOR.extract(carrier) if carrier else otel_context.Context()
            kind = SpanKind.SERVER
        else:
            parent = otel_context.get_current()
            kind = SpanKind.CLIENT
        service, _, method = call.method.rpartition(".")
        span = self.tracer.start_span(
            f"{service}/{method}", context=parent, kind=kind,
            attributes={"rpc.system": "rpcd", "rpc.service": service, "rpc.method": method,
                        "rpc.rpcd.protocol": call.protocol,
                        "network.peer.address": call.peer})
        span_context = span.get_span_context()
        if span_context.is_valid:
            call.data["trace_id"] = format(span_context.trace_id, "032x")
        current = trace.set_span_in_context(span, parent)
        if not server:
            PROPAGATOR.inject(call.metadata, context=current)
        token = otel_context.attach(current)
        try:
            d = proceed(call)
        finally:
            otel_context.detach(token)

        def ended(outcome: Any) -> Any:
            code = _code(outcome)
            span.set_attribute("rpc.rpcd.status_code", code)
            if code != Code.OK and (not server or code in SERVER_ERRORS):
                message = getattr(outcome.value, "message", None) or str(outcome.value)
                span.set_status(Status(StatusCode.ERROR, f"{_code_name(code)}: {message}"))
            span.end()
            return outcome
        return d.addBoth(ended)
