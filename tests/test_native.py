"""
Tests for rpcd's native protocol: framing, the server protocol byte by byte,
and client and server together in memory.
"""

from __future__ import annotations

import struct

import msgpack
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from rpcd.errors import (
    Code,
    ConnectionLost,
    DeadlineExceeded,
    EncodeError,
    InvalidArgument,
    NotFound,
    ProtocolError,
    Unavailable,
    Unimplemented,
)
from rpcd.examples.arith import Arith, Cal
from rpcd.server import Limits, RPCServer
from rpcd.service import ServiceRegistry, exposed
from rpcd.testing import MemoryConnection
from rpcd.wire.frames import PREFACE, FrameReader, encode_frame


def frame(*fields: object) -> bytes:
    body = msgpack.packb(list(fields))
    return struct.pack(">I", len(body)) + body


class Waiter:
    def __init__(self) -> None:
        self.waiting: list[Deferred[int]] = []
        self.cancelled = 0

    @exposed
    def Wait(self, n: int) -> Deferred[int]:
        d: Deferred[int] = Deferred(lambda _: setattr(self, "cancelled", self.cancelled + 1))
        self.waiting.append(d)
        return d


class FrameReaderTests(SynchronousTestCase):
    """Splitting a byte stream into frames."""

    def test_split_anywhere(self) -> None:
        """Frames split at every byte boundary come out whole and in order."""
        data = frame(0, 1, "A.B", {"x": 1}) + frame(3, 1)
        for cut in range(len(data) + 1):
            reader = FrameReader()
            out = list(reader.feed(data[:cut])) + list(reader.feed(data[cut:]))
            self.assertEqual(out, [[0, 1, "A.B", {"x": 1}], [3, 1]])
            self.assertEqual(reader.buffered(), 0)

    def test_too_long_refused_before_buffering(self) -> None:
        """A length over the limit is refused from the 4-byte prefix alone."""
        reader = FrameReader(max_frame=100)
        e = self.assertRaises(ProtocolError, list, reader.feed(struct.pack(">I", 101)))
        self.assertIn("101 bytes is over the 100-byte limit", str(e))

    def test_not_msgpack(self) -> None:
        """A body that is not msgpack is a protocol error."""
        e = self.assertRaises(ProtocolError, list, FrameReader().feed(struct.pack(">I", 1) + b"\xc1"))
        self.assertIn("not valid msgpack", str(e))

    def test_not_an_array(self) -> None:
        """A body that is not an array starting with an integer type is refused."""
        e = self.assertRaises(ProtocolError, list, FrameReader().feed(frame("x")))
        self.assertIn("must be an array starting with its type", str(e))

    def test_encode_frame(self) -> None:
        """Frames are a big-endian u32 length then the msgpack array."""
        self.assertEqual(encode_frame([1, 7, 56]), b"\x00\x00\x00\x04\x93\x01\x07\x38")


class ServerBytesTests(SynchronousTestCase):
    """The server protocol, byte by byte."""

    def setUp(self) -> None:
        registry = ServiceRegistry()
        registry.add(Arith)
        self.waiter = Waiter()
        registry.add(self.waiter)
        self.clock = Clock()
        self.server = RPCServer(registry, self.clock, Limits(max_frame_bytes=1024))
        self.protocol = self.server.factory().buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def frames(self) -> list[list]:
        data = self.transport.value()
        self.transport.clear()
        self.assertTrue(data.startswith(PREFACE) or not data.startswith(b"\x00RPCD"))
        if data.startswith(PREFACE):
            data = data[len(PREFACE):]
        return list(FrameReader().feed(data))

    def test_worked_example(self) -> None:
        """The docs' worked example: Arith.Multiply 7*8 answers 56, byte for byte."""
        request = PREFACE + bytes.fromhex("00000019" "94" "00" "01" "ae") + b"Arith.Multiply" + \
            bytes.fromhex("82" "a141" "07" "a142" "08")
        self.protocol.dataReceived(request)
        self.assertEqual(self.transport.value(), PREFACE + bytes.fromhex("00000004" "93" "01" "01" "38"))

    def test_batch_answered_in_one_write(self) -> None:
        """Every reply a single read produces goes out in one write."""
        writes = []
        self.protocol.dataReceived(PREFACE)
        self.transport.write = writes.append  # type: ignore[method-assign]
        self.protocol.dataReceived(b"".join(frame(0, i, "Arith.Multiply", {"A": i, "B": 2}) for i in range(64)))
        self.assertEqual(len(writes), 1)
        replies = list(FrameReader().feed(writes[0]))
        self.assertEqual(replies, [[1, i, 2 * i] for i in range(64)])

    def test_errors(self) -> None:
        """Unknown methods and bad arguments get ERROR frames; the connection stays open."""
        self.protocol.dataReceived(PREFACE + frame(0, 1, "Nope.X", None) +
                                   frame(0, 2, "Arith.Multiply", {"A": "x"}))
        self.assertEqual(self.frames(), [
            [2, 1, Code.UNIMPLEMENTED, "rpc: can't find service Nope.X", None],
            [2, 2, Code.INVALID_ARGUMENT, "args.A: expected int, got str", None],
        ])
        self.assertFalse(self.transport.disconnecting)

    def test_cancel_frame(self) -> None:
        """A CANCEL frame cancels the running handler and the caller gets CANCELLED."""
        self.protocol.dataReceived(PREFACE + frame(0, 5, "Waiter.Wait", 1) + frame(3, 5))
        self.assertEqual(self.waiter.cancelled, 1)
        self.assertEqual(self.frames(), [[2, 5, Code.CANCELLED, "Waiter.Wait was cancelled", None]])

    def test_timeout_option(self) -> None:
        """A CALL's relative timeout cancels the handler when it passes."""
        self.protocol.dataReceived(PREFACE + frame(0, 6, "Waiter.Wait", 1, {"timeout": 0.5}))
        self.transport.clear()
        self.clock.advance(0.5)
        [reply] = self.frames()
        self.assertEqual(reply[:3], [2, 6, Code.DEADLINE_EXCEEDED])
        self.assertEqual(self.waiter.cancelled, 1)

    def test_duplicate_running_id(self) -> None:
        """Reusing the id of a running call is refused for that call only."""
        self.protocol.dataReceived(PREFACE + frame(0, 1, "Waiter.Wait", 1) + frame(0, 1, "Waiter.Wait", 1))
        self.assertEqual(self.frames(), [[2, 1, Code.INVALID_ARGUMENT,
                                          "call id 1 is already in use on this connection", None]])

    def test_ping(self) -> None:
        """PING is answered with PONG carrying the same opaque value."""
        self.protocol.dataReceived(PREFACE + frame(7, b"abc"))
        self.assertEqual(self.frames(), [[8, b"abc"]])

    def test_oversized_frame_closes_connection(self) -> None:
        """A frame over the limit gets GOAWAY naming the limit, and the connection closes."""
        with capturedLogs() as events:
            self.protocol.dataReceived(PREFACE + struct.pack(">I", 5 * 1024 * 1024))
        [goaway] = self.frames()
        self.assertEqual(goaway[:3], [9, 0, Code.INVALID_ARGUMENT])
        self.assertIn("over the 1024-byte limit", goaway[3])
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(any("over the 1024-byte limit" in str(e.get("why")) for e in events))

    def test_bytes_after_goaway_are_ignored(self) -> None:
        """After a GOAWAY for a protocol error, later bytes are neither answered nor logged."""
        with capturedLogs() as events:
            self.protocol.dataReceived(PREFACE + struct.pack(">I", 1) + b"\xc1")
            self.protocol.dataReceived(frame(0, 1, "Arith.Multiply", {"A": 2, "B": 3}) + b"\xff" * 8)
        [goaway] = self.frames()
        self.assertEqual(goaway[0], 9)
        self.assertEqual(len([e for e in events if "closing" in e.get("log_format", "")]), 1)

    def test_malformed_frame_after_good_ones(self) -> None:
        """Replies to the good frames before a malformed one are still sent, then GOAWAY."""
        with capturedLogs():
            self.protocol.dataReceived(PREFACE + frame(0, 1, "Arith.Multiply", {"A": 2, "B": 3}) +
                                       struct.pack(">I", 1) + b"\xc1")
        replies = self.frames()
        self.assertEqual(replies[0], [1, 1, 6])
        self.assertEqual(replies[1][0], 9)
        self.assertTrue(self.transport.disconnecting)

    def test_bad_preface(self) -> None:
        """A wrong protocol version gets GOAWAY with UNIMPLEMENTED."""
        with capturedLogs():
            self.protocol.dataReceived(b"\x00RPCD\x07\x00\x00")
        [goaway] = self.frames()
        self.assertEqual(goaway[2], Code.UNIMPLEMENTED)
        self.assertIn("version 7 is not supported", goaway[3])

    def test_connection_lost_cancels_handlers(self) -> None:
        """A dropped connection cancels its running handlers."""
        self.protocol.dataReceived(PREFACE + frame(0, 1, "Waiter.Wait", 1))
        self.protocol.connectionLost(None)
        self.assertEqual(self.waiter.cancelled, 1)


class ClientServerTests(SynchronousTestCase):
    """The client library and the server over an in-memory connection."""

    def setUp(self) -> None:
        self.waiter = Waiter()
        self.conn = MemoryConnection([Arith, Cal, self.waiter])

    def test_call_and_proxy(self) -> None:
        """call() and the attribute proxy make the same call."""
        d1 = self.conn.client.call("Arith.Multiply", {"A": 7, "B": 8})
        d2 = self.conn.client.Arith.Multiply(A=7, B=8)
        d3 = self.conn.client.Cal.Square(12)
        self.conn.flush()
        self.assertEqual([self.successResultOf(d) for d in (d1, d2, d3)], [56, 56, {"Num": 12, "Ans": 144}])

    def test_many_in_flight_out_of_order(self) -> None:
        """Hundreds of calls share one connection and are answered in any order."""
        calls = [self.conn.client.Waiter.Wait(i) for i in range(300)]
        self.conn.flush()
        for i, d in reversed(list(enumerate(self.waiter.waiting))):
            d.callback(i * 10)
        self.conn.flush()
        self.assertEqual([self.successResultOf(d) for d in calls], [i * 10 for i in range(300)])

    def test_remote_errors(self) -> None:
        """Remote errors arrive as the matching RPCError subclass."""
        d1 = self.conn.client.call("Arith.Nope", 1)
        d2 = self.conn.client.call("Arith.Multiply", [1])
        self.conn.flush()
        self.assertEqual(self.failureResultOf(d1, Unimplemented).value.message,
                         "rpc: can't find method Arith.Nope")
        self.failureResultOf(d2, InvalidArgument)

    def test_unencodable_argument_fails_at_once(self) -> None:
        """An argument msgpack cannot encode fails the call at once with EncodeError; the next call still works."""
        d = self.conn.client.call("Arith.Multiply", {"A": object()})
        self.assertIn("the native codec cannot encode its argument",
                      self.failureResultOf(d, EncodeError).value.message)
        self.assertEqual(self.conn.client.channel.pending, {})
        d = self.conn.client.call("Arith.Multiply", {"A": 7, "B": 8})
        self.conn.flush()
        self.assertEqual(self.successResultOf(d), 56)

    def test_cancel_without_timeout_cancels_on_server(self) -> None:
        """Cancelling a call made without a timeout cancels it on the server and fails it with CancelledError."""
        d = self.conn.client.call("Waiter.Wait", 1)
        self.conn.flush()
        d.cancel()
        self.conn.flush()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.waiter.cancelled, 1)
        self.assertEqual(self.conn.client.channel.pending, {})

    def test_timeout_cancels_on_server(self) -> None:
        """A client timeout fails the call clearly and cancels it on the server."""
        d = self.conn.client.call("Waiter.Wait", 1, timeout=1.0)
        self.conn.flush()
        self.conn.clock.advance(1.0)
        self.conn.flush()
        f = self.failureResultOf(d, DeadlineExceeded)
        self.assertIn("Waiter.Wait did not answer within 1 s", f.value.message)
        self.assertEqual(self.waiter.cancelled, 1)

    def test_connection_lost_fails_all(self) -> None:
        """A lost connection fails every pending call at once with ConnectionLost."""
        calls = [self.conn.client.Waiter.Wait(i) for i in range(5)]
        self.conn.flush()
        self.conn.disconnect()
        for d in calls:
            f = self.failureResultOf(d, ConnectionLost)
            self.assertIn("lost before the call was answered", f.value.message)
        late = self.conn.client.Arith.Multiply(A=1, B=2)
        self.assertIn("is closed", self.failureResultOf(late, ConnectionLost).value.message)

    def test_not_found_code(self) -> None:
        """An error code from the wire maps to its class."""
        class Lookup:
            @exposed
            def Get(self, key: str) -> str:
                raise NotFound(f"{key} not found", details={"key": key})
        conn = MemoryConnection([Lookup])
        d = conn.client.Lookup.Get("k")
        conn.flush()
        error = self.failureResultOf(d, NotFound).value
        self.assertEqual((error.message, error.details), ("k not found", {"key": "k"}))

    def test_goaway_fails_pending(self) -> None:
        """When the server sends GOAWAY, pending calls fail with UNAVAILABLE and its message."""
        d = self.conn.client.Waiter.Wait(1)
        self.conn.flush()
        with capturedLogs():
            self.conn.channel.transport.write(struct.pack(">I", 1) + b"\xc1")
            self.conn.flush()
        f = self.failureResultOf(d, Unavailable)
        self.assertIn("protocol error", f.value.message)


class OtherConnectionsSurviveTests(SynchronousTestCase):
    """A broken connection does not disturb the others."""

    def test_garbage_on_one_connection(self) -> None:
        """Garbage on one connection closes it; another connection to the same server still works."""
        registry = ServiceRegistry()
        registry.add(Arith)
        good = MemoryConnection(registry)
        bad = MemoryConnection(registry)
        with capturedLogs():
            bad.channel.transport.write(b"\xff" * 64)
            bad.flush()
        self.assertIsNotNone(bad.channel.lost_reason)
        d = good.client.Arith.Multiply(A=3, B=4)
        good.flush()
        self.assertEqual(self.successResultOf(d), 12)
