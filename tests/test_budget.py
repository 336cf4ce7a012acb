"""
Tests for the memory budget, without sockets: a peer whose replies are over
C{write_buffer_bytes} stops getting calls started (native, gob, JSON), the
JSON-RPC 2.0 batch limits, the daemon-wide input budget and the message
deadline (L{rpcd.budget}), and half-close.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from rpcd.backpressure import ReadThrottle, set_write_cap
from rpcd.budget import InputBudget, InputGuard
from rpcd.examples.arith import Arith
from rpcd.server import Limits, RPCServer, SniffingProtocol
from rpcd.service import ServiceRegistry, exposed
from rpcd.wire.frames import PREFACE, RESULT, FrameReader, encode_frame, pack_length
from rpcd.wire.gobrpc import GobClientCodec
from rpcd.wire.gobserver import GobServerProtocol


class _Big:
    """A service with a large result, counting its calls, and one that waits."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.calls = 0
        self.waiting: list[Deferred[int]] = []

    @exposed
    def Get(self, key: str) -> str:
        """Return C{size} bytes of text."""
        self.calls += 1
        return "x" * self.size

    @exposed
    def Wait(self) -> Deferred[int]:
        """Return when the test says."""
        d: Deferred[int] = Deferred()
        self.waiting.append(d)
        return d


class _Socket(FileDescriptor):
    """
    A socket transport on a L{MemoryReactor} (so the write cap applies as on
    a real one) whose peer reads only when the test calls L{drain}.
    """

    def __init__(self) -> None:
        super().__init__(reactor=MemoryReactor())
        self.connected = True
        self.received = b""
        self.aborted = False

    def writeSomeData(self, data: bytes) -> int:
        return 0  # the peer reads nothing

    def drain(self) -> None:
        """The peer reads everything queued."""
        def read(data: bytes) -> int:
            self.received += bytes(data)
            return len(data)
        self.writeSomeData = read  # type: ignore[method-assign]
        try:
            self.doWrite()
        finally:
            del self.writeSomeData

    @property
    def reading(self) -> bool:
        return self in self.reactor.getReaders()

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "10.0.0.1", 40000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1234)

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def _server(service: Any = None, **limits: Any) -> RPCServer:
    registry = ServiceRegistry()
    registry.add(Arith)
    if service is not None:
        registry.add(service, name="Big")
    limits.setdefault("idle_timeout", 0)
    limits.setdefault("handshake_timeout", 0)
    return RPCServer(registry, Clock(), Limits(**limits))


def _connect(server: RPCServer, transport: Any = None) -> tuple[SniffingProtocol, Any]:
    transport = transport if transport is not None else _Socket()
    protocol = server.factory().buildProtocol(IPv4Address("TCP", "10.0.0.1", 40000))
    protocol.makeConnection(transport)
    transport.protocol = protocol
    return protocol, transport


def _messages(events: list[dict[str, Any]]) -> str:
    return "\n".join(formatEvent(e) for e in events)


def _native_results(data: bytes) -> list[Any]:
    reader = FrameReader(1 << 30)
    frames, error = reader.split(data[len(PREFACE):])
    assert error is None
    return [f[1] for f in frames if f[0] == RESULT]


def _gets(ids: range) -> bytes:
    return b"".join(encode_frame([0, i, "Big.Get", "k"]) for i in ids)


class NativeWriteCapTests(SynchronousTestCase):
    """A native peer whose replies are over write_buffer_bytes gets no more calls started until it reads."""

    def setUp(self) -> None:
        self.service = _Big(1000)
        self.server = _server(self.service, write_buffer_bytes=2500)
        self.protocol, self.socket = _connect(self.server)

    def test_stops_starting_calls(self) -> None:
        """Of ten calls in one read, those whose replies fit under the cap (plus the one that crosses it) run; the rest wait, and reading stops."""
        self.protocol.dataReceived(PREFACE + _gets(range(1, 11)))
        self.assertEqual(self.service.calls, 3)
        self.assertTrue(self.protocol.throttle.paused)
        self.assertFalse(self.socket.reading)

    def test_resumes_when_drained(self) -> None:
        """Each time the peer reads everything, the held calls run until the cap is crossed again; at the end reading resumes and every call was answered once, in order."""
        self.protocol.dataReceived(PREFACE + _gets(range(1, 11)))
        counts = [self.service.calls]
        for _ in range(3):
            self.socket.drain()
            counts.append(self.service.calls)
        self.assertEqual(counts, [3, 6, 9, 10])
        self.assertFalse(self.protocol.throttle.paused)
        self.assertTrue(self.socket.reading)
        self.socket.drain()
        self.assertEqual(_native_results(self.socket.received), list(range(1, 11)))

    def test_data_while_paused_held(self) -> None:
        """Frames that arrive while the peer's replies are over the cap are held, not started, and run in order later."""
        self.protocol.dataReceived(PREFACE + _gets(range(1, 5)))
        self.protocol.dataReceived(_gets(range(5, 7)))
        self.assertEqual(self.service.calls, 3)
        while self.protocol.throttle.paused:
            self.socket.drain()
        self.socket.drain()
        self.assertEqual(_native_results(self.socket.received), list(range(1, 7)))

    def test_large_reply_one_at_a_time(self) -> None:
        """A reply larger than the cap still goes out, one call at a time."""
        self.service.size = 5000
        self.protocol.dataReceived(PREFACE + _gets(range(1, 4)))
        self.assertEqual(self.service.calls, 1)
        self.socket.drain()
        self.assertEqual(self.service.calls, 2)
        self.socket.drain()
        self.socket.drain()
        self.assertEqual(_native_results(self.socket.received), [1, 2, 3])

    def test_under_cap_all_run(self) -> None:
        """Calls whose replies fit under the cap all run in the read that brought them."""
        self.service.size = 10
        self.protocol.dataReceived(PREFACE + _gets(range(1, 51)))
        self.assertEqual(self.service.calls, 50)
        self.assertFalse(self.protocol.throttle.paused)

    def test_unsent_freed_on_loss(self) -> None:
        """The replies a lost connection never sent are freed at once, not when the garbage collector gets to its objects."""
        self.protocol.dataReceived(PREFACE + _gets(range(1, 11)))
        self.assertGreater(self.protocol.throttle.queued(), 2500)
        self.socket.connectionLost(Exception("reset"))  # as tcp.Connection does:
        self.protocol.connectionLost(Exception("reset"))  # then its protocol's
        self.assertEqual(self.protocol.throttle.queued(), 0)
        self.assertIsNone(self.protocol.throttle.held)

    def test_reading_peer_keeps_going(self) -> None:
        """When the replies fit in the socket after all (the peer reads), the held frames run in the same read."""
        protocol, transport = _connect(self.server, StringTransport())
        protocol.dataReceived(PREFACE + _gets(range(1, 11)))
        self.assertEqual(self.service.calls, 10)
        self.assertEqual(_native_results(transport.value()), list(range(1, 11)))


class GobWriteCapTests(SynchronousTestCase):
    """A gob peer whose replies are over write_buffer_bytes gets no more calls started until it reads."""

    def test_held_and_resumed(self) -> None:
        """Of six gob calls in one read, three run; the rest run as the peer reads, every one answered."""
        service = _Big(1000)
        server = _server(service, write_buffer_bytes=2500)
        protocol, socket = _connect(server)
        codec = GobClientCodec()
        protocol.dataReceived(b"".join(codec.encode_request(i, "Big.Get", "k", reply_type=str)
                                       for i in range(1, 7)))
        self.assertEqual(service.calls, 3)
        self.assertFalse(socket.reading)
        while protocol.throttle.paused:
            socket.drain()
        socket.drain()
        self.assertEqual([seq for seq, _, error, _ in codec.feed(socket.received)], list(range(1, 7)))
        self.assertTrue(socket.reading)


    def test_take_over(self) -> None:
        """Gob taken over from HTTP (CONNECT) answers to the throttle it is given."""
        service = _Big(1000)
        server = _server(service)
        socket = _Socket()
        throttle = ReadThrottle(socket, "peer", 2500)
        socket.registerProducer(throttle, True)
        set_write_cap(socket, 2500)
        codec = GobClientCodec()
        GobServerProtocol.take_over(server, socket, b"".join(
            codec.encode_request(i, "Big.Get", "k", reply_type=str) for i in range(1, 7)),
            throttle=throttle)
        self.assertEqual(service.calls, 3)
        while throttle.paused:
            socket.drain()
        socket.drain()
        self.assertEqual([seq for seq, _, _, _ in codec.feed(socket.received)], list(range(1, 7)))


class JSONWriteCapTests(SynchronousTestCase):
    """A JSON peer whose replies are over write_buffer_bytes gets no more calls started until it reads."""

    def test_go_style_held_and_resumed(self) -> None:
        """Of six Go jsonrpc calls in one read, three run; the rest run as the peer reads."""
        service = _Big(1000)
        server = _server(service, write_buffer_bytes=2500)
        protocol, socket = _connect(server)
        protocol.dataReceived(b"".join(
            json.dumps({"method": "Big.Get", "params": ["k"], "id": i}).encode() + b"\n"
            for i in range(1, 7)))
        self.assertEqual(service.calls, 3)
        while protocol.throttle.paused:
            socket.drain()
        socket.drain()
        ids = [json.loads(line)["id"] for line in socket.received.splitlines()]
        self.assertEqual(ids, list(range(1, 7)))

    def batch(self, n: int, **limits: Any) -> list[Any]:
        service = _Big(1000)
        server = _server(service, **limits)
        protocol, transport = _connect(server, StringTransport())
        protocol.dataReceived(json.dumps([{"jsonrpc": "2.0", "method": "Big.Get", "params": ["k"],
                                           "id": i} for i in range(n)]).encode())
        self.service = service
        return json.loads(transport.value())

    def test_batch_too_long(self) -> None:
        """A batch longer than max_batch_calls is refused as a whole, with one error naming the limit, and nothing runs."""
        reply = self.batch(4, max_batch_calls=3)
        self.assertEqual(reply["error"]["code"], -32600)
        self.assertIn("limits.max_batch_calls", reply["error"]["data"])
        self.assertEqual(self.service.calls, 0)

    def test_batch_replies_bounded(self) -> None:
        """Once a batch's replies exceed max_frame_bytes the rest are not run but answered RESOURCE_EXHAUSTED."""
        reply = self.batch(6, max_frame_bytes=2500)
        self.assertEqual(self.service.calls, 3)
        self.assertEqual([r["id"] for r in reply], list(range(6)))
        self.assertEqual([("result" in r) for r in reply], [True] * 3 + [False] * 3)
        self.assertEqual(reply[5]["error"]["data"]["name"], "RESOURCE_EXHAUSTED")
        self.assertIn("limits.max_frame_bytes", reply[5]["error"]["message"])


class InputGuardTests(SynchronousTestCase):
    """L{InputGuard}: the daemon-wide budget and the per-message deadline."""

    def setUp(self) -> None:
        self.budget = InputBudget(1000)
        self.clock = Clock()
        self.closed: list[str] = []

    def guard(self) -> InputGuard:
        return InputGuard(self.budget, self.clock, 5.0, self.closed.append)

    def test_over_budget(self) -> None:
        """A connection that would push the total over the budget is closed, naming the limit; the others keep theirs."""
        first, second = self.guard(), self.guard()
        self.assertTrue(first.update(600, False))
        self.assertFalse(second.update(500, False))
        self.assertEqual(len(self.closed), 1)
        self.assertIn("limits.input_budget_bytes", self.closed[0])
        self.assertEqual(self.budget.held, 600)

    def test_released(self) -> None:
        """Bytes are released when the message completes and when the connection stops."""
        first, second = self.guard(), self.guard()
        first.update(600, False)
        second.update(300, False)
        first.update(0, True)
        second.stop()
        self.assertEqual(self.budget.held, 0)

    def test_trickle_not_reset(self) -> None:
        """More bytes of the same message do not restart its deadline."""
        guard = self.guard()
        for held in range(1, 6):
            guard.update(held, False)
            self.clock.advance(1.0)
        self.assertEqual(len(self.closed), 1)
        self.assertIn("limits.message_timeout", self.closed[0])

    def test_completed_messages_restart(self) -> None:
        """A message completed and a new one begun restarts the deadline, however long the stream."""
        guard = self.guard()
        for _ in range(20):
            guard.update(10, True)
            self.clock.advance(4.0)
        self.assertEqual(self.closed, [])
        self.clock.advance(1.0)
        self.assertEqual(len(self.closed), 1)

    def test_nothing_held_no_deadline(self) -> None:
        """With nothing held there is no deadline and no timer."""
        guard = self.guard()
        guard.update(10, False)
        guard.update(0, True)
        self.clock.advance(100)
        self.assertEqual(self.closed, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SlowMessageTests(SynchronousTestCase):
    """Every protocol closes a connection whose message does not complete within message_timeout, with the reason logged."""

    def trickle(self, first: bytes, then: bytes) -> tuple[str, Any]:
        server = _server(_Big(10), message_timeout=5.0)
        protocol, transport = _connect(server, StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 1)))
        with capturedLogs() as events:
            protocol.dataReceived(first)
            for byte in then:
                server.clock.advance(1.0)
                if transport.disconnecting:
                    break
                protocol.dataReceived(bytes([byte]))
            server.clock.advance(1.0)
        self.assertEqual(server.input_budget.held, 0)  # released when closed
        protocol.connectionLost(Exception("closed"))
        return _messages(events), transport

    def test_native(self) -> None:
        """A native frame trickled a byte a second is closed after message_timeout."""
        frame = encode_frame([0, 1, "Big.Get", "k" * 40])
        log, transport = self.trickle(PREFACE + frame[:6], frame[6:])
        self.assertTrue(transport.disconnected)
        self.assertRegex(log, r"closing 10\.0\.0\.1:1: a message was not complete within 5 s "
                              r".*limits\.message_timeout")

    def test_native_preface(self) -> None:
        """A native preface trickled a byte a second is closed after message_timeout."""
        server = _server(message_timeout=5.0)
        protocol, transport = _connect(server, StringTransport())
        protocol.dataReceived(PREFACE[:5])
        for byte in PREFACE[5:7]:
            server.clock.advance(2.0)
            protocol.dataReceived(bytes([byte]))
        with capturedLogs() as events:
            server.clock.advance(0.9)
            self.assertFalse(transport.disconnecting)
            server.clock.advance(0.2)
        self.assertTrue(transport.disconnected)
        self.assertIn("limits.message_timeout", _messages(events))
        self.assertEqual(server.input_budget.held, 0)

    def test_gob(self) -> None:
        """A gob request trickled a byte a second is closed after message_timeout (gob has no preamble)."""
        data = GobClientCodec().encode_request(1, "Big.Get", "k" * 40)
        log, transport = self.trickle(data[:2], data[2:])
        self.assertTrue(transport.disconnected)
        self.assertIn("limits.message_timeout", log)

    def test_json(self) -> None:
        """A Go jsonrpc request trickled a byte a second is closed after message_timeout."""
        data = json.dumps({"method": "Big.Get", "params": ["k" * 40], "id": 1}).encode()
        log, transport = self.trickle(data[:2], data[2:])
        self.assertTrue(transport.disconnected)
        self.assertIn("limits.message_timeout", log)

    def test_input_freed_on_loss(self) -> None:
        """The bytes of an unfinished frame or gob message are freed when the connection is lost."""
        server = _server()
        native, _ = _connect(server, StringTransport())
        native.dataReceived(PREFACE + pack_length(900) + b"\x00" * 600)
        gob, _ = _connect(server, StringTransport())
        gob.dataReceived(GobClientCodec().encode_request(1, "Arith.Multiply", "x" * 500)[:300])
        self.assertEqual((native.inner.conn.buffered(), gob.inner.codec.buffered > 0), (604, True))
        native.connectionLost(Exception("gone"))
        gob.connectionLost(Exception("gone"))
        self.assertEqual((native.inner.conn.buffered(), gob.inner.codec.buffered), (0, 0))
        self.assertEqual(server.input_budget.held, 0)

    def test_budget_native(self) -> None:
        """A native connection whose unfinished frame would exceed input_budget_bytes is closed, naming the limit."""
        server = _server(input_budget_bytes=1000)
        first, first_transport = _connect(server, StringTransport())
        second, second_transport = _connect(server, StringTransport())
        first.dataReceived(PREFACE + pack_length(900) + b"\x00" * 600)
        with capturedLogs() as events:
            second.dataReceived(PREFACE + pack_length(900) + b"\x00" * 600)
        self.assertFalse(first_transport.disconnecting)
        self.assertTrue(second_transport.disconnected)
        self.assertIn("limits.input_budget_bytes", _messages(events))
        second.connectionLost(Exception("closed"))
        self.assertEqual(server.input_budget.held, 604)


class HalfCloseTests(SynchronousTestCase):
    """A peer that shuts down its write side is answered, then the connection closes."""

    def half_close(self, request: bytes) -> tuple[_Big, Any, StringTransport]:
        service = _Big(10)
        server = _server(service)
        protocol, transport = _connect(server, StringTransport())
        protocol.dataReceived(request)
        protocol.readConnectionLost()
        return service, protocol, transport

    def check(self, service: _Big, transport: StringTransport, answered: bytes) -> None:
        self.assertFalse(transport.disconnecting)
        self.assertNotIn(answered, transport.value())
        service.waiting[0].callback(42)
        self.assertIn(answered, transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)  # closed, not aborted: replies go out

    def test_native(self) -> None:
        """A native call running at the FIN is answered, then the connection closes."""
        service, _, transport = self.half_close(
            PREFACE + encode_frame([0, 1, "Big.Get", "k"]) + encode_frame([0, 2, "Big.Wait", None]))
        self.assertIn(b"x" * 10, transport.value())
        self.check(service, transport, encode_frame([RESULT, 2, 42]))

    def test_gob(self) -> None:
        """A gob call running at the FIN (Go's CloseWrite) is answered, then the connection closes."""
        codec = GobClientCodec()
        service, _, transport = self.half_close(codec.encode_request(7, "Big.Wait", 0))
        self.check(service, transport, b"Big.Wait")
        self.assertEqual([(seq, error) for seq, _, error, _ in codec.feed(transport.value())],
                         [(7, None)])

    def test_json(self) -> None:
        """A Go jsonrpc call running at the FIN is answered, then the connection closes."""
        service, _, transport = self.half_close(
            b'{"method": "Big.Wait", "params": [null], "id": 3}\n')
        self.check(service, transport, b'"id":3')

    def test_nothing_running(self) -> None:
        """With no call running the connection closes at once."""
        _, _, transport = self.half_close(PREFACE)
        self.assertTrue(transport.disconnecting)

    def test_before_hand_over(self) -> None:
        """A FIN before the protocol is known closes the connection."""
        _, _, transport = self.half_close(b"")
        self.assertTrue(transport.disconnecting)

    def test_held_then_closed(self) -> None:
        """Calls held for a peer that does not read are answered once it reads, and only then does the connection close."""
        service = _Big(1000)
        server = _server(service, write_buffer_bytes=2500)
        protocol, socket = _connect(server)
        protocol.dataReceived(PREFACE + _gets(range(1, 8)))
        protocol.readConnectionLost()
        self.assertFalse(socket.disconnecting)
        while not socket.disconnecting:
            socket.drain()
        socket.drain()
        self.assertEqual(_native_results(socket.received), list(range(1, 8)))
        self.assertFalse(socket.reading)


class ThrottleTests(SynchronousTestCase):
    """L{ReadThrottle}'s room and resume."""

    def test_room_counts_queued(self) -> None:
        """The room is the cap less what the socket transport has queued."""
        socket = _Socket()
        throttle = ReadThrottle(socket, "peer", 1000)
        socket.write(b"x" * 300)
        self.assertEqual(throttle.queued(), 300)
        self.assertEqual(throttle.room(), 700)

    def test_no_resume_after_read_ended(self) -> None:
        """After the peer's FIN, a drain does not start reading again."""
        transport = StringTransport()
        throttle = ReadThrottle(transport, "peer", 1000)
        throttle.pauseProducing()
        throttle.reading_ended = True
        throttle.resumeProducing()
        self.assertEqual(transport.producerState, "paused")


class HeldReadTests(SynchronousTestCase):
    """
    The bytes an unfinished native frame holds are sized to what the reads
    brought, not to the reads' buffers.
    """

    def test_small_reads_copied(self) -> None:
        """A read shorter than a socket buffer is kept as a copy of its own size; a full one as it came; the frame decodes whole."""
        reader = FrameReader(max_frame=1 << 20)
        payload = b"x" * 200_000
        body = b"\x92\x01\xc6" + len(payload).to_bytes(4, "big") + payload
        stream = pack_length(len(body)) + body
        small, large, rest = stream[:1000], stream[1000:1000 + 64 * 1024], stream[1000 + 64 * 1024:]
        self.assertEqual(reader.split(small), ([], None))
        self.assertEqual(reader.split(large), ([], None))
        held = reader._chunks
        self.assertIsNot(held[0], small)
        self.assertEqual(held[0], small)
        self.assertIs(held[1], large)
        self.assertEqual(reader.buffered(), len(small) + len(large))
        frames, error = reader.split(rest)
        self.assertIsNone(error)
        self.assertEqual(frames, [[1, payload]])
        self.assertEqual(reader.buffered(), 0)
