"""
Tests for the limits against abuse in L{rpcd.server}, without sockets:
idle and handshake timeouts, connection caps, write-buffer backpressure and
the cap on running handlers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rpcd import certs
from rpcd.server import protocols as server_module
from rpcd.errors import ResourceExhausted
from rpcd.examples.arith import Arith
from rpcd.backpressure import ReadThrottle, set_write_cap
from rpcd.server import Limits, RPCServer, SniffingProtocol
from rpcd.service import ServiceRegistry, exposed
from rpcd.testing import MemoryConnection
from rpcd.wire.frames import CANCEL, PING, PREFACE, encode_frame


def _peer(host: str = "10.0.0.1", port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


def _messages(events: list[dict[str, Any]]) -> list[str]:
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in events]


class _Server:
    """An RPCServer on a Clock, and a helper to open connections to it."""

    def __init__(self, **limits: Any) -> None:
        registry = ServiceRegistry()
        registry.add(Arith)
        self.clock = Clock()
        self.server = RPCServer(registry, self.clock, Limits(**limits))
        self.factory = self.server.factory()

    def connect(self, host: str = "10.0.0.1", port: int = 40000) -> tuple[Protocol, StringTransport]:
        addr = _peer(host, port)
        protocol = self.factory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        protocol.makeConnection(transport)
        return protocol, transport


class IdleTimeoutTests(SynchronousTestCase):
    """A connection without traffic or running calls is closed after idle_timeout."""

    def setUp(self) -> None:
        self.s = _Server(idle_timeout=5.0)
        self.protocol, self.transport = self.s.connect()
        self.protocol.dataReceived(PREFACE)

    def test_idle_closes(self) -> None:
        """With no traffic at all, the connection closes once idle_timeout has passed, and says why."""
        self.s.clock.advance(4.9)
        self.assertFalse(self.transport.disconnecting)
        with capturedLogs() as events:
            self.s.clock.advance(0.2)
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(any("idle for 5 s" in m for m in _messages(events)))

    def test_traffic_keeps_open(self) -> None:
        """Each read restarts the idle countdown."""
        for _ in range(5):
            self.s.clock.advance(4)
            self.protocol.dataReceived(encode_frame([CANCEL, 1]))  # PINGs this often are a flood
        self.assertFalse(self.transport.disconnecting)
        self.s.clock.advance(5.1)
        self.assertTrue(self.transport.disconnecting)

    def test_running_call_keeps_open(self) -> None:
        """A connection whose handler is still running is not idle, however long it takes."""
        waiting: Deferred[int] = Deferred()

        class Slow:
            @exposed
            def Wait(self) -> Deferred[int]:
                return waiting

        self.s.server.registry.add(Slow)
        self.protocol.dataReceived(encode_frame([0, 1, "Slow.Wait", None]))
        self.s.clock.advance(60)
        self.assertFalse(self.transport.disconnecting)
        waiting.callback(3)
        self.s.clock.advance(11)
        self.assertTrue(self.transport.disconnecting)

    def test_disabled(self) -> None:
        """idle_timeout = 0 never closes a connection for idleness (nor does keepalive when off)."""
        s = _Server(idle_timeout=0, keepalive_interval=0)
        protocol, transport = s.connect()
        protocol.dataReceived(PREFACE)
        s.clock.advance(10**6)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_timers_cancelled_on_close(self) -> None:
        """A closed connection leaves no timer behind."""
        self.protocol.connectionLost(Exception("gone"))
        self.assertEqual(self.s.clock.getDelayedCalls(), [])


@implementer(IPushProducer)
class _Producer:
    def __init__(self) -> None:
        self.state = "producing"

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


class _Headed(Protocol):
    """A stand-in for the HTTP protocol: its preamble ends at a blank line."""

    has_preamble = True
    protocol_name = "http"

    def __init__(self, server: RPCServer) -> None:
        self.server = server
        self.head = b""

    def dataReceived(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.server.preamble_done(self)
            self.head = b""
            self.server.expect_preamble(self)


class HandshakeTimeoutTests(SynchronousTestCase):
    """The handshake timeout bounds TLS, protocol identification and preambles in all."""

    def setUp(self) -> None:
        self.patch(server_module, "SERVER_PROTOCOLS",
                   {**server_module.SERVER_PROTOCOLS, "http": f"{__name__}:_Headed"})
        self.s = _Server(handshake_timeout=10.0, idle_timeout=0)

    def test_silent(self) -> None:
        """A connection that sends nothing is aborted after handshake_timeout, with a log line."""
        _, transport = self.s.connect()
        with capturedLogs() as events:
            self.s.clock.advance(10)
        self.assertTrue(transport.disconnected)
        self.assertTrue(any("no protocol identified within 10 s" in m for m in _messages(events)))

    def test_slowloris_sniffing(self) -> None:
        """Dribbling a preface a byte every 3 s does not extend the deadline."""
        protocol, transport = self.s.connect()
        for byte in PREFACE[:4]:
            self.s.clock.advance(3)
            protocol.dataReceived(bytes([byte]))
        self.assertTrue(transport.disconnected)

    def test_identified_in_time(self) -> None:
        """A connection that shows a protocol without a preamble in time is no longer timed."""
        protocol, transport = self.s.connect()
        self.s.clock.advance(9)
        protocol.dataReceived(PREFACE)
        self.s.clock.advance(100)
        self.assertFalse(transport.disconnecting)

    def test_slowloris_preamble(self) -> None:
        """An HTTP head sent a byte every 3 s is cut off at handshake_timeout, and the log names the preamble."""
        protocol, transport = self.s.connect()
        protocol.dataReceived(b"POST ")
        with capturedLogs() as events:
            for byte in b"/rpc HTTP/1.1\r\nHost: x\r\n":
                if transport.disconnected:
                    break
                self.s.clock.advance(3)
                protocol.dataReceived(bytes([byte]))
        self.assertTrue(transport.disconnected)
        self.assertLessEqual(self.s.clock.seconds(), 12)
        self.assertTrue(any("http preamble did not finish within 10 s" in m for m in _messages(events)))

    def test_preamble_done(self) -> None:
        """A head finished in time stops the deadline; expect_preamble starts a fresh one for the next head."""
        protocol, transport = self.s.connect()
        protocol.dataReceived(b"POST /rpc HTTP/1.1\r\n")
        self.s.clock.advance(8)
        protocol.dataReceived(b"\r\n")
        self.s.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        self.s.clock.advance(1)
        self.assertTrue(transport.disconnected)

    def test_tls_handshake_never_finishes(self) -> None:
        """A TLS client that never finishes its handshake is aborted at handshake_timeout, without a TLS failure line."""
        ca = certs.create_ca()
        issued = certs.issue_server_certificate(ca)
        from OpenSSL.crypto import PKey, X509
        options = CertificateOptions(privateKey=PKey.from_cryptography_key(issued.private_key),
                                     certificate=X509.from_cryptography(issued.certificate))
        tls = TLSMemoryBIOFactory(options, False, self.s.factory)
        protocol = tls.buildProtocol(_peer())
        transport = StringTransport(peerAddress=_peer())
        protocol.makeConnection(transport)
        protocol.dataReceived(b"\x16\x03\x01\x00")  # the start of a ClientHello, then nothing
        with capturedLogs() as events:
            self.s.clock.advance(10)
            self.assertTrue(transport.disconnected)
            protocol.connectionLost(Exception("aborted"))
        messages = _messages(events)
        self.assertTrue(any("the TLS handshake did not finish within 10 s" in m for m in messages), messages)
        self.assertFalse(any(m.startswith("TLS with") for m in messages), messages)

    def test_tls_to_plaintext_port(self) -> None:
        """A TLS ClientHello to a plaintext endpoint is answered in plaintext and closed, with a log line saying so."""
        protocol, transport = self.s.connect()
        with capturedLogs() as events:
            protocol.dataReceived(b"\x16\x03\x01\x02\x00\x01")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"rpcd: this endpoint does not speak TLS\r\n")
        self.assertTrue(any("does not speak TLS" in m for m in _messages(events)))


class ConnectionCapTests(SynchronousTestCase):
    """max_connections and max_connections_per_peer refuse connections at accept."""

    def setUp(self) -> None:
        self.s = _Server(max_connections=3, max_connections_per_peer=2)

    def test_per_peer(self) -> None:
        """A third connection from one host is refused and closed at once; other hosts still get in."""
        self.s.connect("10.0.0.1", 1)
        self.s.connect("10.0.0.1", 2)
        refused = self.s.factory.buildProtocol(_peer("10.0.0.1", 3))
        self.assertNotIsInstance(refused, SniffingProtocol)
        transport = StringTransport()
        refused.makeConnection(transport)
        self.assertTrue(transport.disconnected)
        self.assertIsInstance(self.s.factory.buildProtocol(_peer("10.0.0.2", 1)), SniffingProtocol)
        self.assertEqual(self.s.server.connections_by_host, {"10.0.0.1": 2})

    def test_total(self) -> None:
        """Once max_connections are open, connections from any host are refused."""
        for i in range(3):
            self.s.connect(f"10.0.0.{i}", 1)
        self.assertNotIsInstance(self.s.factory.buildProtocol(_peer("10.0.0.9")), SniffingProtocol)
        self.assertEqual((self.s.server.connections, self.s.server.refused), (3, 1))

    def test_closing_frees_a_place(self) -> None:
        """When a connection closes, its host may connect again."""
        one, _ = self.s.connect("10.0.0.1", 1)
        self.s.connect("10.0.0.1", 2)
        one.connectionLost(Exception("closed"))
        self.s.connect("10.0.0.1", 3)
        self.assertEqual(self.s.server.connections_by_host, {"10.0.0.1": 2})

    def test_unix_peers_count_only_in_total(self) -> None:
        """Unix socket peers all share one "host", so only the total cap applies to them."""
        for _ in range(3):
            protocol = self.s.factory.buildProtocol(UNIXAddress(None))
            self.assertIsInstance(protocol, SniffingProtocol)
            protocol.makeConnection(StringTransport(peerAddress=UNIXAddress(None)))
        self.assertNotIsInstance(self.s.factory.buildProtocol(UNIXAddress(None)), SniffingProtocol)

    def test_refusals_logged_once_a_second(self) -> None:
        """A flood of refusals logs one line at once, then a second later the count of the rest."""
        for i in range(3):
            self.s.connect(f"10.0.0.{i}", 1)
        with capturedLogs() as events:
            for i in range(50):
                self.s.factory.buildProtocol(_peer("10.9.9.9", i))
            self.assertEqual(len(_messages(events)), 1)
            self.s.clock.advance(1)
            self.s.factory.buildProtocol(_peer("10.9.9.9", 99))
            self.s.clock.advance(1)
        messages = [m for m in _messages(events) if m.startswith("refus")]
        self.assertEqual(len(messages), 3, messages)
        self.assertIn("limits.max_connections = 3", messages[0])
        self.assertIn("refused 49 more connection(s) in the last second", messages[1])
        self.assertIn("refused 1 more connection(s) in the last second", messages[2])
        self.assertIsNone(self.s.server.caps._refusal_flush)

    def test_dialled_not_capped(self) -> None:
        """Connections the daemon dials itself are counted but never refused."""
        for i in range(3):
            self.s.connect(f"10.0.0.{i}", 1)
        dialled = self.s.server.factory(frozenset({"native"}), dialled=True)
        self.assertIsInstance(dialled.buildProtocol(_peer("10.0.0.1")), SniffingProtocol)


class BackpressureTests(SynchronousTestCase):
    """A peer that does not read its replies stops being read."""

    def setUp(self) -> None:
        self.s = _Server(idle_timeout=0)
        self.protocol, self.transport = self.s.connect()
        self.protocol.dataReceived(PREFACE)

    def test_producer_registered(self) -> None:
        """After the hand-over, a streaming producer is registered with the transport."""
        self.assertTrue(self.transport.streaming)
        self.assertIsInstance(self.transport.producer, ReadThrottle)
        verifyObject(IPushProducer, self.transport.producer)

    def test_pause_and_resume_reading(self) -> None:
        """When the transport's buffer is full reading stops, and resumes once it drains."""
        with capturedLogs() as events:
            self.transport.producer.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        self.assertTrue(any("is not reading its replies" in m for m in _messages(events)))
        self.transport.producer.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")

    def test_protocol_with_own_producer(self) -> None:
        """A wire protocol that registered its own producer keeps it; the sniffer adds none."""
        self.patch(server_module, "SERVER_PROTOCOLS", {"native": f"{__name__}:_OwnProducer"})
        protocol, transport = self.s.connect()
        protocol.dataReceived(PREFACE)
        self.assertIsInstance(transport.producer, _Producer)
        self.assertIsNone(protocol.throttle)


class _OwnProducer(Protocol):
    """A wire protocol that does its own flow control."""

    def __init__(self, server: RPCServer) -> None:
        pass

    def connectionMade(self) -> None:
        self.transport.registerProducer(_Producer(), True)


class WriteCapTests(SynchronousTestCase):
    """L{set_write_cap} makes a socket transport pause its producer at write_buffer_bytes."""

    def transport(self, limit: int) -> tuple[FileDescriptor, _Producer]:
        fd = FileDescriptor(reactor=MemoryReactor())
        fd.connected = True
        self.assertTrue(set_write_cap(fd, limit))
        producer = _Producer()
        fd.registerProducer(producer, True)
        return fd, producer

    def test_over_twisted_default(self) -> None:
        """Twisted's own 64 KiB threshold no longer pauses when the cap is higher."""
        fd, producer = self.transport(1024 * 1024)
        fd.write(b"x" * 200 * 1024)
        self.assertEqual(producer.state, "producing")
        fd.write(b"x" * 900 * 1024)
        self.assertEqual(producer.state, "paused")

    def test_under_twisted_default(self) -> None:
        """A cap below 64 KiB pauses below it."""
        fd, producer = self.transport(1000)
        fd.write(b"x" * 900)
        self.assertEqual(producer.state, "producing")
        fd.write(b"x" * 200)
        self.assertEqual(producer.state, "paused")

    def test_read_size_unchanged(self) -> None:
        """The cap does not change how much each read asks for (bufferSize)."""
        fd, _ = self.transport(8 * 1024 * 1024)
        self.assertEqual(fd.bufferSize, FileDescriptor.bufferSize)

    def test_other_transports(self) -> None:
        """A transport that is not a Twisted file descriptor is left alone."""
        self.assertFalse(set_write_cap(StringTransport(), 10))


class _Stubborn:
    """Handlers that, once cancelled, take a while to clean up."""

    def __init__(self) -> None:
        self.release: list[Deferred[None]] = []
        self.waits: list[Deferred[None]] = []

    @exposed
    async def Hold(self) -> int:
        """Wait for ever; when cancelled, finish only once released."""
        waiting: Deferred[None] = Deferred()
        self.waits.append(waiting)
        try:
            await waiting
        except CancelledError:
            cleanup: Deferred[None] = Deferred()
            self.release.append(cleanup)
            await cleanup
            raise
        return 1


class RunningCallsCapTests(SynchronousTestCase):
    """max_calls_per_connection counts handlers that run, cancelled ones too until they end."""

    def setUp(self) -> None:
        self.service = _Stubborn()
        self.conn = MemoryConnection([self.service, Arith], limits=Limits(max_calls_per_connection=2))

    def call(self, method: str, arg: Any = None) -> Deferred[Any]:
        d = self.conn.client.call(method, arg)
        self.conn.flush()
        return d

    def test_cancelled_until_ended(self) -> None:
        """A cancelled handler still counts until it has ended; then the place is free."""
        first = self.call("_Stubborn.Hold")
        self.call("_Stubborn.Hold")
        f = self.failureResultOf(self.call("Arith.Multiply", {"A": 2, "B": 3}), ResourceExhausted)
        self.assertIn("limit 2", f.value.message)
        first.cancel()
        self.conn.flush()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(len(self.service.release), 1)
        self.failureResultOf(self.call("Arith.Multiply", {"A": 2, "B": 3}), ResourceExhausted)
        self.service.release[0].callback(None)
        self.conn.flush()
        self.assertEqual(self.successResultOf(self.call("Arith.Multiply", {"A": 2, "B": 3})), 6)

    def test_per_connection(self) -> None:
        """The cap is per connection: another connection to the same server is not affected."""
        self.call("_Stubborn.Hold")
        self.call("_Stubborn.Hold")
        other = MemoryConnection(self.conn.server.registry, limits=Limits(max_calls_per_connection=2))
        d = other.client.call("Arith.Multiply", {"A": 4, "B": 5})
        other.flush()
        self.assertEqual(self.successResultOf(d), 20)
