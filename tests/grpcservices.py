"""
A service for the gRPC tests, from C{tests/grpc_probe.proto} compiled at
runtime (L{rpcd.protos.load_proto}, which needs grpcio-tools).

Serve it with C{class = "tests.grpcservices:Probe"}.
"""

from __future__ import annotations

from typing import AsyncIterator

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from rpcd.context import CallContext
from rpcd.errors import RPCError
from rpcd.protos import grpc_service, load_proto
from rpcd.service import exposed

log = Logger()

pb = load_proto("grpc_probe.proto", relative_to=__file__)


@grpc_service(pb, "rpcdtest.Probe")
class Probe:
    """Echoes, waits, counts and sums, for the tests."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[None]] = []
        self.cancelled = 0

    @exposed
    def Echo(self, request: pb.Req, context: CallContext) -> pb.Rep:
        """Return text and blob; fail with fail_code; echo x-echo and x-data-bin metadata."""
        if request.fail_code:
            raise RPCError(request.text, code=request.fail_code,
                           details=pb.Rep(text="detail", n=request.fail_code))
        for key in ("x-echo", "x-data-bin"):
            if key in context.metadata:
                context.reply_metadata[key] = context.metadata[key]
        return pb.Rep(text=request.text, blob=request.blob, n=len(request.blob))

    @exposed
    async def Wait(self, request: pb.Req) -> pb.Rep:
        """Wait until woken or cancelled; log the cancellation."""
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        log.info("Probe.Wait waiting ({text})", text=request.text)
        try:
            await d
        except CancelledError:
            self.cancelled += 1
            log.info("Probe.Wait saw its cancellation ({text})", text=request.text)
            raise
        return pb.Rep(text="woke")

    @exposed
    async def Count(self, request: pb.Req) -> AsyncIterator[pb.Rep]:
        """Send count messages, each with the request's blob."""
        for n in range(request.count):
            yield pb.Rep(n=n, blob=request.blob)

    @exposed
    async def Sum(self, requests: AsyncIterator[pb.Req]) -> pb.Rep:
        """Add up the requests' counts."""
        total = 0
        async for request in requests:
            total += request.count
        return pb.Rep(n=total)

    @exposed
    async def Chat(self, requests: AsyncIterator[pb.Req]) -> AsyncIterator[pb.Rep]:
        """Answer each request with its text upper-cased."""
        async for request in requests:
            yield pb.Rep(text=request.text.upper())
