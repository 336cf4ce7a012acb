"""
Tests for L{rpcd.reverse} without sockets: the daemon's dialling services on
a C{MemoryReactorClock} (reconnects, backoff, jitter) and the listening side
over iosim.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import INegotiated
from twisted.internet.defer import DeferredQueue
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides

from rpcd.daemon.config import ConfigError, ConnectConfig
from rpcd.examples.arith import Arith
from rpcd.daemon.reverse import MAX_WAITING, _AcceptFactory, _Refused, accept, reverse_services
from rpcd.server import Limits, RPCServer
from rpcd.core.service import ServiceRegistry
from rpcd.wire.frames import PREFACE
from rpcd.wire.gobrpc import GobClientCodec


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
        """A dialled connection pinned to native is served at once: the native server sends its preface first."""
        self.start(ConnectConfig("tcp:10.0.0.5:1234", protocol="native"))
        _, transport = self.dial()
        self.assertEqual(transport.value(), PREFACE)

    def test_dialled_connection_waits_for_first_bytes(self) -> None:
        """With no protocol set, a dialled connection says nothing until the caller speaks, however long that takes."""
        self.start(ConnectConfig("tcp:10.0.0.5:1234"))
        protocol, transport = self.dial()
        self.reactor.advance(10 * Limits().handshake_timeout)
        self.assertEqual((transport.value(), transport.disconnecting, protocol._wrappedProtocol.inner), (b"", False, None))

    def test_dialled_connection_sniffs_native(self) -> None:
        """A caller that sends the native preface is served by the native protocol."""
        self.start(ConnectConfig("tcp:10.0.0.5:1234"))
        protocol, transport = self.dial()
        protocol.dataReceived(PREFACE)
        self.assertEqual((protocol._wrappedProtocol.inner.protocol_name, transport.value()), ("native", PREFACE))

    def test_dialled_connection_sniffs_gob(self) -> None:
        """A Go caller's gob bytes are served by the gob protocol, which answers them."""
        self.start(ConnectConfig("tcp:10.0.0.5:1234"))
        protocol, transport = self.dial()
        codec = GobClientCodec()
        protocol.dataReceived(codec.encode_request(1, "Arith.Multiply", {"A": 6, "B": 7}))
        self.assertEqual(protocol._wrappedProtocol.inner.protocol_name, "gob")
        self.assertNotEqual(transport.value(), b"")

    def test_dialled_connection_sniffs_json(self) -> None:
        """A Go jsonrpc caller's first object is served by the JSON protocol, which answers it."""
        self.start(ConnectConfig("tcp:10.0.0.5:1234"))
        protocol, transport = self.dial()
        protocol.dataReceived(b'{"method":"Arith.Multiply","params":[{"A":6,"B":7}],"id":1}\n')
        self.assertEqual(protocol._wrappedProtocol.inner.protocol_name, "json")
        self.assertIn(b'"result":42', transport.value())

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
        self.start(ConnectConfig("tcp:10.0.0.5:1234", protocol="native"))
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


class AcceptLimitsTests(SynchronousTestCase):
    """The listening side has a handshake deadline, connection caps and a bounded queue."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.clients: DeferredQueue[Any] = DeferredQueue()

    def factory(self, max_waiting: int = MAX_WAITING, **limits: Any) -> _AcceptFactory:
        return _AcceptFactory("native", self.reactor, self.clients,
                              limits=Limits(**limits), max_waiting=max_waiting)

    def dial_in(self, factory: _AcceptFactory, host: str = "127.0.0.1", port: int = 40000,
                preface: bool = True) -> tuple[Any, StringTransport]:
        """A daemon connects (and sends its preface, finishing the native handshake)."""
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        if preface and not isinstance(protocol, _Refused):
            protocol.dataReceived(PREFACE)
        return protocol, transport

    def test_handshake_timeout(self) -> None:
        """A daemon that never finishes its handshake is closed after handshake_timeout, saying why."""
        factory = self.factory(handshake_timeout=5.0)
        with capturedLogs() as events:
            protocol, transport = self.dial_in(factory, preface=False)
            self.reactor.advance(4.9)
            self.assertFalse(transport.disconnecting)
            self.reactor.advance(0.1)
        self.assertTrue(transport.disconnected)
        self.assertIn("did not finish its handshake within 5 s", formatEvent(events[-1]))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((factory.caps.connections, self.clients.pending), (0, []))

    def test_handshake_in_time(self) -> None:
        """A daemon that finishes its handshake in time is queued and its deadline cancelled."""
        factory = self.factory(handshake_timeout=5.0)
        _, transport = self.dial_in(factory)
        self.assertEqual(len(self.clients.pending), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(60)
        self.assertFalse(transport.disconnecting)

    def test_handshake_timeout_disabled(self) -> None:
        """handshake_timeout = 0 sets no deadline."""
        self.dial_in(self.factory(handshake_timeout=0), preface=False)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_max_connections(self) -> None:
        """Beyond max_connections a new connection is refused (closed at once, logged) until one closes."""
        factory = self.factory(max_connections=2)
        first, _ = self.dial_in(factory, port=1)
        self.dial_in(factory, port=2)
        with capturedLogs() as events:
            refused, transport = self.dial_in(factory, port=3)
        self.assertIsInstance(refused, _Refused)
        self.assertTrue(transport.disconnected)
        self.assertIn("limits.max_connections = 2", events[0]["why"])
        self.assertEqual(factory.caps.refused, 1)
        self.successResultOf(self.clients.get())
        first.connectionLost(Failure(ConnectionDone()))
        admitted, _ = self.dial_in(factory, port=4)
        self.assertNotIsInstance(admitted, _Refused)

    def test_max_connections_per_peer(self) -> None:
        """max_connections_per_peer caps the connections from one host, not from the others."""
        factory = self.factory(max_connections_per_peer=1)
        self.dial_in(factory, host="10.0.0.1")
        refused, _ = self.dial_in(factory, host="10.0.0.1", port=2)
        other, _ = self.dial_in(factory, host="10.0.0.2")
        self.assertIsInstance(refused, _Refused)
        self.assertNotIsInstance(other, _Refused)

    def test_queue_bound_at_connect(self) -> None:
        """With max_waiting clients not taken, a new connection is refused at once, and admitted again once one is taken."""
        factory = self.factory(max_waiting=2)
        self.dial_in(factory, port=1)
        self.dial_in(factory, port=2)
        with capturedLogs() as events:
            refused, _ = self.dial_in(factory, port=3)
        self.assertIsInstance(refused, _Refused)
        self.assertIn("(max_waiting = 2)", events[0]["why"])
        self.successResultOf(self.clients.get())
        admitted, _ = self.dial_in(factory, port=4)
        self.assertNotIsInstance(admitted, _Refused)
        self.assertEqual(len(self.clients.pending), 2)

    def test_queue_bound_at_arrival(self) -> None:
        """Connections that finish their handshakes while the queue is full are closed, saying why."""
        factory = self.factory(max_waiting=1)
        waiting = [self.dial_in(factory, port=n, preface=False) for n in (1, 2)]
        for protocol, _ in waiting:
            protocol.dataReceived(PREFACE)
        self.assertEqual(len(self.clients.pending), 1)
        self.assertFalse(waiting[0][1].disconnecting)
        self.assertTrue(waiting[1][1].disconnected)

    def test_dead_client_leaves_queue(self) -> None:
        """A client whose connection closes before it is taken leaves the queue, freeing its place."""
        factory = self.factory(max_waiting=1)
        protocol, _ = self.dial_in(factory, port=1)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((self.clients.pending, factory.caps.connections), ([], 0))
        self.dial_in(factory, port=2)
        client = self.successResultOf(self.clients.get())
        self.assertIsNone(client.channel.lost_reason)

    def test_bad_max_waiting(self) -> None:
        """accept() with max_waiting below 1 fails with ValueError."""
        self.failureResultOf(accept("tcp:0", reactor=self.reactor, max_waiting=0), ValueError)

    def test_limits_passed_through(self) -> None:
        """accept() builds its factory with the given limits and queue bound."""
        listener = self.successResultOf(accept("tcp:0", reactor=self.reactor,
                                               limits=Limits(handshake_timeout=3.0), max_waiting=7))
        factory = self.reactor.tcpServers[0][1]
        self.assertEqual((factory.limits.handshake_timeout, factory.max_waiting), (3.0, 7))
        self.assertIs(factory.clients, listener.clients)
