"""
Tests for L{rpcd.reverse} without sockets: the daemon's dialling services on
a C{MemoryReactorClock} (reconnects, backoff, jitter) and the listening side
over iosim.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import INegotiated
from twisted.internet.defer import DeferredQueue
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from rpcd.config import ConfigError, ConnectConfig
from rpcd.examples.arith import Arith
from rpcd.reverse import _AcceptFactory, accept, reverse_services
from rpcd.server import Limits, RPCServer
from rpcd.service import ServiceRegistry
from rpcd.wire.frames import PREFACE


def _server(reactor: Any) -> RPCServer:
    registry = ServiceRegistry()
    registry.add(Arith)
    return RPCServer(registry, reactor, Limits())


class ReverseServicesTests(SynchronousTestCase):
    """The daemon keeps its reverse connections up with ClientService."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.server = _server(self.reactor)
        self.delays: list[int] = []

    def policy(self, attempt: int) -> float:
        self.delays.append(attempt)
        return 10.0 * attempt

    def start(self, *connects: ConnectConfig) -> list[Any]:
        services = reverse_services(connects, self.server, self.reactor, retry_policy=self.policy)
        for service in services:
            service.startService()
            self.addCleanup(service.stopService)
        return services

    def next_retry(self) -> float:
        (call,) = self.reactor.getDelayedCalls()
        return call.getTime() - self.reactor.seconds()

    def test_one_service_per_connection(self) -> None:
        """connections = N gives N ClientServices, each dialling the endpoint at once."""
        services = self.start(ConnectConfig("tcp:10.0.0.5:1234", connections=3))
        self.assertEqual(len(services), 3)
        self.assertTrue(all(isinstance(s, ClientService) for s in services))
        self.assertEqual([(h, p) for h, p, *_ in self.reactor.tcpClients], [("10.0.0.5", 1234)] * 3)

    def test_bad_endpoint(self) -> None:
        """A client endpoint string Twisted cannot parse is a ConfigError naming the entry."""
        with self.assertRaises(ConfigError) as caught:
            reverse_services([ConnectConfig("nope:1")], self.server, self.reactor)
        self.assertIn("server.connect[0]", str(caught.exception))

    def test_retry_with_backoff(self) -> None:
        """Failed attempts are retried after the policy's growing delays."""
        self.start(ConnectConfig("tcp:10.0.0.5:1234"))
        for attempt in (1, 2, 3):
            host, port, factory, _, _ = self.reactor.tcpClients[-1]
            factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(ConnectionRefusedError()))
            self.assertEqual(self.next_retry(), 10.0 * attempt)
            self.reactor.advance(10.0 * attempt)
        self.assertEqual(len(self.reactor.tcpClients), 4)

    def dial(self, tls: bool = False) -> tuple[Any, StringTransport]:
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        if tls:
            directlyProvides(transport, INegotiated)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_serves_over_dialled_connection(self) -> None:
        """The dialled connection is served at once: the native server sends its preface first."""
        self.start(ConnectConfig("tcp:10.0.0.5:1234"))
        _, transport = self.dial()
        self.assertEqual(transport.value(), PREFACE)

    def test_reconnect_after_loss(self) -> None:
        """A connection that was up and is lost is redialled after the first delay."""
        self.start(ConnectConfig("tcp:10.0.0.5:1234"))
        protocol, _ = self.dial()
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual(self.next_retry(), 10.0)
        self.reactor.advance(10)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_early_losses_back_off(self) -> None:
        """Connections lost before they are ready (a TLS handshake the listener rejects) keep backing off."""
        self.start(ConnectConfig("tcp:10.0.0.5:1234"))
        for expected in (10.0, 20.0, 30.0):
            protocol, _ = self.dial(tls=True)
            protocol.connectionLost(Failure(ConnectionRefusedError()))
            self.assertEqual(self.next_retry(), expected)
            self.reactor.advance(expected)
        protocol, _ = self.dial(tls=True)
        protocol.handshakeCompleted()
        protocol.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual(self.next_retry(), 10.0)

    def test_default_policy_has_jitter(self) -> None:
        """Without a policy, the first retry waits 1.5 s plus up to 1 s of jitter."""
        (service,) = reverse_services([ConnectConfig("tcp:10.0.0.5:1234")], self.server, self.reactor)
        service.startService()
        self.addCleanup(service.stopService)
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(ConnectionRefusedError()))
        delay = self.next_retry()
        self.assertTrue(1.5 <= delay < 2.5, delay)

    def test_no_idle_timeout(self) -> None:
        """A dialled connection is kept however long it is idle."""
        self.start(ConnectConfig("tcp:10.0.0.5:1234"))
        _, transport = self.dial()
        self.reactor.advance(10 * Limits().idle_timeout)
        self.assertFalse(transport.disconnecting)


class AcceptTests(SynchronousTestCase):
    """The listening side gives a client per daemon that dials in."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.server = _server(self.reactor)

    def test_listens(self) -> None:
        """accept() listens on the endpoint and fires with a listener."""
        d = accept("tcp:1234:interface=127.0.0.1", reactor=self.reactor)
        listener = self.successResultOf(d)
        self.assertEqual(self.reactor.tcpServers[0][:1], (1234,))
        self.assertIsNotNone(listener.port)

    def test_bad_codec(self) -> None:
        """An unknown codec fails the Deferred with ValueError."""
        self.failureResultOf(accept("tcp:1234", codec="nope", reactor=self.reactor), ValueError)

    def test_call_over_reverse_connection(self) -> None:
        """A call from the listening side is served by the dialling daemon, in memory."""
        clients: DeferredQueue[Any] = DeferredQueue()
        accepting = _AcceptFactory("native", self.reactor, clients)
        dialled = self.server.factory(frozenset({"native"}), dialled=True)
        daemon_side, listener_side, pump = iosim.connectedServerAndClient(
            lambda: dialled.buildProtocol(None), lambda: accepting.buildProtocol(None), greet=False)
        pump.flush()
        client = self.successResultOf(clients.get())
        d = client.call("Arith.Multiply", {"A": 7, "B": 8})
        pump.flush()
        self.assertEqual(self.successResultOf(d), 56)
