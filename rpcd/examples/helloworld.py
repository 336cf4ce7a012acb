"""
Seed 003's gRPC C{HelloWorldService}, answering as the seed's Go server does.

The proto is C{rpcd/examples/protos/hello_world.proto} (package
C{helloworld}), so gRPC callers use C{/helloworld.HelloWorldService/...};
rpcd's native and JSON callers use C{HelloWorldService.SayHelloWorld} with
C{{"greeting": ..., "infos": {...}}}.

The seed's server code for the three streaming methods is copied, replies and
one-second pauses included (C{delay} shortens the pauses, for tests).  The
article does not show its unary C{SayHelloWorld}; it answers
C{"Hello World !!"}, as the server of the article's earlier note did.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from rpcd.examples.protos import hello_world_pb2 as pb
from rpcd.core.protos import grpc_service
from rpcd.core.service import exposed

log = Logger()


@grpc_service(pb, "helloworld.HelloWorldService")
class HelloWorldService:
    """Greets, in the four gRPC call shapes (seed 003)."""

    def __init__(self, delay: float = 1.0, clock: Any = None) -> None:
        """
        @param delay: seconds between stream messages (the seed's
            C{time.Sleep(1 * time.Second)}).
        @param clock: the reactor's clock; the global reactor by default.
        """
        self.delay = float(delay)
        self._clock = clock

    def _sleep(self) -> Deferred[None]:
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor as clock
        return deferLater(clock, self.delay, lambda: None)

    @exposed
    def SayHelloWorld(self, request: pb.HelloWorldRequest) -> pb.HelloWorldResponse:
        """Answer one greeting."""
        log.info("Client Greeting:{greeting}", greeting=request.greeting)
        log.info("Client Info:{infos}", infos=dict(request.infos))
        return pb.HelloWorldResponse(reply="Hello World !!")

    @exposed
    async def ListHello(self, request: pb.HelloWorldRequest) -> AsyncIterator[pb.HelloWorldResponse]:
        """Answer one greeting with three replies, a second apart."""
        log.info("Client Say: {greeting}", greeting=request.greeting)
        for n in (1, 2, 3):
            yield pb.HelloWorldResponse(reply=f"ListHello Reply {request.greeting} {n}")
            await self._sleep()

    @exposed
    async def SayMoreHello(self, requests: AsyncIterator[pb.HelloWorldRequest]) -> pb.HelloWorldResponse:
        """Read every greeting, then answer once."""
        async for request in requests:
            log.info("SayMoreHello Client Say: {greeting}", greeting=request.greeting)
        return pb.HelloWorldResponse(reply="SayMoreHello Recv Muti Greeting")

    @exposed
    async def SayHelloChat(self, requests: AsyncIterator[pb.HelloWorldRequest]
                           ) -> AsyncIterator[pb.HelloWorldRequest]:
        """Log the caller's greetings while sending three of our own."""
        reading = Deferred.fromCoroutine(self._log_chat(requests))
        try:
            for n in (1, 2, 3):
                yield pb.HelloWorldRequest(greeting=f"SayHelloChat Server Say Hello {n}")
                await self._sleep()
        finally:
            reading.cancel()
            reading.addErrback(lambda _: None)  # the caller's stream may still be open

    async def _log_chat(self, requests: AsyncIterator[pb.HelloWorldRequest]) -> None:
        async for request in requests:
            log.info("SayHelloChat Client Say: {greeting}", greeting=request.greeting)
