"""
Testing code that uses rpcd without sockets, as C{treq.testing} does for
HTTP: a client and a server connected in memory, pumped by hand::

    from rpcd.testing import MemoryConnection

    conn = MemoryConnection([Arith()])
    d = conn.client.Arith.Multiply(A=7, B=8)
    conn.flush()
    assert self.successResultOf(d) == 56

Time is a L{twisted.internet.task.Clock}, so deadlines and timers are
advanced by hand too (C{conn.clock.advance(5)}).
"""

from __future__ import annotations

from typing import Any, Iterable

from twisted.internet.task import Clock
from twisted.test import iosim

from rpcd.client.client import Client, codec_class
from rpcd.server.factory import Limits, RPCServer
from rpcd.core.service import ServiceRegistry


class MemoryConnection:
    """
    A client connected to an in-memory server.

    @ivar client: the L{rpcd.client.Client}.
    @ivar server: the L{rpcd.server.RPCServer} (its C{registry} has the
        services).
    @ivar server_protocol: the server's protocol for this connection.
    @ivar clock: the clock both sides use.
    @ivar pump: the L{twisted.test.iosim.IOPump} moving bytes.
    """

    def __init__(self, services: Iterable[Any] | ServiceRegistry = (), *,
                 codec: str = "native", clock: Clock | None = None,
                 limits: Limits = Limits(), authenticator: Any = None) -> None:
        """
        @param services: service classes or instances, or a ready registry.
        @param codec: the client's wire protocol.
        @param clock: a clock to share; a new one by default.
        @param limits: the server's limits.
        @param authenticator: checks logins (see L{rpcd.daemon.login.Authenticator}).
        """
        if isinstance(services, ServiceRegistry):
            registry = services
        else:
            registry = ServiceRegistry()
            for item in services:
                registry.add(item)
        self.clock = clock or Clock()
        self.server = RPCServer(registry, self.clock, limits, authenticator)
        factory = self.server.factory()
        channel = codec_class(codec)(self.clock)
        self.channel, self.server_protocol, self.pump = iosim.connectedServerAndClient(
            lambda: factory.buildProtocol(None), lambda: channel, greet=False, clock=self.clock)
        self.flush()
        self.client = Client(channel)

    def flush(self) -> None:
        """
        Move bytes both ways until neither side has more to say.
        """
        self.pump.flush()

    def disconnect(self) -> None:
        """
        Drop the connection (both sides see connectionLost).
        """
        self.channel.transport.loseConnection()
        self.flush()
