"""
Services and an interceptor factory for the end-to-end tracing test
(L{tests.test_middleware_e2e}): a daemon records its spans in memory with
OpenTelemetry's SDK and hands them out over RPC; daemon A's C{Relay}
service calls daemon B.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rpcd.client import Client, connect
from rpcd.context import CallContext
from rpcd.service import exposed
from rpcd.tracing import Tracing

EXPORTER = InMemorySpanExporter()


def memory_tracing() -> Tracing:
    """
    The interceptor factory: installs an SDK tracer provider exporting to
    L{EXPORTER} as the global one (so the clients a service makes trace
    there too) and returns the tracing interceptor.
    """
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    return Tracing()


class Spans:
    """Hands out the daemon's finished spans."""

    @exposed
    def Dump(self) -> list[dict[str, Any]]:
        """
        @return: every finished span: name, kind, ids (hex) and attributes.
        """
        out = []
        for span in EXPORTER.get_finished_spans():
            context = span.context
            assert context is not None
            out.append({
                "name": span.name, "kind": span.kind.name,
                "trace_id": format(context.trace_id, "032x"),
                "span_id": format(context.span_id, "016x"),
                "parent_id": None if span.parent is None else format(span.parent.span_id, "016x"),
                "attributes": dict(span.attributes or {}),
            })
        return out


class Deadline:
    """Says how much of its call's deadline is left."""

    @exposed
    def Remaining(self, ctx: CallContext) -> float | None:
        """
        @return: seconds left, or None without a deadline.
        """
        return ctx.time_remaining()


class Relay:
    """Calls C{Deadline.Remaining} on another daemon, with no timeout of its own."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._client: Client | None = None

    @exposed
    async def Call(self) -> float | None:
        """
        @return: what the upstream daemon said was left of the deadline.
        """
        if self._client is None:
            self._client = await connect(self.upstream, interceptors=[Tracing()])
        result: float | None = await self._client.call("Deadline.Remaining")
        return result
