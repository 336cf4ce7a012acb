"""
Tests for graceful drain without sockets: the native GOAWAY with its
last_id, the client's transparent retry of the calls the server did not
run, max_connection_age, the daemon's drain phases, health and probes, and
systemd's notify socket.
"""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.test.proto_helpers import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcd.drain import DaemonService
from rpcd.errors import Code, NotRun, Unavailable
from rpcd.health import HealthState
from rpcd.sdnotify import notify
from rpcd.server import Limits, RPCServer
from rpcd.service import ServiceRegistry, exposed
from rpcd.testing import MemoryConnection
from rpcd.wire.frames import GOAWAY, PREFACE, FrameReader, encode_frame

from tests.test_native import Waiter, frame


class Slow:
    """Calls that end when the test says."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[int]] = []
        self.cancelled = 0

    @exposed
    def Wait(self, n: int) -> Deferred[int]:
        d: Deferred[int] = Deferred(lambda _: setattr(self, "cancelled", self.cancelled + 1))
        self.waiting.append(d)
        return d


def _server(clock: Clock, limits: Limits = Limits()) -> tuple[RPCServer, Slow]:
    registry = ServiceRegistry()
    slow = Slow()
    registry.add(slow)
    return RPCServer(registry, clock, limits), slow


class NativeDrainTests(SynchronousTestCase):
    """The native server's graceful GOAWAY."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.server, self.slow = _server(self.clock)
        self.sniffer = self.server.factory().buildProtocol(None)
        self.transport = StringTransport()
        self.sniffer.makeConnection(self.transport)
        self.sniffer.dataReceived(PREFACE + frame(0, 5, "Slow.Wait", 1) + frame(0, 7, "Slow.Wait", 2))
        self.transport.clear()

    def frames(self) -> list[list]:
        data = self.transport.value()
        self.transport.clear()
        return list(FrameReader().feed(data))

    def test_goaway_carries_last_id_and_running_calls_finish(self) -> None:
        """GOAWAY says the highest running id; those calls are answered, then the connection closes."""
        gone = self.sniffer.drain("the server is shutting down")
        self.assertEqual(self.frames(), [[GOAWAY, 7, Code.OK, "the server is shutting down"]])
        self.assertFalse(self.transport.disconnecting)
        self.slow.waiting[0].callback(10)
        self.assertEqual(self.frames(), [[1, 5, 10]])
        self.assertFalse(self.transport.disconnecting)
        self.slow.waiting[1].callback(20)
        self.assertEqual(self.frames(), [[1, 7, 20]])
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(gone)
        self.sniffer.connectionLost(None)
        self.successResultOf(gone)
        self.assertNotIn(self.sniffer, self.server.open_connections)

    def test_calls_after_goaway_not_run(self) -> None:
        """A CALL read after the GOAWAY is refused with UNAVAILABLE and never started."""
        self.sniffer.drain("bye")
        self.frames()
        self.sniffer.dataReceived(frame(0, 9, "Slow.Wait", 3))
        [[kind, call_id, code, message, _]] = self.frames()
        self.assertEqual((kind, call_id, code), (2, 9, Code.UNAVAILABLE))
        self.assertIn("was not run", message)
        self.assertEqual(len(self.slow.waiting), 2)

    def test_stop_now_fails_what_is_left(self) -> None:
        """When the grace is over, running calls get UNAVAILABLE and their handlers are cancelled."""
        self.sniffer.drain("bye")
        self.frames()
        self.sniffer.stop_now("grace over")
        errors = self.frames()
        self.assertEqual(sorted((f[1], f[2], f[3]) for f in errors),
                         [(5, Code.UNAVAILABLE, "grace over"), (7, Code.UNAVAILABLE, "grace over")])
        self.assertEqual(self.slow.cancelled, 2)
        self.assertTrue(self.transport.disconnecting)

    def test_idle_connection_closes_at_once(self) -> None:
        """A connection with nothing running sends GOAWAY with last_id 0 and closes."""
        for d in self.slow.waiting:
            d.callback(0)
        self.frames()
        self.sniffer.drain("bye")
        self.assertEqual(self.frames(), [[GOAWAY, 0, Code.OK, "bye"]])
        self.assertTrue(self.transport.disconnecting)


class MaxConnectionAgeTests(SynchronousTestCase):
    """limits.max_connection_age and its grace."""

    def test_aged_connection_goes_away_then_closes_after_grace(self) -> None:
        """After the age (less jitter) the peer gets GOAWAY; after the grace its calls fail and it closes."""
        clock = Clock()
        server, slow = _server(clock, Limits(max_connection_age=100, max_connection_age_grace=10,
                                                 keepalive_interval=0))  # no PING in between
        server.jitter = lambda: 0.5  # the age becomes 95 s
        sniffer = server.factory().buildProtocol(None)
        transport = StringTransport()
        sniffer.makeConnection(transport)
        sniffer.dataReceived(PREFACE + frame(0, 1, "Slow.Wait", 1))
        transport.clear()
        clock.advance(94.9)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.1)
        [goaway] = FrameReader().feed(transport.value())
        self.assertEqual(goaway[:3], [GOAWAY, 1, Code.OK])
        self.assertIn("limits.max_connection_age", goaway[3])
        transport.clear()
        clock.advance(10)
        [[_, call_id, code, _, _]] = FrameReader().feed(transport.value())
        self.assertEqual((call_id, code), (1, Code.UNAVAILABLE))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(slow.cancelled, 1)


class ClientGoawayTests(SynchronousTestCase):
    """The client keeps what the server will answer and retries the rest."""

    def test_channel_fails_only_calls_above_last_id(self) -> None:
        """Calls up to last_id stay pending and succeed; those above fail NotRun; new ones are not sent."""
        conn = MemoryConnection([Waiter()])
        channel = conn.channel
        first = channel.call("Waiter.Wait", 1)
        second = channel.call("Waiter.Wait", 2)
        conn.flush()
        channel.dataReceived(encode_frame([GOAWAY, 1, 0, "draining"]))
        self.assertNoResult(first)
        self.failureResultOf(second, NotRun)
        self.failureResultOf(channel.call("Waiter.Wait", 3), NotRun)
        channel.dataReceived(encode_frame([1, 1, 11]))
        self.assertEqual(self.successResultOf(first), 11)

    def test_protocol_error_goaway_still_fails_everything(self) -> None:
        """A GOAWAY with a nonzero code fails every pending call at once, as before."""
        conn = MemoryConnection([Waiter()])
        d = conn.channel.call("Waiter.Wait", 1)
        conn.flush()
        conn.channel.dataReceived(encode_frame([GOAWAY, 1, 3, "protocol error: x"]))
        failure = self.failureResultOf(d, Unavailable)
        self.assertNotIsInstance(failure.value, NotRun)

    def test_client_retries_on_a_new_connection(self) -> None:
        """A Client sends calls the server did not run, and new calls, on a new connection, unseen by the caller."""
        clock = Clock()
        old_waiter, new_waiter = Waiter(), Waiter()
        old = MemoryConnection([old_waiter], clock=clock)
        new = MemoryConnection([new_waiter], clock=clock)
        client = old.client
        dials = []

        def redial() -> Deferred:
            dials.append(1)
            return succeed(new.channel)
        client.redial = redial
        first = client.call("Waiter.Wait", 1)
        second = client.call("Waiter.Wait", 2)
        old.flush()
        old.server_protocol.drain("the server is shutting down")
        old.flush()
        later = client.call("Waiter.Wait", 3)
        new.flush()
        self.assertEqual(dials, [1])
        self.assertIs(client.channel, new.channel)
        # The GOAWAY named id 2, the last running: both old calls are answered on the old connection.
        self.assertEqual([len(old_waiter.waiting), len(new_waiter.waiting)], [2, 1])
        old_waiter.waiting[0].callback(10)
        old_waiter.waiting[1].callback(20)
        old.flush()
        new_waiter.waiting[0].callback(30)
        new.flush()
        self.assertEqual([self.successResultOf(d) for d in (first, second, later)], [10, 20, 30])

    def test_client_retries_call_above_last_id(self) -> None:
        """A call the server did not read before its GOAWAY is sent again on the new connection."""
        old_waiter, new_waiter, old, new = _redialling()
        client = old.client
        kept = client.call("Waiter.Wait", 1)
        old.flush()
        retried = client.call("Waiter.Wait", 2)  # written, not yet read by the server
        old.channel.dataReceived(encode_frame([GOAWAY, 1, 0, "draining"]))
        new.flush()
        self.assertEqual([len(old_waiter.waiting), len(new_waiter.waiting)], [1, 1])
        new_waiter.waiting[0].callback(2)
        new.flush()
        self.assertEqual(self.successResultOf(retried), 2)
        self.assertNoResult(kept)

    def test_cancel_a_call_sent_again_cancels_it_on_the_new_connection(self) -> None:
        """Cancelling a call that was sent again after a GOAWAY cancels it on the new connection."""
        old_waiter, new_waiter, old, new = _redialling()
        client = old.client
        retried = client.call("Waiter.Wait", 1)
        old.channel.dataReceived(encode_frame([GOAWAY, 0, 0, "draining"]))
        new.flush()
        self.assertEqual(len(new_waiter.waiting), 1)
        retried.cancel()
        new.flush()
        self.failureResultOf(retried, CancelledError)
        self.assertEqual(new_waiter.cancelled, 1)
        self.assertEqual(new.channel.pending, {})

    def test_call_not_run_again_and_again_fails(self) -> None:
        """A call no server runs is sent again three times, then fails with NotRun."""
        clock = Clock()
        conns = [MemoryConnection([Waiter()], clock=clock) for _ in range(5)]
        client = conns[0].client
        dialled = iter(conns[1:])
        client.redial = lambda: succeed(next(dialled).channel)
        d = client.call("Waiter.Wait", 1, timeout=60)
        for conn in conns[:4]:
            conn.channel.dataReceived(encode_frame([GOAWAY, 0, 0, "draining"]))
        failure = self.failureResultOf(d, NotRun)
        self.assertIn("went away before running call", failure.value.message)
        self.assertIs(client.channel, conns[3].channel)

    def test_failed_redial_says_why(self) -> None:
        """When the new connection cannot be made, the call fails with UNAVAILABLE naming both reasons."""
        conn = MemoryConnection([Waiter()])
        conn.client.redial = lambda: _failed(ConnectionRefusedError("refused"))
        conn.channel.dataReceived(encode_frame([GOAWAY, 0, 0, "draining"]))
        failure = self.failureResultOf(conn.client.call("Waiter.Wait", 1), Unavailable)
        self.assertIn("went away (draining) and reconnecting failed", failure.value.message)


def _redialling() -> tuple[Waiter, Waiter, MemoryConnection, MemoryConnection]:
    """
    @return: two waiters and two connections on one clock, the old one's
        client redialling to the new one.
    """
    clock = Clock()
    old_waiter, new_waiter = Waiter(), Waiter()
    old = MemoryConnection([old_waiter], clock=clock)
    new = MemoryConnection([new_waiter], clock=clock)
    old.client.redial = lambda: succeed(new.channel)
    return old_waiter, new_waiter, old, new


def _failed(error: Exception) -> Deferred:
    d: Deferred = Deferred()
    d.errback(error)
    return d


class HealthTests(SynchronousTestCase):
    """The shared health state."""

    def test_readiness_and_overrides(self) -> None:
        """Not ready while starting; services set their own status; unknown ones are unknown."""
        registry = ServiceRegistry()
        registry.add(Slow)
        health = HealthState(registry)
        self.assertEqual(health.status(""), "NOT_SERVING")
        health.set_ready(True)
        self.assertEqual([health.status(""), health.status("Slow"), health.status("Nope")],
                         ["SERVING", "SERVING", "SERVICE_UNKNOWN"])
        changed = health.changed()
        health.set_status("Slow", False)
        self.successResultOf(changed)
        self.assertEqual(health.status("Slow"), "NOT_SERVING")
        health.set_ready(False)
        self.assertEqual(health.status(""), "NOT_SERVING")

    def test_builtin_and_grpc_health_agree(self) -> None:
        """Health.Check and grpc.health.v1 read the same status, and Health.Watch streams changes."""
        from rpcd.builtin import Health
        from rpcd.grpcstd import GrpcHealth
        from rpcd.pb import health_pb2
        registry = ServiceRegistry()
        registry.add(Slow)
        registry.health = HealthState(registry)  # type: ignore[attr-defined]
        registry.health.set_ready(True)
        builtin, grpc = Health(registry), GrpcHealth(registry)
        grpc.set_status("Slow", False)
        self.assertEqual(builtin.Check("Slow"), "NOT_SERVING")
        response = grpc.Check(health_pb2.HealthCheckRequest(service="Slow"))
        self.assertEqual(response.status, health_pb2.HealthCheckResponse.NOT_SERVING)
        watch = builtin.Watch("")
        self.assertEqual(self.successResultOf(ensureDeferred(watch.__anext__())), "SERVING")
        following = ensureDeferred(watch.__anext__())
        self.assertNoResult(following)
        registry.health.set_ready(False)
        self.assertEqual(self.successResultOf(following), "NOT_SERVING")


class ProbeTests(SynchronousTestCase):
    """GET /healthz and /readyz."""

    def _get(self, server: RPCServer, path: str, host: str = "10.1.2.3:1234") -> bytes:
        sniffer = server.factory().buildProtocol(None)
        transport = StringTransport()
        sniffer.makeConnection(transport)
        sniffer.dataReceived(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return transport.value()

    def test_probe_codes(self) -> None:
        """/healthz is 200 while running; /readyz is 503 starting, 200 ready, 503 draining; any Host."""
        server, _ = _server(Clock())
        health = server.registry.health = HealthState(server.registry)  # type: ignore[attr-defined]
        self.assertTrue(self._get(server, "/healthz").startswith(b"HTTP/1.1 200 "))
        self.assertTrue(self._get(server, "/readyz").startswith(b"HTTP/1.1 503 "))
        health.set_ready(True)
        self.assertTrue(self._get(server, "/readyz").startswith(b"HTTP/1.1 200 "))
        health.draining = True
        health.set_ready(False)
        answer = self._get(server, "/readyz")
        self.assertTrue(answer.startswith(b"HTTP/1.1 503 "))
        self.assertIn(b"draining", answer)
        # Other paths still check the Host.
        self.assertTrue(self._get(server, "/debug/rpc").startswith(b"HTTP/1.1 421 "))

    def test_draining_http_says_connection_close(self) -> None:
        """A request read before the drain is answered with Connection: close, then the connection closes."""
        server, slow = _server(Clock())
        sniffer = server.factory().buildProtocol(None)
        transport = StringTransport()
        sniffer.makeConnection(transport)
        body = b'{"jsonrpc":"2.0","id":1,"method":"Slow.Wait","params":[1]}'
        sniffer.dataReceived(b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        sniffer.drain("bye")
        self.assertFalse(transport.disconnecting)
        slow.waiting[0].callback(4)
        answer = transport.value()
        self.assertIn(b"Connection: close", answer)
        self.assertIn(b'"result":4', answer.replace(b" ", b""))
        self.assertTrue(transport.disconnecting)


class _FakeConnection:
    def __init__(self) -> None:
        self.inner = None
        self.drained: list[str] = []
        self.stopped: list[str] = []
        self.gone: Deferred[None] = Deferred()

    def drain(self, why: str) -> Deferred[None]:
        self.drained.append(why)
        return self.gone

    def stop_now(self, why: str) -> None:
        self.stopped.append(why)


class DaemonDrainTests(SynchronousTestCase):
    """The daemon's drain phases."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.server, _ = _server(self.clock)
        self.health = HealthState(self.server.registry)
        self.notes: list[str] = []
        self.daemon = DaemonService(self.server, self.health, 30.0, notify=self.notes.append)
        self.daemon.startService()
        self.clock.advance(0)

    def test_ready_then_drained_in_order(self) -> None:
        """Ready with READY=1 at start; on stop NOT_SERVING and STOPPING=1 first, then connections drain."""
        self.assertEqual((self.health.ready, self.notes), (True, ["READY=1"]))
        conn = _FakeConnection()
        self.server.open_connections.add(conn)  # type: ignore[arg-type]
        stopped = self.daemon.stopService()
        self.assertEqual((self.health.ready, self.health.draining), (False, True))
        self.assertEqual(self.notes, ["READY=1", "STOPPING=1"])
        self.assertEqual(conn.drained, ["the server is shutting down"])
        self.assertNoResult(stopped)
        conn.gone.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(conn.stopped, [])

    def test_grace_over_stops_what_is_left(self) -> None:
        """After shutdown_grace the connections left are stopped, and the stop completes."""
        conn = _FakeConnection()
        self.server.open_connections.add(conn)  # type: ignore[arg-type]
        stopped = self.daemon.stopService()
        self.clock.advance(29.9)
        self.assertEqual(conn.stopped, [])
        self.clock.advance(0.1)
        self.assertEqual(len(conn.stopped), 1)
        self.assertIn("server.shutdown_grace", conn.stopped[0])
        self.assertNoResult(stopped)
        self.clock.advance(1.0)  # a peer that does not read its last bytes is not waited for
        self.successResultOf(stopped)

    def test_stop_now_skips_the_wait(self) -> None:
        """A second signal (stop_now) closes everything without waiting for the grace."""
        conn = _FakeConnection()
        self.server.open_connections.add(conn)  # type: ignore[arg-type]
        stopped = self.daemon.stopService()
        self.daemon.stop_now()
        self.assertEqual(conn.stopped, ["the server shut down at once (second signal)"])
        conn.gone.callback(None)
        self.successResultOf(stopped)


class NotifyTests(SynchronousTestCase):
    """systemd's notify socket."""

    def test_sends_datagram(self) -> None:
        """With NOTIFY_SOCKET set, the state goes to that Unix datagram socket."""
        path = os.path.join(tempfile.mkdtemp(), "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(path)
        self.assertTrue(notify("READY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(sock.recv(100), b"READY=1")

    def test_unset_or_broken(self) -> None:
        """Without NOTIFY_SOCKET nothing is sent; a socket that is gone is logged, not raised."""
        self.assertFalse(notify("READY=1", {}))
        self.assertFalse(notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}))
        self.flushLoggedErrors()




class _Recorder(Protocol):
    """A TLS client's application protocol: keeps what it reads and its loss."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True


class TLSDrainTests(SynchronousTestCase):
    """Drain over TLS (a real OpenSSL session through iosim)."""

    def test_idle_tls_connection_closes_at_once(self) -> None:
        """An idle TLS connection is closed when it drains, though its read throttle is a registered producer (Twisted's TLS waits for producers to unregister before it closes)."""
        from OpenSSL.crypto import PKey, X509
        from twisted.internet.protocol import ClientFactory
        from twisted.internet.ssl import CertificateOptions
        from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
        from twisted.test.iosim import FakeTransport, connect

        from rpcd import certs
        ca = certs.create_ca()
        issued = certs.issue_server_certificate(ca)
        options = CertificateOptions(privateKey=PKey.from_cryptography_key(issued.private_key),
                                     certificate=X509.from_cryptography(issued.certificate))
        clock = Clock()
        server, slow = _server(clock)
        server_factory = TLSMemoryBIOFactory(options, False, server.factory())
        client_factory = TLSMemoryBIOFactory(CertificateOptions(), True,
                                             ClientFactory.forProtocol(_Recorder))
        # Unbuffered TLS transports: the buffering ones flush on the global reactor.
        server_factory.protocol = client_factory.protocol = TLSMemoryBIOProtocol
        server_tls = server_factory.buildProtocol(None)
        client_tls = client_factory.buildProtocol(None)
        pump = connect(server_tls, FakeTransport(server_tls, isServer=True),
                       client_tls, FakeTransport(client_tls, isServer=False))
        client_tls.write(PREFACE + frame(0, 5, "Slow.Wait", 1))
        pump.flush()
        slow.waiting[0].callback(10)
        pump.flush()
        [sniffer] = server.open_connections
        self.assertIsNotNone(sniffer.throttle)
        recorder = client_tls.wrappedProtocol
        recorder.received = b""
        gone = sniffer.drain("bye")
        pump.flush()
        self.assertEqual(list(FrameReader().feed(recorder.received)), [[GOAWAY, 0, Code.OK, "bye"]])
        self.assertTrue(recorder.lost)
        self.successResultOf(gone)
