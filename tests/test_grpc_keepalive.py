"""
Tests for keepalive on gRPC connections without sockets: the daemon's HTTP/2
PINGs on a quiet connection (driven by the sniffer's L{rpcd.keepalive.KeepAlive}
with the C{[limits]} keepalive settings), the connection closed when no ACK
comes, and the peer's PINGs bounded by the same settings.
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, PingReceived
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from rpcd.server.limits import Limits
from rpcd.server import RPCServer
from rpcd.core.service import ServiceRegistry
from rpcd.server.grpcserver import GrpcServerProtocol
from tests.grpcservices import Probe


class _Client:
    """An h2 client on a sniffing daemon connection (StringTransport)."""

    def __init__(self, **limits: Any) -> None:
        self.clock = Clock()
        registry = ServiceRegistry()
        registry.add(Probe())
        limits.setdefault("handshake_timeout", 0)
        self.server = RPCServer(registry, self.clock, Limits(**limits))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 5000))
        self.protocol = self.server.factory().buildProtocol(IPv4Address("TCP", "10.0.0.1", 5000))
        self.protocol.makeConnection(self.transport)
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.events: list[Any] = []
        self.pump()

    def pump(self, ack: bool = True) -> None:
        """Exchange bytes until both sides are quiet; the client ACKs PINGs unless told not to."""
        while True:
            out = self.h2.data_to_send() if ack else b""
            if out and not self.transport.disconnecting:
                self.protocol.dataReceived(out)
            incoming = self.transport.value()
            self.transport.clear()
            if incoming:
                self.events.extend(self.h2.receive_data(incoming))
            if not out and not incoming:
                return

    def pings(self) -> list[PingReceived]:
        return [e for e in self.events if isinstance(e, PingReceived)]


class ServerPingTests(SynchronousTestCase):
    """A quiet gRPC connection gets HTTP/2 PINGs and is closed when they go unanswered."""

    def test_ping_when_quiet(self) -> None:
        """After keepalive_interval without a read the daemon sends an HTTP/2 PING on the gRPC connection."""
        client = _Client(keepalive_interval=5, keepalive_timeout=2, idle_timeout=0)
        self.assertIsInstance(client.protocol.inner, GrpcServerProtocol)
        client.clock.advance(5)
        client.pump()
        self.assertEqual(len(client.pings()), 1)

    def test_answered_ping_keeps_connection(self) -> None:
        """A peer that ACKs the PINGs stays connected across many intervals."""
        client = _Client(keepalive_interval=5, keepalive_timeout=2, idle_timeout=0)
        for _ in range(4):
            client.clock.advance(5)
            client.pump()
            client.clock.advance(2)
        self.assertFalse(client.transport.disconnecting)
        self.assertGreaterEqual(len(client.pings()), 3)

    def test_unanswered_ping_closes(self) -> None:
        """A peer that does not ACK the PING within keepalive_timeout is disconnected, with the reason logged."""
        client = _Client(keepalive_interval=5, keepalive_timeout=2, idle_timeout=0)
        client.clock.advance(5)
        client.pump(ack=False)
        self.assertEqual(len(client.pings()), 1)
        self.assertFalse(client.transport.disconnecting)
        client.clock.advance(2)
        self.assertTrue(client.transport.disconnecting)

    def test_disabled(self) -> None:
        """With keepalive_interval 0 no PING is ever sent."""
        client = _Client(keepalive_interval=0, idle_timeout=0)
        client.clock.advance(3600)
        client.pump()
        self.assertEqual(client.pings(), [])


class ClientPingTests(SynchronousTestCase):
    """The peer's PINGs are bounded by the [limits] keepalive settings."""

    def test_strikes_from_limits(self) -> None:
        """More pings in a row than keepalive_max_ping_strikes, closer than keepalive_min_ping_interval, get GOAWAY too_many_pings."""
        client = _Client(keepalive_min_ping_interval=60, keepalive_max_ping_strikes=0, idle_timeout=0)
        client.h2.ping(b"12345678")
        client.pump()
        client.clock.advance(30)
        client.h2.ping(b"12345678")
        client.pump()
        terminated = [e for e in client.events if isinstance(e, ConnectionTerminated)]
        self.assertEqual(len(terminated), 1)
        self.assertEqual(terminated[0].error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertEqual(terminated[0].additional_data, b"too_many_pings")

    def test_no_enforcement(self) -> None:
        """With keepalive_min_ping_interval 0 the peer may ping as often as it likes."""
        client = _Client(keepalive_min_ping_interval=0, idle_timeout=0)
        for _ in range(20):
            client.h2.ping(b"12345678")
            client.pump()
        self.assertEqual([e for e in client.events if isinstance(e, ConnectionTerminated)], [])
