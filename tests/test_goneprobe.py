"""
A half-closed connection whose peer closes its socket is noticed
(L{rpcd.server.goneprobe}): on real socket pairs and a test clock, and through
the sniffer with a call running.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from rpcd.core.service import ServiceRegistry, exposed
from rpcd.server.factory import RPCServer
from rpcd.server.goneprobe import GonePeerProbe, handle_of, hung_up, probe_often
from rpcd.server.limits import Limits
from rpcd.wire.frames import PING, PREFACE, encode_frame


def _pair(test: SynchronousTestCase, family: int = socket.AF_UNIX) -> tuple[socket.socket, socket.socket]:
    """
    @return: the two ends of a connected stream socket pair (a TCP pair
        over loopback for C{AF_INET}), closed in the test's cleanup.
    """
    if family == socket.AF_UNIX:
        ours, theirs = socket.socketpair()
    else:
        listener = socket.socket()
        test.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        theirs = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    test.addCleanup(ours.close)
    test.addCleanup(theirs.close)
    return ours, theirs


def _wait_for_hang_up(sock: socket.socket) -> None:
    """
    Block until the kernel reports a hang-up or error on C{sock} (poll with
    no event asked for wakes on exactly those), or fail after a minute.
    """
    poller = select.poll()
    poller.register(sock.fileno(), 0)
    if not poller.poll(60_000):
        raise AssertionError("no hang-up reported within a minute")


class HungUpTests(SynchronousTestCase):
    """L{hung_up} tells a closed peer from a half-closed one."""

    def test_unix_half_close(self) -> None:
        """A Unix peer that shut down its sending side has not hung up."""
        ours, theirs = _pair(self)
        theirs.shutdown(socket.SHUT_WR)
        self.assertEqual(ours.recv(1), b"")
        self.assertFalse(hung_up(ours))

    def test_unix_closed(self) -> None:
        """A Unix peer that closed its socket has hung up, with no probe."""
        ours, theirs = _pair(self)
        theirs.close()
        self.assertTrue(hung_up(ours))

    def test_tcp_half_close_poked(self) -> None:
        """A TCP peer that shut down its sending side reads what is sent: no hang-up."""
        ours, theirs = _pair(self, socket.AF_INET)
        theirs.shutdown(socket.SHUT_WR)
        self.assertEqual(ours.recv(1), b"")
        ours.sendall(b"ping")
        self.assertEqual(theirs.recv(4), b"ping")  # the bytes arrived and were acknowledged
        self.assertFalse(hung_up(ours))

    def test_tcp_closed_found_by_poke(self) -> None:
        """A TCP peer that closed its socket is found gone once bytes sent to it get its host's reset."""
        ours, theirs = _pair(self, socket.AF_INET)
        theirs.close()
        self.assertEqual(ours.recv(1), b"")
        self.assertFalse(hung_up(ours))  # its FIN alone says nothing more
        ours.sendall(b"ping")
        _wait_for_hang_up(ours)
        self.assertTrue(hung_up(ours))

    def test_tcp_probes_asked(self) -> None:
        """probe_often turns TCP keepalive on with probes every interval (whole seconds)."""
        ours, _ = _pair(self, socket.AF_INET)
        probe_often(ours, 2.4)
        self.assertEqual(ours.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            self.assertEqual((ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                              ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)), (2, 2))

    def test_closed_socket(self) -> None:
        """A socket closed here counts as hung up."""
        ours, _ = _pair(self)
        ours.close()
        self.assertTrue(hung_up(ours))

    def test_probe_leaves_unix_alone(self) -> None:
        """Probes are asked for only on TCP sockets."""
        ours, _ = _pair(self)
        probe_often(ours, 1)
        self.assertEqual(ours.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 0)


class ProbeTests(SynchronousTestCase):
    """L{GonePeerProbe} checks on its clock and says so once."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.ours, self.theirs = _pair(self)
        self.reasons: list[str] = []
        self.probe = GonePeerProbe(self.clock, self.ours, 2.0, self.reasons.append)

    def test_half_closed_peer_kept(self) -> None:
        """While the peer only half-closed, every check finds it there and schedules the next."""
        self.theirs.shutdown(socket.SHUT_WR)
        self.probe.start()
        for _ in range(3):
            self.clock.advance(2.0)
        self.assertEqual((self.reasons, len(self.clock.getDelayedCalls())), ([], 1))

    def test_closed_peer_reported_once(self) -> None:
        """The first check after the peer closed reports it, and checking stops."""
        self.probe.start()
        self.clock.advance(1.9)
        self.theirs.close()
        self.assertEqual(self.reasons, [])
        self.clock.advance(0.1)
        self.assertEqual(len(self.reasons), 1)
        self.assertIn("closed its socket", self.reasons[0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_poked_each_check(self) -> None:
        """With a poke, the peer is poked at the start and at every check that finds it there, and no keepalive probe is asked for."""
        pokes: list[None] = []
        probe = GonePeerProbe(self.clock, self.ours, 2.0, self.reasons.append, lambda: pokes.append(None))
        self.theirs.shutdown(socket.SHUT_WR)
        probe.start()
        self.clock.advance(2.0)
        self.clock.advance(2.0)
        self.assertEqual(len(pokes), 3)
        self.theirs.close()
        self.clock.advance(2.0)
        self.assertEqual((len(pokes), len(self.reasons)), (3, 1))

    def test_stop(self) -> None:
        """Stopped, the probe checks no more."""
        self.probe.start()
        self.probe.stop()
        self.theirs.close()
        self.clock.advance(10)
        self.assertEqual((self.reasons, self.clock.getDelayedCalls()), ([], []))


class _Waits:
    """A service whose one method waits until cancelled."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[None]] = []
        self.cancelled = 0

    def _cancel(self, d: Deferred[None]) -> None:
        self.cancelled += 1

    @exposed
    def Wait(self) -> Deferred[None]:
        """Return when answered or cancelled."""
        d: Deferred[None] = Deferred(self._cancel)
        self.waiting.append(d)
        return d


class _SocketTransport(StringTransport):
    """A string transport whose handle is a real socket (for the probe)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "10.0.0.1", 40000))
        self.sock = sock
        self.aborted = False

    def getHandle(self) -> Any:
        return self.sock

    def abortConnection(self) -> None:
        self.aborted = True
        super().loseConnection()


class SnifferTests(SynchronousTestCase):
    """The sniffer probes a half-closed connection with calls running."""

    def start(self, family: int = socket.AF_UNIX,
              **limits: Any) -> tuple[Any, _SocketTransport, _Waits, Clock, socket.socket]:
        service = _Waits()
        registry = ServiceRegistry()
        registry.add(service, name="W")
        clock = Clock()
        server = RPCServer(registry, clock, Limits(**{"idle_timeout": 0, "handshake_timeout": 0,
                                                      "keepalive_interval": 0, **limits}))
        ours, theirs = _pair(self, family)
        transport = _SocketTransport(ours)
        protocol = server.factory().buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        protocol.dataReceived(PREFACE + encode_frame([0, 1, "W.Wait", None]))
        self.assertEqual(len(service.waiting), 1)
        protocol.readConnectionLost()
        return protocol, transport, service, clock, theirs

    def test_gone_peer_cancels_the_call(self) -> None:
        """A peer that closed its socket after its FIN: the connection is aborted and the running call cancelled."""
        protocol, transport, service, clock, theirs = self.start()
        clock.advance(1.0)
        self.assertFalse(transport.disconnecting)  # only half-closed so far
        self.assertEqual(transport.value().count(encode_frame([PING, 0])), 2)
        theirs.close()
        clock.advance(1.0)
        self.assertTrue(transport.aborted)
        self.assertEqual(service.cancelled, 0)
        protocol.connectionLost(Exception("aborted"))
        self.assertEqual(service.cancelled, 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_half_closed_peer_answered(self) -> None:
        """A half-closed peer stays connected and gets its answer, after which the probe stops with the connection."""
        protocol, transport, service, clock, theirs = self.start()
        clock.advance(5.0)
        service.waiting[0].callback(None)
        self.assertIn(encode_frame([1, 1, None]), transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        protocol.connectionLost(Exception("closed"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_half_closed_peer_outlives_keepalive(self) -> None:
        """A live half-closed peer, which cannot answer the keepalive's PING, keeps its call past keepalive_interval + keepalive_timeout; a host that vanished is left to the kernel after as long."""
        protocol, transport, service, clock, theirs = self.start(
            socket.AF_INET, keepalive_interval=60, keepalive_timeout=20)
        theirs.shutdown(socket.SHUT_WR)
        clock.pump([1.0] * 200)
        self.assertEqual((transport.disconnecting, service.cancelled), (False, 0))
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if option is not None:
            self.assertEqual(transport.sock.getsockopt(socket.IPPROTO_TCP, option), 80_000)
        service.waiting[0].callback(None)
        self.assertIn(encode_frame([1, 1, None]), transport.value())
        protocol.connectionLost(Exception("closed"))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_nothing_running(self) -> None:
        """A FIN with nothing running closes the connection at once: nothing is probed or poked."""
        clock = Clock()
        server = RPCServer(ServiceRegistry(), clock, Limits(idle_timeout=0, handshake_timeout=0,
                                                            keepalive_interval=0))
        ours, theirs = _pair(self)
        transport = _SocketTransport(ours)
        protocol = server.factory().buildProtocol(transport.getPeer())
        protocol.makeConnection(transport)
        protocol.dataReceived(PREFACE)
        transport.clear()
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertEqual((clock.getDelayedCalls(), transport.value()), ([], b""))

    def test_switched_off(self) -> None:
        """With half_close_check_interval = 0 nothing checks the peer."""
        _, transport, _, clock, theirs = self.start(half_close_check_interval=0)
        theirs.close()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(transport.disconnecting)


class HandleTests(SynchronousTestCase):
    """L{handle_of} finds the socket under a transport."""

    def test_socket_and_wrapped(self) -> None:
        """A transport's own socket, one under a wrapper, or None without one."""
        ours, _ = _pair(self)
        transport = _SocketTransport(ours)
        self.assertIs(handle_of(transport), ours)

        class Wrapper:
            def __init__(self, inner: Any) -> None:
                self.transport = inner

            def getHandle(self) -> object:
                return object()  # what a TLS transport's handle is: not a socket
        self.assertIs(handle_of(Wrapper(transport)), ours)
        self.assertIsNone(handle_of(StringTransport()))
