"""
gRPC's interop C{TestService}, in rpcd's terms, for the interop test cases
(empty_stream, client_streaming, server_streaming, ping_pong, cancellation,
deadlines, status codes and messages, large_unary).

Messages are maps with gRPC's field names (snake_case)::

    SimpleRequest        {"response_size": int, "payload": {"body": bytes},
                          "response_status": {"code": int, "message": str}}
    SimpleResponse       {"payload": {"body": bytes}}
    StreamingOutputCallRequest
                         {"response_parameters": [{"size": int, "interval_us": int}],
                          "payload": {...}, "response_status": {...}}
    StreamingOutputCallResponse  {"payload": {"body": bytes}}
    StreamingInputCallRequest    {"payload": {"body": bytes}}
    StreamingInputCallResponse   {"aggregated_payload_size": int}

Every field is optional.  A C{response_status} with a non-zero code makes the
call fail with that code and message, as gRPC's test server does.  Payloads
are zero bytes.  Not in the default config; serve it with
C{[services.TestService]} (a plugin provides it).
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from twisted.internet.task import deferLater

from rpcd.core.context import CallContext
from rpcd.errors import RPCError
from rpcd.core.service import exposed

Message = dict[str, Any]


def _payload(size: int) -> Message:
    if not isinstance(size, int) or size < 0:
        raise RPCError(f"a payload size must be an integer >= 0, got {size!r}", code=3)
    return {"body": bytes(size)}


def _check_status(request: Message) -> None:
    status = request.get("response_status")
    if status and status.get("code"):
        raise RPCError(status.get("message", ""), code=int(status["code"]))


class TestService:
    """gRPC's interop test service."""

    @exposed
    def EmptyCall(self, request: Message) -> Message:
        """Answer an empty message with an empty message."""
        return {}

    @exposed
    def UnaryCall(self, request: Message) -> Message:
        """Answer with a payload of response_size bytes (or the requested status)."""
        _check_status(request)
        return {"payload": _payload(request.get("response_size", 0))}

    @exposed
    async def StreamingOutputCall(self, request: Message,
                                  ctx: CallContext) -> AsyncIterator[Message]:
        """Send one payload per response_parameters entry, in order, after its interval."""
        for parameters in request.get("response_parameters", ()):
            interval = parameters.get("interval_us", 0)
            if interval:
                await deferLater(ctx.clock, interval / 1e6)
            yield {"payload": _payload(parameters.get("size", 0))}
        _check_status(request)

    @exposed
    async def StreamingInputCall(self, requests: AsyncIterator[Message]) -> Message:
        """Sum the sizes of the caller's payloads."""
        total = 0
        async for request in requests:
            total += len(request.get("payload", {}).get("body", b""))
        return {"aggregated_payload_size": total}

    @exposed
    async def FullDuplexCall(self, requests: AsyncIterator[Message],
                             ctx: CallContext) -> AsyncIterator[Message]:
        """Answer each request at once with its response_parameters payloads."""
        async for request in requests:
            _check_status(request)
            for parameters in request.get("response_parameters", ()):
                interval = parameters.get("interval_us", 0)
                if interval:
                    await deferLater(ctx.clock, interval / 1e6)
                yield {"payload": _payload(parameters.get("size", 0))}

    @exposed
    async def HalfDuplexCall(self, requests: AsyncIterator[Message]) -> AsyncIterator[Message]:
        """Read every request first, then answer them all in order."""
        received = [request async for request in requests]
        for request in received:
            _check_status(request)
            for parameters in request.get("response_parameters", ()):
                yield {"payload": _payload(parameters.get("size", 0))}
