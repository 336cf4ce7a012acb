"""
Tests for L{rpcd.keepalive} and its use by the native server and client:
PINGs on a quiet connection, closing when no answer comes, ping strikes,
and TCP keepalive on sockets.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from rpcd.errors import Unavailable
from rpcd.keepalive import KeepAlive, PingStrikes, TooManyPings
from rpcd.limits import Limits
from rpcd.server import RPCServer
from rpcd.service import ServiceRegistry, exposed
from rpcd.wire.frames import GOAWAY, PING, PONG, PREFACE, FrameReader, encode_frame
from rpcd.wire.native_client import NativeClientProtocol
from rpcd.wire.sockopts import KEEPALIVE_IDLE, set_keepalive


class _Watch:
    """A long poll that never answers by itself."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[int]] = []
        self.cancelled = 0

    @exposed
    def Wait(self) -> Deferred[int]:
        def cancel(d: Deferred[int]) -> None:
            self.cancelled += 1
        d: Deferred[int] = Deferred(cancel)
        self.waiting.append(d)
        return d


class KeepAliveTests(SynchronousTestCase):
    """L{KeepAlive} pings after quiet and expires without an answer."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.last = 0.0
        self.pings: list[int] = []
        self.closed: list[str] = []
        self.keepalive = KeepAlive(self.clock, 10, 5, lambda: self.last, self.pings.append,
                                   self.closed.append)
        self.keepalive.start()

    def test_traffic_no_ping(self) -> None:
        """A connection that reads within each interval is never pinged."""
        for _ in range(10):
            self.clock.advance(9)
            self.last = self.clock.seconds()
        self.assertEqual(self.pings, [])
        self.assertEqual(self.closed, [])

    def test_quiet_ping_answered(self) -> None:
        """After an interval of quiet one PING goes out; an answer keeps the connection."""
        self.clock.advance(10)
        self.assertEqual(self.pings, [1])
        self.clock.advance(1)
        self.last = self.clock.seconds()  # the PONG
        self.clock.advance(4)
        self.assertEqual(self.closed, [])
        self.clock.advance(6)
        self.assertEqual(self.pings, [1, 2])

    def test_no_answer(self) -> None:
        """Without any read within the timeout after the PING, the connection is closed, saying why."""
        self.clock.advance(10)
        self.clock.advance(4.9)
        self.assertEqual(self.closed, [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.closed), 1)
        self.assertIn("limits.keepalive_timeout", self.closed[0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self) -> None:
        """A stopped keepalive leaves no timer."""
        self.keepalive.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PingStrikesTests(SynchronousTestCase):
    """L{PingStrikes} refuses a peer that pings too often."""

    def test_flood(self) -> None:
        """The third PING in a row closer than the minimum interval is one strike too many with two allowed."""
        clock = Clock()
        strikes = PingStrikes(clock, 10, 2)
        strikes.ping()
        strikes.ping()
        strikes.ping()
        self.assertRaises(TooManyPings, strikes.ping)

    def test_spaced(self) -> None:
        """PINGs at the minimum interval are never strikes, and a spaced one resets the count."""
        clock = Clock()
        strikes = PingStrikes(clock, 10, 1)
        strikes.ping()
        clock.advance(1)
        strikes.ping()
        self.assertEqual(strikes.strikes, 1)
        for _ in range(5):
            clock.advance(10)
            strikes.ping()
        self.assertEqual(strikes.strikes, 0)


def _server(**limits: Any) -> tuple[RPCServer, Clock, _Watch]:
    clock = Clock()
    registry = ServiceRegistry()
    watch = _Watch()
    registry.add(watch, name="Watch")
    return RPCServer(registry, clock, Limits(**limits)), clock, watch


def _frames(transport: StringTransport) -> list[list[Any]]:
    data = transport.value()
    assert data.startswith(PREFACE)
    frames, error = FrameReader(1 << 20).split(data[len(PREFACE):])
    assert error is None
    return frames


class ServerTests(SynchronousTestCase):
    """The native server pings quiet connections, busy ones included, and refuses ping floods."""

    def connect(self, **limits: Any) -> tuple[Any, StringTransport, Clock, _Watch]:
        server, clock, watch = _server(**limits)
        addr = IPv4Address("TCP", "10.0.0.1", 40000)
        protocol = server.factory().buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        protocol.makeConnection(transport)
        protocol.dataReceived(PREFACE)
        return protocol, transport, clock, watch

    def test_vanished_peer_with_long_poll(self) -> None:
        """A peer in a long poll that stops answering is closed after interval + timeout and its call cancelled."""
        protocol, transport, clock, watch = self.connect(idle_timeout=5, keepalive_interval=30,
                                                         keepalive_timeout=10)
        protocol.dataReceived(encode_frame([0, 1, "Watch.Wait", None]))
        clock.advance(29)
        self.assertNotIn([PING, 1], _frames(transport))
        clock.advance(1)
        self.assertIn([PING, 1], _frames(transport))
        with capturedLogs() as events:
            clock.advance(10)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(any("no answer to a PING" in formatEvent(e) for e in events))
        protocol.connectionLost(Exception("aborted"))
        self.assertEqual(watch.cancelled, 1)

    def test_pong_keeps_open(self) -> None:
        """Without an idle timeout, a quiet peer is pinged, and one that answers each PING stays connected."""
        protocol, transport, clock, _ = self.connect(idle_timeout=0, keepalive_interval=30,
                                                     keepalive_timeout=10)
        for n in range(1, 4):
            clock.advance(30)
            protocol.dataReceived(encode_frame([PONG, n]))
        clock.advance(5)
        self.assertFalse(transport.disconnecting)
        self.assertEqual([f for f in _frames(transport) if f[0] == PING], [[PING, 1], [PING, 2], [PING, 3]])

    def test_idle_left_to_idle_timeout(self) -> None:
        """A quiet connection with nothing running is not pinged but closed by the idle timeout."""
        protocol, transport, clock, _ = self.connect(idle_timeout=50, keepalive_interval=30,
                                                     keepalive_timeout=10)
        clock.advance(49)
        self.assertEqual([f for f in _frames(transport) if f[0] == PING], [])
        with capturedLogs():
            clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_ping_flood(self) -> None:
        """A peer whose PINGs come too close together gets a GOAWAY with RESOURCE_EXHAUSTED."""
        protocol, transport, clock, _ = self.connect(keepalive_min_ping_interval=10,
                                                     keepalive_max_ping_strikes=2)
        with capturedLogs():
            protocol.dataReceived(encode_frame([PING, 0]) * 4)
        frames = _frames(transport)
        self.assertEqual([f[0] for f in frames], [PONG, PONG, PONG, GOAWAY])
        self.assertEqual(frames[-1][2], 8)  # RESOURCE_EXHAUSTED
        self.assertIn("too many pings", frames[-1][3])
        self.assertTrue(transport.disconnecting)


class ClientTests(SynchronousTestCase):
    """The native client pings a quiet connection and fails its calls when no answer comes."""

    def test_half_open(self) -> None:
        """Without an answer to its PING, the client fails pending calls with UNAVAILABLE."""
        clock = Clock()
        client = NativeClientProtocol(clock)
        transport = StringTransport()
        client.makeConnection(transport)
        client.dataReceived(PREFACE)
        client.start_keepalive(10, 5)
        call = client.call("Watch.Wait", None)
        clock.advance(10)
        self.assertIn(encode_frame([PING, 1]), transport.value())
        with capturedLogs():
            clock.advance(5)
        self.assertIsInstance(self.failureResultOf(call).value, Unavailable)
        self.assertTrue(transport.disconnecting)

    def test_answered(self) -> None:
        """A PONG keeps the client's connection and calls."""
        clock = Clock()
        client = NativeClientProtocol(clock)
        transport = StringTransport()
        client.makeConnection(transport)
        client.dataReceived(PREFACE)
        client.start_keepalive(10, 5)
        call = client.call("Watch.Wait", None)
        clock.advance(10)
        client.dataReceived(encode_frame([PONG, 1]))
        clock.advance(5)
        self.assertNoResult(call)
        self.assertFalse(transport.disconnecting)


class SocketOptionTests(SynchronousTestCase):
    """L{set_keepalive} turns TCP keepalive on with short probes."""

    def test_socket(self) -> None:
        """A TCP socket gets SO_KEEPALIVE and, where the OS has it, TCP_KEEPIDLE."""
        sock = socket.socket()
        self.addCleanup(sock.close)

        class Transport:
            def setTcpKeepAlive(self, on: bool) -> None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(on))

            def getHandle(self) -> socket.socket:
                return sock

        set_keepalive(Transport())
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), KEEPALIVE_IDLE)

    def test_not_a_socket(self) -> None:
        """A transport without TCP options is left alone."""
        set_keepalive(StringTransport())
