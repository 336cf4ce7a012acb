"""
Tests that the native protocol's fast paths (see C{benchmarks/}) behave
exactly as the general paths they short-cut: frame splitting, the compiled
dataclass converter and invoker, skipping the result converter, the
dispatcher's per-connection method cache and hot path, the inline CALL in
the read loop, and sending a read's replies straight to the socket.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
from typing import Any

import msgpack
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from rpcd.convert import (
    _Mismatch,
    argument_converter,
    calling,
    convert_argument,
    result_converter,
    result_passthrough,
)
from rpcd.dispatch import Dispatcher
from rpcd.errors import Code, InvalidArgument, ProtocolError, ResourceExhausted, Unauthenticated, Unimplemented
from rpcd.examples.arith import Args, Arith
from rpcd.server import Limits, RPCServer
from rpcd.service import ServiceRegistry, exposed, service
from rpcd.session import Session
from rpcd.wire.frames import PREFACE, FrameReader
from rpcd.wire.native import NativeServerProtocol


def frame(*fields: object) -> bytes:
    body = msgpack.packb(list(fields))
    return struct.pack(">I", len(body)) + body


@dataclasses.dataclass
class KwOnly:
    X: int
    _: dataclasses.KW_ONLY
    Y: str


@dataclasses.dataclass(init=False)
class Reordered:
    A: int
    B: int

    def __init__(self, B: int, A: int) -> None:
        self.A = A
        self.B = B


@dataclasses.dataclass(frozen=True)
class Frozen:
    A: float
    B: bytes


@dataclasses.dataclass
class Flag:
    On: bool


class FrameSplitTests(SynchronousTestCase):
    """L{FrameReader.split} returns what L{FrameReader.feed} yields."""

    def test_good_frames_before_an_error(self) -> None:
        """The frames before a broken one come back together with the error."""
        reader = FrameReader()
        bodies, error = reader.split(frame(0, 1, "A.B", 2) + frame(3, 1) + frame("x"))
        self.assertEqual(bodies, [[0, 1, "A.B", 2], [3, 1]])
        self.assertIsInstance(error, ProtocolError)
        self.assertIn("must be an array starting with its type", str(error))

    def test_incomplete_tail_kept(self) -> None:
        """An incomplete frame stays buffered and completes with the next bytes."""
        data = frame(0, 1, "A.B", 2) + frame(3, 9)
        reader = FrameReader()
        self.assertEqual(reader.split(data[:-2]), ([[0, 1, "A.B", 2]], None))
        self.assertEqual(reader.buffered(), len(frame(3, 9)) - 2)
        self.assertEqual(reader.split(data[-2:]), ([[3, 9]], None))
        self.assertEqual(reader.buffered(), 0)

    def test_large_frames(self) -> None:
        """Frames past the copy threshold decode the same (they are viewed, not copied)."""
        big = "x" * 100_000
        reader = FrameReader()
        self.assertEqual(reader.split(frame(4, 1, big) + frame(4, 2, "y")),
                         ([[4, 1, big], [4, 2, "y"]], None))

    def test_feed_raises_after_good_frames(self) -> None:
        """L{FrameReader.feed} yields the good frames, then raises."""
        frames = FrameReader().feed(frame(3, 1) + struct.pack(">I", 1) + b"\xc1")
        self.assertEqual(next(frames), [3, 1])
        self.assertRaises(ProtocolError, next, frames)


class DataclassFastPathTests(SynchronousTestCase):
    """The compiled dataclass converter gives what the general one gives."""

    def convert(self, hint: Any, value: Any) -> Any:
        return convert_argument(argument_converter(hint), value, "args")

    def test_exact(self) -> None:
        """Exactly the fields, of exactly their types, build the instance."""
        self.assertEqual(self.convert(Args, {"A": 7, "B": 8}), Args(7, 8))

    def test_everything_else_takes_the_general_path(self) -> None:
        """Other spellings, missing, extra and convertible fields still work."""
        self.assertEqual(self.convert(Args, {"a": 7, "b": 8}), Args(7, 8))
        self.assertEqual(self.convert(Args, {"A": 7}), Args(7, 0))
        self.assertEqual(self.convert(Args, {"A": 7, "B": 8, "C": 9}), Args(7, 8))
        self.assertEqual(self.convert(Args, {"A": 7.0, "B": 8}), Args(7, 8))
        self.assertEqual(self.convert(Args, {"B": 8, "b": 9}), Args(0, 9))
        args = Args(1, 2)
        self.assertIs(self.convert(Args, args), args)

    def test_mismatch_messages(self) -> None:
        """A wrong type is reported by the general path, naming the field."""
        e = self.assertRaises(InvalidArgument, self.convert, Args, {"A": True, "B": 8})
        self.assertEqual(e.message, "args.A: expected int, got bool")
        e = self.assertRaises(InvalidArgument, self.convert, Args, [7, 8])
        self.assertEqual(e.message, "args: expected Args (an object with fields A, B), got list")

    def test_keyword_only(self) -> None:
        """Keyword-only fields are passed by name."""
        self.assertEqual(self.convert(KwOnly, {"X": 1, "Y": "y"}), KwOnly(1, Y="y"))

    def test_own_init(self) -> None:
        """A dataclass with its own C{__init__} gets its fields by name."""
        value = self.convert(Reordered, {"A": 1, "B": 2})
        self.assertEqual((value.A, value.B), (1, 2))

    def test_frozen_and_other_scalars(self) -> None:
        """Frozen dataclasses and float, bytes and bool fields are built too."""
        self.assertEqual(self.convert(Frozen, {"A": 1.5, "B": b"\x00"}), Frozen(1.5, b"\x00"))
        self.assertEqual(self.convert(Flag, {"On": True}), Flag(True))
        e = self.assertRaises(InvalidArgument, self.convert, Flag, {"On": 1})
        self.assertEqual(e.message, "args.On: expected bool, got int")


class CallingTests(DataclassFastPathTests):
    """
    The invoker that converts and calls in one function (L{calling}) gives
    what converting and then calling gives: the tests above, through it.
    """

    def convert(self, hint: Any, value: Any) -> Any:
        return calling(argument_converter(hint), lambda arg: arg, "args")(value, None)

    def test_method_errors_pass_through(self) -> None:
        """What the method raises is not taken for a mismatch of its argument."""
        def method(arg: Args) -> int:
            raise _Mismatch("int", arg)
        invoke = calling(argument_converter(Args), method, "args")
        self.assertRaises(_Mismatch, invoke, {"A": 1, "B": 2}, None)
        self.assertRaises(_Mismatch, invoke, {"a": 1, "b": 2}, None)

    def test_other_converters(self) -> None:
        """A parameter of another kind is converted and passed the same way."""
        invoke = calling(argument_converter(int), lambda n: n * 2, "n")
        self.assertEqual(invoke(4, None), 8)
        e = self.assertRaises(InvalidArgument, invoke, "4", None)
        self.assertEqual(e.message, "n: expected int, got str")


class ResultPassthroughTests(SynchronousTestCase):
    """Which results may skip the result converter."""

    def test_scalars(self) -> None:
        """A scalar hint passes its own type only; Any passes plain scalars."""
        self.assertEqual(result_passthrough(int, result_converter(int)), {int})
        self.assertIn(type(None), result_passthrough(Any))
        self.assertNotIn(list, result_passthrough(Any))
        self.assertEqual(result_passthrough(Args), frozenset())

    def test_other_converter(self) -> None:
        """A converter that is not the hint's own passes nothing through."""
        self.assertEqual(result_passthrough(int, lambda v: v), frozenset())


class Counter:
    """A per-connection service."""

    def __init__(self, session: Session) -> None:
        self.n = 0

    @exposed
    def Next(self) -> int:
        self.n += 1
        return self.n


class Numbers:
    @exposed
    def Bool(self, n: int) -> int:
        return n > 0  # type: ignore[return-value]

    @exposed
    def Same(self, n: int) -> int:
        return n


class Guard:
    require_login = True
    require_identity = ()


class DispatcherCacheTests(SynchronousTestCase):
    """The per-connection method cache changes nothing a caller sees."""

    def setUp(self) -> None:
        self.registry = ServiceRegistry()
        self.registry.add(Numbers)
        self.registry.add(Arith, name="Locked", access=Guard())
        self.registry.add(service(per_connection=True)(Counter))

    def dispatcher(self, max_running: int = 10) -> Dispatcher:
        session = Session(self.registry, "127.0.0.1:1", "127.0.0.1")
        return Dispatcher(session, Clock(), max_running)

    def test_checks_every_call(self) -> None:
        """Results are checked against the hint on every call, cached or not."""
        d = self.dispatcher()
        self.assertEqual(d.call("Numbers.Same", 5), 5)
        self.assertEqual(d.call("Numbers.Same", 6), 6)
        for _ in range(2):
            with capturedLogs():
                e = self.assertRaises(InvalidArgument, d.call, "Numbers.Bool", 1)
            self.assertIn("Numbers.Bool returned a bad result", e.message)

    def test_guard_every_call(self) -> None:
        """An access guard runs on every call, not only the first."""
        d = self.dispatcher()
        for _ in range(2):
            self.assertRaises(Unauthenticated, d.call, "Locked.Multiply", {"A": 2, "B": 3})
        d.session.user = "user"
        self.assertEqual(d.call("Locked.Multiply", {"A": 2, "B": 3}), 6)
        d.session.user = None
        self.assertRaises(Unauthenticated, d.call, "Locked.Multiply", {"A": 2, "B": 3})

    def test_unknown_every_call(self) -> None:
        """An unknown name fails every time with Go's words."""
        d = self.dispatcher()
        for _ in range(2):
            e = self.assertRaises(Unimplemented, d.call, "Numbers.Nope", 1)
            self.assertEqual(e.message, "rpc: can't find method Numbers.Nope")

    def test_per_connection(self) -> None:
        """Each connection keeps calling its own instance of a per-connection service."""
        one, two = self.dispatcher(), self.dispatcher()
        self.assertEqual([one.call("Counter.Next", None) for _ in range(3)], [1, 2, 3])
        self.assertEqual(two.call("Counter.Next", None), 1)

    def test_counts_and_limit(self) -> None:
        """Cached calls are counted, and the cap on running calls still applies."""
        d = self.dispatcher()
        d.call("Numbers.Same", 1)
        d.call("Numbers.Same", 1)
        self.assertEqual(self.registry.call_counts["Numbers.Same"], 2)
        closed = self.dispatcher(max_running=0)
        for _ in range(2):
            self.assertRaises(ResourceExhausted, closed.call, "Numbers.Same", 1)

    def test_simple_calls(self) -> None:
        """
        A method on the hot path is in C{simple_calls} once called, and
        calling it there counts, checks the cap and answers as L{Dispatcher.call};
        a guarded method is not there.
        """
        d = self.dispatcher(max_running=1)
        self.assertEqual(d.simple_calls, {})
        d.call("Numbers.Same", 1)
        self.assertRaises(Unauthenticated, d.call, "Locked.Multiply", {"A": 2, "B": 3})
        self.assertEqual(set(d.simple_calls), {"Numbers.Same"})
        self.assertEqual(d.simple_calls["Numbers.Same"](2, 7, None), 2)
        self.assertEqual(self.registry.call_counts["Numbers.Same"], 2)
        d.running["busy"] = Deferred()
        self.assertRaises(ResourceExhausted, d.simple_calls["Numbers.Same"], 3, 8, None)


class InlineCallTests(SynchronousTestCase):
    """The read loop's inline CALL and the general one answer alike."""

    def setUp(self) -> None:
        registry = ServiceRegistry()
        registry.add(Arith)
        self.server = RPCServer(registry, Clock(), Limits())
        self.protocol = self.server.factory().buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(PREFACE)
        self.transport.clear()

    def replies(self) -> list[list]:
        data = self.transport.value()
        self.transport.clear()
        return list(FrameReader().feed(data[len(PREFACE):] if data.startswith(PREFACE) else data))

    def test_with_and_without_options(self) -> None:
        """Calls with empty or real options are answered like plain ones."""
        args = {"A": 6, "B": 7}
        self.protocol.dataReceived(frame(0, 1, "Arith.Multiply", args) +
                                   frame(0, 2, "Arith.Multiply", args, {}) +
                                   frame(0, 3, "Arith.Multiply", args, {"timeout": 5.0}) +
                                   frame(0, 4, "Arith.Multiply", args, None))
        self.assertEqual(self.replies(), [[1, i, 42] for i in (1, 2, 3, 4)])

    def test_errors_in_a_batch(self) -> None:
        """An error reply for one call leaves the calls around it answered."""
        self.protocol.dataReceived(frame(0, 1, "Arith.Multiply", {"A": 1, "B": 2}) +
                                   frame(0, 2, "Arith.Nope", {}) +
                                   frame(0, 3, "Arith.Multiply", {"A": "x"}) +
                                   frame(0, 4, "Arith.Multiply", {"A": 3, "B": 2}))
        replies = self.replies()
        self.assertEqual(replies[0], [1, 1, 2])
        self.assertEqual(replies[1], [2, 2, Code.UNIMPLEMENTED, "rpc: can't find method Arith.Nope", None])
        self.assertEqual(replies[2], [2, 3, Code.INVALID_ARGUMENT, "args.A: expected int, got str", None])
        self.assertEqual(replies[3], [1, 4, 6])

    def test_malformed_call(self) -> None:
        """A four-field CALL whose id cannot be read is a protocol error, after earlier replies."""
        for bad_id in ("1", -1, 2 ** 63, 1.0, True, [1]):
            self.setUp()
            with capturedLogs():
                self.protocol.dataReceived(frame(0, 1, "Arith.Multiply", {"A": 1, "B": 1}) +
                                           frame(0, bad_id, "Arith.Multiply", {}))
            good, goaway = self.replies()
            self.assertEqual(good, [1, 1, 1])
            self.assertEqual(goaway[:3], [9, 0, Code.INVALID_ARGUMENT])
            self.assertIn(f"CALL id must be an integer from 0 to 2^63-1, got {bad_id!r}", goaway[3])
            self.assertTrue(self.transport.disconnecting)

    def test_bad_field_fails_the_call(self) -> None:
        """A CALL with a readable id and a bad method or too few fields fails that call only."""
        self.protocol.dataReceived(frame(0, 1, 2, {}) + frame(0, 2, "Arith.Multiply") +
                                   frame(0, 3, "Arith.Multiply", {"A": 1, "B": 1}))
        self.assertEqual(self.replies(), [
            [2, 1, Code.INVALID_ARGUMENT, "CALL 1: method must be a string, got 2", None],
            [2, 2, Code.INVALID_ARGUMENT,
             "CALL 2: needs [0, id, method, argument], got 3 fields", None],
            [1, 3, 1]])
        self.assertFalse(self.transport.disconnecting)

    def test_unencodable_result(self) -> None:
        """A result msgpack cannot encode is an INTERNAL error for that call only."""
        registry = ServiceRegistry()

        class Huge:
            @exposed
            def Get(self) -> int:
                return 2 ** 70

        registry.add(Huge)
        protocol = RPCServer(registry, Clock(), Limits()).factory().buildProtocol(None)
        protocol.makeConnection(self.transport)
        with capturedLogs():
            protocol.dataReceived(PREFACE + frame(0, 1, "Huge.Get", None) + frame(7, 1))
        replies = self.replies()
        self.assertEqual(replies[0][:3], [2, 1, Code.INTERNAL])
        self.assertIn("Huge.Get: the result cannot be encoded", replies[0][3])
        self.assertEqual(replies[1], [8, 1])

    def test_long_reply(self) -> None:
        """A reply of 256 bytes or more gets its length prefix too."""
        registry = ServiceRegistry()

        class Text:
            @exposed
            def Repeat(self, n: int) -> str:
                return "x" * n

        registry.add(Text)
        protocol = RPCServer(registry, Clock(), Limits()).factory().buildProtocol(None)
        protocol.makeConnection(self.transport)
        protocol.dataReceived(PREFACE + b"".join(frame(0, n, "Text.Repeat", n)
                                                 for n in (1, 250, 255, 256, 70_000)))
        self.assertEqual(self.replies(), [[1, n, "x" * n] for n in (1, 250, 255, 256, 70_000)])


class SocketTransport(tcp.Connection):
    """A Twisted TCP transport on one end of a socket pair."""

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1234)


class WriteThroughTests(SynchronousTestCase):
    """
    The replies of a read go straight to a TCP socket with nothing queued,
    and through the transport's queue otherwise, always in order.
    """

    def setUp(self) -> None:
        registry = ServiceRegistry()
        registry.add(Arith)
        self.server = RPCServer(registry, Clock(), Limits())
        ours, self.peer = socket.socketpair()
        ours.setblocking(False)
        self.peer.settimeout(5)
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)
        self.reactor = MemoryReactor()
        self.protocol = NativeServerProtocol(self.server)
        self.transport = SocketTransport(ours, self.protocol, self.reactor)
        self.transport.connected = True
        self.protocol.makeConnection(self.transport)
        self.call = frame(0, 1, "Arith.Multiply", {"A": 6, "B": 7})
        self.reply = frame(1, 1, 42)

    def received(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            data += self.peer.recv(size - len(data))
        return data

    def test_sent_at_once(self) -> None:
        """With the preface sent, a read's replies are sent before dataReceived returns."""
        self.transport.doWrite()
        self.assertEqual(self.received(len(PREFACE)), PREFACE)
        self.assertNotIn(self.transport, self.reactor.getWriters())
        self.protocol.dataReceived(PREFACE + self.call)
        self.assertEqual(self.received(len(self.reply)), self.reply)
        self.assertEqual(self.transport._tempDataLen, 0)
        self.assertNotIn(self.transport, self.reactor.getWriters())

    def test_queued_behind_queued_bytes(self) -> None:
        """While the preface still waits in the queue, the replies wait behind it."""
        self.protocol.dataReceived(PREFACE + self.call)
        self.assertIn(self.transport, self.reactor.getWriters())
        self.transport.doWrite()
        self.assertEqual(self.received(len(PREFACE) + len(self.reply)), PREFACE + self.reply)

    def test_peer_gone(self) -> None:
        """A send that finds the peer gone leaves the bytes to the transport, which finds out."""
        self.transport.doWrite()
        self.received(len(PREFACE))
        self.peer.close()
        self.protocol.dataReceived(PREFACE + self.call)
        self.assertIn(self.transport, self.reactor.getWriters())
        self.assertIsInstance(self.transport.doWrite(), Exception)
