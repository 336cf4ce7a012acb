"""
Tests for Go's net/rpc gob protocol in rpcd without sockets: the server
protocol (L{rpcd.wire.gobserver}) fed bytes that Go's own client wrote, and
the client channels (L{rpcd.wire.gobclient}) against the server in memory and
against bytes that Go's own server wrote.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from rpcd.errors import DeadlineExceeded, RPCError, Unavailable, Unimplemented
from rpcd.examples.kvstore import KVStoreService
from rpcd.server import Limits, RPCServer
from rpcd.core.service import ServiceSpec, describe_service
from rpcd.service import ServiceRegistry, exposed
from rpcd.testing import MemoryConnection
from rpcd.wire import gob
from rpcd.wire.gobclient import GobClientChannel, GobHTTPClientChannel, arg_type, typed
from rpcd.wire.gobrpc import REQUEST, RESPONSE, GobServerCodec
from rpcd.wire.gobserver import EMPTY_STRUCT, GobServerProtocol
from tests.test_gobrpc import C2S, S2C


@dataclass
class Args:
    A: int
    B: int


@dataclass
class Result:
    Num: int
    Ans: int


@dataclass
class Named:
    service_method: str
    seq_no: int


class Arith:
    """The service of Go's capture (C{gobvectors capture}), in Python."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[int]] = []
        self.cancelled = 0

    @exposed
    def Multiply(self, args: Args) -> int:
        return args.A * args.B

    @exposed
    def Result(self, args: Args) -> Result:
        return Result(args.A, args.A * args.B)

    @exposed
    def Divide(self, args: Args) -> Result:
        if args.B == 0:
            raise RPCError("divide by zero")
        return Result(args.A // args.B, args.A % args.B)

    @exposed
    def Echo(self, value):  # type: ignore[no-untyped-def]
        return value

    @exposed
    def Wait(self, n: int) -> Deferred[int]:
        d: Deferred[int] = Deferred(lambda _: setattr(self, "cancelled", self.cancelled + 1))
        self.waiting.append(d)
        return d

    @exposed
    def Nothing(self, n: int) -> None:
        pass

    @exposed
    def Untyped(self, n: int):  # type: ignore[no-untyped-def]
        return None

    @exposed
    def Names(self, n: int) -> Named:
        return Named("A.B", n)

    @exposed
    def NamesByKey(self, n: int) -> dict[str, list[Named]]:
        return {"k": [Named("A.B", n), Named("C.D", n + 1)]}

    @exposed
    def Unencodable(self, n: int):  # type: ignore[no-untyped-def]
        return object()

    @exposed
    def Silent(self, n: int) -> int:
        raise RPCError("")


def responses(data: bytes) -> list[tuple[Any, ...]]:
    """
    Decode a net/rpc server's byte stream by its wire types.

    @return: C{(service_method, seq, error, body)} for each response.
    """
    decoder = gob.Decoder()
    decoder.feed(data)
    out = []
    while True:
        header = decoder.next_value(RESPONSE)
        if header is gob.NEED_MORE:
            break
        body = decoder.next_value(None)
        assert body is not gob.NEED_MORE, "a response header without its body"
        out.append((*header, body))
    assert decoder.buffered == 0
    return out


def GobServerCodecFor() -> GobServerCodec:
    """A server codec that decodes arguments by their wire types."""
    return GobServerCodec()


def request(seq: int, method: str, value: Any, gotype: gob.GoType | None = None,
            encoder: gob.Encoder | None = None) -> bytes:
    """Encode one net/rpc request as Go's client would."""
    encoder = encoder or gob.Encoder()
    return encoder.encode_all((((method, seq), REQUEST), (value, gotype)))


class ServerHarness:
    """A L{GobServerProtocol} on a L{StringTransport}."""

    def __init__(self, *services: Any, limits: Limits = Limits()) -> None:
        registry = ServiceRegistry()
        for service in services:
            registry.add(service)
        self.clock = Clock()
        self.server = RPCServer(registry, self.clock, limits)
        self.transport = StringTransport()
        self.writes: list[bytes] = []
        write = self.transport.write
        self.transport.write = lambda data: (self.writes.append(data), write(data))  # type: ignore[method-assign]
        self.protocol = GobServerProtocol(self.server)
        self.protocol.makeConnection(self.transport)


class ServerProtocolTests(SynchronousTestCase):
    """L{GobServerProtocol} byte by byte."""

    def setUp(self) -> None:
        self.arith = Arith()
        self.harness = ServerHarness(self.arith, KVStoreService())
        self.protocol = self.harness.protocol
        self.transport = self.harness.transport

    def test_go_capture_answers_like_go(self) -> None:
        """Go's own client's session gets the answers Go's own server gave, in one write."""
        self.protocol.dataReceived(C2S)
        self.assertEqual(len(self.harness.writes), 1)
        self.assertEqual(responses(self.transport.value()), responses(S2C))
        errors = [r[2] for r in responses(self.transport.value())]
        self.assertEqual(errors, ["", "", "divide by zero", "rpc: can't find method Arith.Nope",
                                  "rpc: can't find service Nope.Multiply",
                                  "rpc: service/method request ill-formed: Bad", ""])

    def test_split_anywhere(self) -> None:
        """Go's session fed one byte at a time gets the same answers."""
        for i in range(len(C2S)):
            self.protocol.dataReceived(C2S[i:i + 1])
        self.assertEqual(responses(self.transport.value()), responses(S2C))

    def test_session(self) -> None:
        """The session is named gob and knows the peer."""
        self.assertEqual(self.protocol.session.protocol, "gob")
        self.assertEqual(self.protocol.session.peer, "192.168.1.1:54321")

    def test_wrong_argument_type(self) -> None:
        """An argument of the wrong Go type gets gob's error, and the stream goes on."""
        encoder = gob.Encoder()
        self.protocol.dataReceived(request(1, "Arith.Multiply", "seven", encoder=encoder)
                                   + request(2, "Arith.Multiply", {"A": 6, "B": 7},
                                             gob.type_from_hint(Args), encoder))
        (one, two) = responses(self.transport.value())
        self.assertTrue(one[2].startswith("gob: "), one)
        self.assertEqual(two[1:], (2, "", 42))

    def test_deferred_reply_when_it_fires(self) -> None:
        """A handler's Deferred is answered when it fires, in its own write."""
        self.protocol.dataReceived(request(7, "Arith.Wait", 1))
        self.assertEqual(self.transport.value(), b"")
        self.arith.waiting[0].callback(5)
        self.assertEqual(responses(self.transport.value()), [("Arith.Wait", 7, "", 5)])

    def test_deferred_error_is_the_message(self) -> None:
        """A service error is sent as its message alone, as Go's err.Error() shows it."""
        encoder = gob.Encoder()
        self.protocol.dataReceived(request(1, "KVStoreService.Watch", 1, encoder=encoder)
                                   + request(2, "KVStoreService.Get", "nope", encoder=encoder))
        self.harness.clock.advance(1)
        self.assertEqual([r[1:3] for r in responses(self.transport.value())],
                         [(2, "not found"), (1, "timeout")])

    def test_watch_woken_in_the_same_read(self) -> None:
        """A Set that wakes a Watch in the same read: both replies in one write, types in order."""
        encoder = gob.Encoder()
        self.protocol.dataReceived(request(1, "KVStoreService.Watch", 30, encoder=encoder))
        self.protocol.dataReceived(
            request(2, "KVStoreService.Watch", 30, encoder=encoder)
            + request(3, "KVStoreService.Set", ["abc", "v"], gob.Array(gob.String, 2), encoder))
        self.assertEqual(len(self.harness.writes), 1)
        self.assertEqual(responses(self.transport.value()),
                         [("KVStoreService.Watch", 1, "", "abc"),
                          ("KVStoreService.Watch", 2, "", "abc"),
                          ("KVStoreService.Set", 3, "", {})])

    def test_none_is_the_empty_struct(self) -> None:
        """None from a method hinted -> None, or without a hint, is Go's struct{}."""
        encoder = gob.Encoder()
        self.protocol.dataReceived(request(1, "Arith.Nothing", 1, encoder=encoder)
                                   + request(2, "Arith.Untyped", 1, encoder=encoder))
        for _, _, error, body in responses(self.transport.value()):
            self.assertEqual(error, "")
            self.assertIs(type(body).gotype.fields, EMPTY_STRUCT.fields)

    def test_result_fields_by_go_name(self) -> None:
        """A dataclass result with snake_case fields goes out with Go's CamelCase names."""
        self.protocol.dataReceived(request(1, "Arith.Names", 3))
        ((_, _, error, body),) = responses(self.transport.value())
        self.assertEqual((error, body), ("", {"ServiceMethod": "A.B", "SeqNo": 3}))

    def test_nested_result_fields_by_go_name(self) -> None:
        """Structs inside maps and slices of a result go out with Go's names too."""
        self.protocol.dataReceived(request(1, "Arith.NamesByKey", 3))
        ((_, _, error, body),) = responses(self.transport.value())
        self.assertEqual(body, {"k": [{"ServiceMethod": "A.B", "SeqNo": 3},
                                      {"ServiceMethod": "C.D", "SeqNo": 4}]})

    def test_unencodable_result(self) -> None:
        """A result gob cannot encode fails that call with a logged error; the stream goes on."""
        encoder = gob.Encoder()
        with capturedLogs() as events:
            self.protocol.dataReceived(request(1, "Arith.Unencodable", 1, encoder=encoder)
                                       + request(2, "Arith.Nothing", 1, encoder=encoder))
        (one, two) = responses(self.transport.value())
        self.assertIn("returned a value gob cannot encode", one[2])
        self.assertEqual(two[2], "")
        self.assertTrue(any("gob cannot encode" in e.get("log_format", "") for e in events))

    def test_empty_error_message(self) -> None:
        """An error with an empty message is still an error (empty means success in net/rpc)."""
        self.protocol.dataReceived(request(1, "Arith.Silent", 1))
        ((_, _, error, _),) = responses(self.transport.value())
        self.assertEqual(error, "unknown")

    def test_malformed_stream_closes(self) -> None:
        """A malformed gob stream closes the connection with a logged reason; later bytes are ignored."""
        with capturedLogs() as events:
            self.protocol.dataReceived(b"\x03\xff\xff\xff")
        self.assertTrue(self.transport.disconnecting)
        (event,) = [e for e in events if "malformed gob stream" in e.get("log_format", "")]
        self.assertTrue(event["why"].startswith("gob: "), event["why"])
        self.protocol.dataReceived(C2S)
        self.assertEqual(self.transport.value(), b"")

    def test_oversized_message_closes(self) -> None:
        """A message over limits.max_frame_bytes closes the connection from its length alone."""
        harness = ServerHarness(Arith(), limits=Limits(max_frame_bytes=1000))
        with capturedLogs() as events:
            harness.protocol.dataReceived(b"\xfe\x10\x00")
        self.assertTrue(harness.transport.disconnecting)
        self.assertTrue([e for e in events if "malformed gob stream" in e.get("log_format", "")])

    def test_connection_lost_cancels(self) -> None:
        """Losing the connection cancels running handlers; their answers are not written."""
        encoder = gob.Encoder()
        self.protocol.dataReceived(request(1, "Arith.Wait", 1, encoder=encoder)
                                   + request(2, "Arith.Wait", 1, encoder=encoder))
        self.protocol.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.arith.cancelled, 2)
        self.assertEqual(self.transport.value(), b"")

    def test_duplicate_seq(self) -> None:
        """Two running calls with one seq are both answered and both cancelled on loss."""
        encoder = gob.Encoder()
        self.protocol.dataReceived(request(1, "Arith.Wait", 1, encoder=encoder)
                                   + request(1, "Arith.Wait", 2, encoder=encoder))
        self.assertEqual(len(self.protocol.dispatcher.running), 2)
        self.protocol.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.arith.cancelled, 2)

    def test_take_over(self) -> None:
        """take_over serves gob on a connection whose first bytes another protocol read."""
        transport = StringTransport()
        protocol = GobServerProtocol.take_over(self.harness.server, transport, C2S[:100])
        protocol.dataReceived(C2S[100:])
        self.assertEqual(responses(transport.value()), responses(S2C))
        self.assertEqual(protocol.session.protocol, "gob")


class HostileServerInputTests(SynchronousTestCase):
    """Random and mutated bytes never raise out of L{GobServerProtocol}."""

    # The services' descriptions (reading their methods' hints), made once:
    # each example's registry builds new instances from them.
    specs: list[ServiceSpec] = []

    def feed(self, chunks: list[bytes]) -> ServerHarness:
        if not self.specs:
            self.specs.extend(describe_service(cls, per_connection=False)
                              for cls in (Arith, KVStoreService))
        harness = ServerHarness(*self.specs)
        with capturedLogs():
            for chunk in chunks:
                harness.protocol.dataReceived(chunk)
        harness.protocol.connectionLost(None)  # type: ignore[arg-type]
        return harness

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=200), max_size=5))
    def test_random_bytes(self, chunks: list[bytes]) -> None:
        """Random bytes are answered or close the connection; nothing raises."""
        self.feed(chunks)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, len(C2S) - 1), st.integers(0, 255)),
                    min_size=1, max_size=8),
           st.integers(1, 64))
    def test_mutated_go_session(self, edits: list[tuple[int, int]], cut: int) -> None:
        """Go's session with bytes changed (lengths, counts, type ids) never raises."""
        data = bytearray(C2S)
        for position, value in edits:
            data[position] = value
        self.feed([bytes(data[i:i + cut]) for i in range(0, len(data), cut)])


class ArgTypeTests(SynchronousTestCase):
    """The Go types the client sends for Python arguments."""

    def test_dict_is_a_struct(self) -> None:
        """A dict with identifier keys is a struct with exported names, as values in Go order."""
        value, gotype = arg_type({"x": 10, "service_method": "a", "skip": None, "none": []})
        self.assertIsInstance(gotype, gob.Struct)
        self.assertEqual([(f.name, f.type) for f in gotype.fields],
                         [("X", gob.Int), ("ServiceMethod", gob.String)])
        self.assertEqual(value, (10, "a"))
        self.assertIs(arg_type({"x": 1, "service_method": "b"})[1], gotype)

    def test_other_dicts_are_maps(self) -> None:
        """A dict with other keys is a map."""
        self.assertEqual(str(arg_type({"a b": 1})[1]), "map[string]int")
        self.assertEqual(str(arg_type({1: "x"})[1]), "map[int]string")

    def test_lists_and_tuples(self) -> None:
        """A list is a slice, a tuple an array; nested dicts are structs."""
        self.assertEqual(str(arg_type([1, 2])[1]), "[]int")
        self.assertEqual(str(arg_type(("k", "v"))[1]), "[2]string")
        value, gotype = arg_type([{"a": 1}, {"a": 2}])
        self.assertEqual(value, [(1,), (2,)])
        self.assertIsInstance(gotype.elem, gob.Struct)

    def test_none_and_typed(self) -> None:
        """None is struct{}; typed() passes a value and its type through."""
        self.assertEqual(arg_type(None)[1].fields, ())
        self.assertEqual(arg_type(typed(3, gob.Uint)), (3, gob.Uint))

    def test_mixed_list(self) -> None:
        """A list of mixed types cannot be guessed."""
        self.assertRaises(gob.GobError, arg_type, [1, "a"])


class ClientTests(SynchronousTestCase):
    """L{GobClientChannel} against rpcd's gob server in memory."""

    def setUp(self) -> None:
        self.arith = Arith()
        self.conn = MemoryConnection([self.arith, KVStoreService()], codec="gob")
        self.client = self.conn.client

    def call(self, method: str, value: Any = None, **kwargs: Any) -> Deferred[Any]:
        d = self.client.call(method, value, **kwargs)
        self.conn.flush()
        return d

    def test_calls(self) -> None:
        """Struct, scalar and array arguments reach hinted methods; results decode by wire type."""
        self.assertEqual(self.successResultOf(self.call("Arith.Multiply", {"a": 7, "b": 8})), 56)
        self.assertEqual(self.successResultOf(self.call("Arith.Result", {"A": 6, "B": 7})),
                         {"Num": 6, "Ans": 42})
        self.assertIsNone(self.successResultOf(self.call("KVStoreService.Set", ("k", "v"))))
        self.assertEqual(self.successResultOf(self.call("KVStoreService.Get", "k")), "v")

    def test_errors(self) -> None:
        """Go's error text comes back as the message; unknown names are Unimplemented."""
        f = self.failureResultOf(self.call("Arith.Divide", {"A": 1, "B": 0}), RPCError)
        self.assertEqual(f.value.message, "divide by zero")
        f = self.failureResultOf(self.call("Arith.Nope", 1), Unimplemented)
        self.assertEqual(f.value.message, "rpc: can't find method Arith.Nope")
        self.assertEqual(self.successResultOf(self.call("Arith.Multiply", {"A": 2, "B": 3})), 6)

    def test_unsendable(self) -> None:
        """An argument whose Go type cannot be guessed fails that call only."""
        f = self.failureResultOf(self.call("Arith.Echo", [1, "a"]), RPCError)
        self.assertIn("mixed types", f.value.message)
        self.assertEqual(self.successResultOf(self.call("Arith.Multiply", {"A": 2, "B": 3})), 6)

    def test_many_in_flight(self) -> None:
        """Many calls on one connection are matched by seq, answered in any order."""
        waits = [self.client.call("Arith.Wait", i) for i in range(3)]
        products = [self.client.call("Arith.Multiply", {"A": i, "B": 3}) for i in range(100)]
        self.conn.flush()
        for i, d in reversed(list(enumerate(self.arith.waiting))):
            d.callback(i * 10)
        self.conn.flush()
        self.assertEqual([self.successResultOf(d) for d in products], [3 * i for i in range(100)])
        self.assertEqual([self.successResultOf(d) for d in waits], [0, 10, 20])

    def test_timeout_stops_waiting(self) -> None:
        """A timeout fails the call; net/rpc has no cancel, and the late reply is skipped."""
        d = self.call("Arith.Wait", 1, timeout=2)
        self.conn.clock.advance(2)
        self.failureResultOf(d, DeadlineExceeded)
        self.assertEqual(self.arith.cancelled, 0)
        self.arith.waiting[0].callback(1)
        self.conn.flush()
        self.assertEqual(self.successResultOf(self.call("Arith.Multiply", {"A": 2, "B": 3})), 6)

    def test_cancel_stops_waiting(self) -> None:
        """Cancelling a call fails it at once; its late reply is skipped."""
        d = self.call("Arith.Wait", 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.arith.waiting[0].callback(1)
        self.conn.flush()
        self.assertEqual(self.successResultOf(self.call("Arith.Multiply", {"A": 1, "B": 3})), 3)

    def test_malformed_reply_stream(self) -> None:
        """A malformed stream from the server fails pending calls and closes."""
        channel = GobClientChannel(Clock())
        transport = StringTransport()
        channel.makeConnection(transport)
        d = channel.call("A.B", 1)
        with capturedLogs():
            channel.dataReceived(b"\x03\xff\xff\xff")
        self.failureResultOf(d, Unavailable)
        self.assertTrue(transport.disconnecting)


class GoServerBytesTests(SynchronousTestCase):
    """L{GobClientChannel} reading what Go's own net/rpc server wrote."""

    def test_go_capture(self) -> None:
        """The replies of Go's server in the capture resolve and reject the right calls."""
        channel = GobClientChannel(Clock())
        channel._ids = itertools.count(0)  # Go's client numbers calls from 0
        channel.makeConnection(StringTransport())
        args = {"A": 1, "B": 2}
        calls = [channel.call(m, args) for m in
                 ("Arith.Multiply", "Arith.Result", "Arith.Divide", "Arith.Nope",
                  "Nope.Multiply", "Bad", "Arith.Echo")]
        channel.dataReceived(S2C)
        self.assertEqual(self.successResultOf(calls[0]), 56)
        self.assertEqual(self.successResultOf(calls[1]), {"Num": 6, "Ans": 42})
        self.assertEqual(self.failureResultOf(calls[2], RPCError).value.message, "divide by zero")
        self.failureResultOf(calls[3], Unimplemented)
        self.failureResultOf(calls[4], Unimplemented)
        self.failureResultOf(calls[5], Unimplemented)
        self.assertEqual(self.successResultOf(calls[6])["Name"], "gopher")


class HTTPClientTests(SynchronousTestCase):
    """L{GobHTTPClientChannel}: CONNECT /_goRPC_ first, as rpc.DialHTTP does."""

    def setUp(self) -> None:
        self.channel = GobHTTPClientChannel(Clock())
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def test_connect_then_gob(self) -> None:
        """The channel sends Go's CONNECT, is ready on Go's answer, then speaks gob."""
        self.assertEqual(self.transport.value(), b"CONNECT /_goRPC_ HTTP/1.0\n\n")
        self.channel.dataReceived(b"HTTP/1.0 200 Connected to Go RPC\n")
        self.assertNoResult(self.channel.connected_d)
        self.channel.dataReceived(b"\n")
        self.assertIs(self.successResultOf(self.channel.connected_d), self.channel)
        self.transport.clear()
        d = self.channel.call("A.B", 2)
        self.assertEqual(GobServerCodecFor().feed(self.transport.value()), [(1, "A.B", 2)])
        answer = gob.Encoder().encode_all(((("A.B", 1, ""), RESPONSE), (5, gob.Int)))
        self.channel.dataReceived(answer)
        self.assertEqual(self.successResultOf(d), 5)

    def test_bytes_after_the_head(self) -> None:
        """gob bytes in the same read as the end of the head are not lost."""
        d = self.channel.connected_d
        self.channel.call("A.B", 2)
        answer = gob.Encoder().encode_all(((("A.B", 1, ""), RESPONSE), (5, gob.Int)))
        pending = self.channel.pending[1]
        self.channel.dataReceived(b"HTTP/1.0 200 Connected to Go RPC\r\n\r\n" + answer)
        self.successResultOf(d)
        self.assertEqual(self.successResultOf(pending), 5)

    def test_refused(self) -> None:
        """Any other answer fails the connection with Go's words."""
        self.channel.dataReceived(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        f = self.failureResultOf(self.channel.connected_d, Unavailable)
        self.assertIn("unexpected HTTP response: 404 Not Found", f.value.message)
        self.assertTrue(self.transport.disconnecting)

    def test_endless_head(self) -> None:
        """A head that never ends is refused once it is too long."""
        self.channel.dataReceived(b"HTTP/1.0 200 Connected to Go RPC\n" + b"X: y\n" * 20000)
        self.failureResultOf(self.channel.connected_d, Unavailable)
