"""
The gRPC server protocol with an C{h2} client on the other end, in memory
(StringTransport and a Clock: no sockets, no real time).
"""

from __future__ import annotations

import base64
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import StreamClosedError
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from rpcd.examples.helloworld import HelloWorldService
from rpcd.examples.protos import hello_world_pb2 as hello
from rpcd.grpcstd import STANDARD
from rpcd.limits import Limits
from rpcd.server import RPCServer
from rpcd.core.service import ServiceSpec, describe_service
from rpcd.service import ServiceRegistry
from rpcd.wire import grpcserver
from rpcd.wire.grpcmsg import MessageReader, encode_message
from rpcd.wire.grpcserver import GrpcServerProtocol
from tests.grpcservices import Probe, pb
from tests import test_wirefuzz as wirefuzz


def _headers_text(pair: H2Pair) -> bytes:
    """
    The header blocks the server wrote since the last pump, as
    C{name=value;} pairs, decoded frame by frame with the client's HPACK
    decoder (for bytes the h2 client cannot take after a GOAWAY).
    """
    data = pair.transport.value()
    out = b""
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        if isinstance(frame, HeadersFrame):
            out += b"".join(k + b"=" + v + b";" for k, v in pair.client.decoder.decode(frame.data, raw=True))
        data = data[9 + length:]
    return out


class Reply:
    """What one stream got back."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self.data = b""
        self.ended = False
        self.reset: int | None = None

    def messages(self, encoding: str = "identity") -> list[bytes]:
        return list(MessageReader(1 << 30, encoding).feed(self.data))

    @property
    def status(self) -> int:
        fields = self.trailers or self.headers
        return int(fields["grpc-status"])


def _text(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in headers}


_DESCRIBED: dict[type, ServiceSpec] = {}


def _described(cls: type) -> ServiceSpec:
    """
    A service class's description, made once (reading its methods' hints
    is most of what building an L{H2Pair} costs, and the fuzz test builds
    one per example); the registry builds a new instance from it.
    """
    if cls not in _DESCRIBED:
        _DESCRIBED[cls] = describe_service(cls, per_connection=False)
    return _DESCRIBED[cls]


class H2Pair:
    """
    A GrpcServerProtocol on a StringTransport and an h2 client connection
    talking to it.
    """

    def __init__(self, limits: Limits = Limits(), auto_ack: bool = True, clock: Any = None) -> None:
        self.clock = clock or Clock()
        registry = ServiceRegistry()
        self.probe = Probe()
        registry.add(self.probe)
        registry.add(_described(HelloWorldService), {"delay": 1.0, "clock": self.clock})
        for cls in STANDARD:
            registry.add(_described(cls), {"registry": registry})
        self.server = RPCServer(registry, self.clock, limits)
        self.protocol = GrpcServerProtocol(self.server)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.auto_ack = auto_ack
        self.replies: dict[int, Reply] = {}
        self.terminated: ConnectionTerminated | None = None
        self.pump()

    def pump(self) -> None:
        while True:
            out = self.client.data_to_send()
            if out and not self.transport.disconnecting:
                self.protocol.dataReceived(out)
            incoming = self.transport.value()
            self.transport.clear()
            if incoming:
                for event in self.client.receive_data(incoming):
                    self._event(event)
            if not out and not incoming:
                return

    def _event(self, event: Any) -> None:
        sid = getattr(event, "stream_id", None)
        reply = self.replies.setdefault(sid, Reply()) if sid else None
        if isinstance(event, ResponseReceived):
            assert reply is not None
            reply.headers = _text(event.headers)
        elif isinstance(event, TrailersReceived):
            assert reply is not None
            reply.trailers = _text(event.headers)
        elif isinstance(event, DataReceived):
            assert reply is not None
            reply.data += event.data
            if self.auto_ack:
                self.client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, StreamEnded):
            assert reply is not None
            reply.ended = True
        elif isinstance(event, StreamReset):
            assert reply is not None
            reply.reset = event.error_code
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event

    def open(self, path: str, *, headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
             content_type: str = "application/grpc") -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "test"),
            ("content-type", content_type), ("te", "trailers"), *headers])
        self.replies[sid] = Reply()
        self.pump()
        return sid

    def send(self, sid: int, *messages: Any, end: bool = False, compress: bool = False) -> None:
        try:
            for message in messages:
                raw = message if isinstance(message, bytes) else message.SerializeToString()
                self.client.send_data(sid, encode_message(raw, compress))
                self.pump()
            if end:
                self.client.end_stream(sid)
        except StreamClosedError:
            pass  # the server ended the call early (and reset the stream)
        self.pump()

    def call(self, path: str, *messages: Any, headers: list[tuple[str, str]] = ()  # type: ignore[assignment]
             ) -> Reply:
        sid = self.open(path, headers=headers)
        self.send(sid, *messages, end=True)
        return self.replies[sid]


class UnaryTests(SynchronousTestCase):
    """Unary calls, errors and metadata."""

    def test_unary(self) -> None:
        """A unary call gets headers, one message and grpc-status 0 in trailers."""
        pair = H2Pair()
        reply = pair.call("/rpcdtest.Probe/Echo", pb.Req(text="hi", blob=b"\0\1"))
        self.assertEqual(reply.headers[":status"], "200")
        self.assertEqual(reply.headers["content-type"], "application/grpc")
        self.assertIn("gzip", reply.headers["grpc-accept-encoding"])
        self.assertEqual([pb.Rep.FromString(m) for m in reply.messages()],
                         [pb.Rep(text="hi", blob=b"\0\1", n=2)])
        self.assertEqual(reply.status, 0)
        self.assertTrue(reply.ended)
        self.assertEqual(pair.protocol.calls, {})

    def test_seed_unary(self) -> None:
        """Seed 003's SayHelloWorld answers "Hello World !!"."""
        pair = H2Pair()
        reply = pair.call("/helloworld.HelloWorldService/SayHelloWorld",
                          hello.HelloWorldRequest(greeting="Hello Server 1 !!", infos={"hello": "world"}))
        self.assertEqual([hello.HelloWorldResponse.FromString(m) for m in reply.messages()],
                         [hello.HelloWorldResponse(reply="Hello World !!")])

    def test_error_status_and_details(self) -> None:
        """An RPCError becomes grpc-status, a percent-encoded grpc-message and a google.rpc.Status with the details."""
        pair = H2Pair()
        reply = pair.call("/rpcdtest.Probe/Echo", pb.Req(text="no 100% caf\u00e9", fail_code=5))
        self.assertEqual(reply.messages(), [])
        self.assertEqual(reply.status, 5)
        self.assertEqual(reply.headers["grpc-message"], "no 100%25 caf%C3%A9")
        raw = reply.headers["grpc-status-details-bin"]
        status = pb.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
        self.assertEqual((status.code, status.message), (5, "no 100% caf\u00e9"))
        detail = pb.Rep()
        self.assertTrue(status.details[0].Unpack(detail))
        self.assertEqual(detail, pb.Rep(text="detail", n=5))

    def test_metadata_both_ways(self) -> None:
        """Request metadata reaches the method; what it sets comes back in the response headers."""
        pair = H2Pair()
        reply = pair.call("/rpcdtest.Probe/Echo", pb.Req(text="m"),
                          headers=[("x-echo", "hello"), ("x-data-bin", "AAEC")])
        self.assertEqual(reply.headers["x-echo"], "hello")
        self.assertEqual(reply.headers["x-data-bin"], "AAEC")
        self.assertEqual(reply.status, 0)

    def test_unknown_method(self) -> None:
        """Unknown services and methods end at once with UNIMPLEMENTED (trailers only)."""
        pair = H2Pair()
        reply = pair.call("/rpcdtest.Probe/Nope", pb.Req())
        self.assertEqual(reply.status, 12)
        self.assertEqual(reply.headers["grpc-message"], "unknown method Nope for service rpcdtest.Probe")
        reply = pair.call("/no.Such/Thing", pb.Req())
        self.assertEqual(reply.headers["grpc-message"], "unknown service no.Such")

    def test_not_grpc(self) -> None:
        """A request that is not application/grpc gets HTTP 415; the connection stays."""
        pair = H2Pair()
        sid = pair.open("/rpcdtest.Probe/Echo", content_type="application/json")
        pair.send(sid, end=True)
        self.assertEqual(pair.replies[sid].headers[":status"], "415")
        self.assertEqual(pair.call("/rpcdtest.Probe/Echo", pb.Req(text="x")).status, 0)

    def test_bad_message(self) -> None:
        """A request that does not parse as the input type ends with INTERNAL."""
        pair = H2Pair()
        reply = pair.call("/rpcdtest.Probe/Echo", b"\xff\xff\xff")
        self.assertEqual(reply.status, 13)
        self.assertIn("rpcdtest.Req", reply.headers["grpc-message"])

    def test_no_message(self) -> None:
        """A unary request that ends without a message ends with INTERNAL."""
        pair = H2Pair()
        reply = pair.call("/rpcdtest.Probe/Echo")
        self.assertEqual(reply.status, 13)

    def test_too_large(self) -> None:
        """A message over max_frame_bytes ends its call with RESOURCE_EXHAUSTED and a reset; the connection stays."""
        pair = H2Pair(Limits(max_frame_bytes=1000))
        sid = pair.open("/rpcdtest.Probe/Echo")
        pair.client.send_data(sid, b"\0" + (5000).to_bytes(4, "big") + b"x" * 100)
        pair.pump()
        reply = pair.replies[sid]
        self.assertEqual(reply.status, 8)
        self.assertIn("larger than max (5000 vs. 1000)", reply.headers["grpc-message"])
        self.assertEqual(reply.reset, ErrorCodes.NO_ERROR)
        self.assertEqual(pair.call("/rpcdtest.Probe/Echo", pb.Req(text="ok")).status, 0)

    def test_gzip(self) -> None:
        """gzip requests are read, and replies of 1 KiB or more are gzipped back."""
        pair = H2Pair()
        sid = pair.open("/rpcdtest.Probe/Echo",
                        headers=[("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")])
        pair.send(sid, pb.Req(blob=b"z" * 5000), end=True, compress=True)
        reply = pair.replies[sid]
        self.assertEqual(reply.headers["grpc-encoding"], "gzip")
        self.assertEqual(reply.data[0], 1)  # the compressed flag
        self.assertLess(len(reply.data), 1000)
        self.assertEqual(pb.Rep.FromString(reply.messages("gzip")[0]).n, 5000)

    def test_unknown_encoding(self) -> None:
        """An unsupported grpc-encoding is UNIMPLEMENTED, with what rpcd accepts."""
        pair = H2Pair()
        reply = pair.call("/rpcdtest.Probe/Echo", pb.Req(), headers=[("grpc-encoding", "snappy")])
        self.assertEqual(reply.status, 12)
        self.assertIn("identity,gzip", reply.headers["grpc-message"])

    def test_json_mapping_over_dispatcher(self) -> None:
        """The same method called with plain data (native, JSON) takes and returns protobuf's JSON mapping."""
        pair = H2Pair()
        from rpcd.dispatch import Dispatcher
        dispatcher = Dispatcher(pair.protocol.session, pair.clock)
        result = dispatcher.call("HelloWorldService.SayHelloWorld", {"greeting": "hi", "infos": {"a": "b"}})
        self.assertEqual(result, {"reply": "Hello World !!"})
        from rpcd.errors import InvalidArgument
        with self.assertRaises(InvalidArgument) as caught:
            dispatcher.call("HelloWorldService.SayHelloWorld", {"nope": 1})
        self.assertIn("helloworld.HelloWorldRequest", caught.exception.message)


class DeadlineTests(SynchronousTestCase):
    """grpc-timeout and cancellation."""

    def test_deadline(self) -> None:
        """grpc-timeout becomes the call's deadline: the handler is cancelled, DEADLINE_EXCEEDED."""
        pair = H2Pair()
        reply = pair.call("/rpcdtest.Probe/Wait", pb.Req(text="slow"), headers=[("grpc-timeout", "500m")])
        self.assertEqual(reply.headers, {})
        pair.clock.advance(0.5)
        pair.pump()
        self.assertEqual(reply.status, 4)
        self.assertEqual(pair.probe.cancelled, 1)

    def test_deadline_counts_from_the_headers(self) -> None:
        """The deadline runs from the request's headers: a late message gets what is left, or DEADLINE_EXCEEDED."""
        pair = H2Pair()
        sid = pair.open("/rpcdtest.Probe/Wait", headers=[("grpc-timeout", "1S")])
        pair.clock.advance(0.75)
        pair.send(sid, pb.Req(), end=True)
        pair.clock.advance(0.25)
        pair.pump()
        self.assertEqual(pair.replies[sid].status, 4)
        late = pair.open("/rpcdtest.Probe/Echo", headers=[("grpc-timeout", "1S")])
        pair.clock.advance(1)
        pair.send(late, pb.Req(), end=True)
        self.assertEqual(pair.replies[late].status, 4)

    def test_bad_timeout(self) -> None:
        """A malformed grpc-timeout is INVALID_ARGUMENT."""
        pair = H2Pair()
        reply = pair.call("/rpcdtest.Probe/Echo", pb.Req(), headers=[("grpc-timeout", "soon")])
        self.assertEqual(reply.status, 3)

    def test_reset_cancels(self) -> None:
        """RST_STREAM from the caller cancels the running handler."""
        pair = H2Pair()
        sid = pair.open("/rpcdtest.Probe/Wait")
        pair.send(sid, pb.Req(), end=True)
        self.assertEqual(len(pair.server.registry.lookup_shared("Probe.Wait") and pair.probe.waiting), 1)
        pair.client.reset_stream(sid, ErrorCodes.CANCEL)
        pair.pump()
        self.assertEqual(pair.probe.cancelled, 1)
        self.assertEqual(pair.protocol.calls, {})
        self.assertFalse(pair.protocol.busy())

    def test_connection_lost_cancels(self) -> None:
        """A lost connection cancels every running handler."""
        pair = H2Pair()
        pair.call("/rpcdtest.Probe/Wait", pb.Req())
        pair.call("/rpcdtest.Probe/Wait", pb.Req())
        pair.protocol.connectionLost()
        self.assertEqual(pair.probe.cancelled, 2)


class StreamTests(SynchronousTestCase):
    """Server-, client- and bidirectional streaming, and flow control."""

    def test_seed_streams(self) -> None:
        """Seed 003's ListHello, SayMoreHello and SayHelloChat answer as the seed's Go server."""
        pair = H2Pair()
        sid = pair.open("/helloworld.HelloWorldService/ListHello")
        pair.send(sid, hello.HelloWorldRequest(greeting="Hello Server List Hello"), end=True)
        pair.clock.advance(1)
        pair.clock.advance(1)
        pair.pump()
        self.assertEqual(pair.replies[sid].trailers, {})  # the seed sleeps after the third too
        pair.clock.advance(1)
        pair.pump()
        reply = pair.replies[sid]
        self.assertEqual([hello.HelloWorldResponse.FromString(m).reply for m in reply.messages()],
                         [f"ListHello Reply Hello Server List Hello {n}" for n in (1, 2, 3)])
        self.assertEqual(reply.status, 0)

        more = pair.call("/helloworld.HelloWorldService/SayMoreHello",
                         *(hello.HelloWorldRequest(greeting=f"SayMoreHello Hello Server {i}") for i in range(3)))
        self.assertEqual([hello.HelloWorldResponse.FromString(m).reply for m in more.messages()],
                         ["SayMoreHello Recv Muti Greeting"])

        chat = pair.call("/helloworld.HelloWorldService/SayHelloChat",
                         *(hello.HelloWorldRequest(greeting=f"SayHelloChat Hello Server {i}") for i in range(3)))
        for _ in range(3):
            pair.clock.advance(1)
        pair.pump()
        self.assertEqual([hello.HelloWorldRequest.FromString(m).greeting for m in chat.messages()],
                         [f"SayHelloChat Server Say Hello {n}" for n in (1, 2, 3)])
        self.assertEqual(chat.status, 0)

    def test_client_stream(self) -> None:
        """A client stream's messages reach the handler; its return value is the one reply."""
        pair = H2Pair()
        reply = pair.call("/rpcdtest.Probe/Sum", *(pb.Req(count=n) for n in range(10)))
        self.assertEqual(pb.Rep.FromString(reply.messages()[0]).n, 45)

    def test_bidi(self) -> None:
        """A bidirectional call answers each message as it comes, before the caller half-closes."""
        pair = H2Pair()
        sid = pair.open("/rpcdtest.Probe/Chat")
        pair.send(sid, pb.Req(text="a"))
        self.assertEqual([pb.Rep.FromString(m).text for m in pair.replies[sid].messages()], ["A"])
        pair.send(sid, pb.Req(text="b"), end=True)
        self.assertEqual([pb.Rep.FromString(m).text for m in pair.replies[sid].messages()], ["A", "B"])
        self.assertEqual(pair.replies[sid].status, 0)

    def test_slow_reader_stops_the_handler(self) -> None:
        """A caller that does not open its window stops a server stream; opening it lets the rest through."""
        pair = H2Pair(auto_ack=False)
        sid = pair.open("/rpcdtest.Probe/Count")
        pair.send(sid, pb.Req(count=100, blob=b"x" * 4000), end=True)
        call = pair.protocol.calls[sid]
        got = len(pair.replies[sid].data)
        self.assertLessEqual(got, 65535)
        self.assertLess(len(call.out), 5000)  # one message waits, the generator is parked
        self.assertEqual(pair.replies[sid].trailers, {})
        while not pair.replies[sid].trailers:
            pair.client.acknowledge_received_data(65535, sid)
            pair.pump()
        self.assertEqual(len(pair.replies[sid].messages()), 100)

    def test_full_write_buffer_stops_the_handler(self) -> None:
        """While the transport's write buffer is full a server stream waits; it goes on when it drains."""
        pair = H2Pair()
        sid = pair.open("/rpcdtest.Probe/Echo")  # registers the connection's producer
        pair.send(sid, pb.Req(), end=True)
        gate = pair.transport.producer
        self.assertIs(gate, pair.protocol.gate)
        gate.pauseProducing()
        sid = pair.open("/rpcdtest.Probe/Count")
        pair.send(sid, pb.Req(count=50), end=True)
        self.assertEqual(len(pair.replies[sid].messages()), 1)
        gate.resumeProducing()
        pair.pump()
        self.assertEqual(len(pair.replies[sid].messages()), 50)
        self.assertEqual(pair.replies[sid].status, 0)

    def test_reader_keeps_the_window_open(self) -> None:
        """A handler that takes messages as they come keeps the caller's window open."""
        pair = H2Pair()
        sid = pair.open("/rpcdtest.Probe/Sum")
        before = pair.client.local_flow_control_window(sid)
        pair.send(sid, *(pb.Req(count=1, blob=b"y" * 1000) for _ in range(200)))
        self.assertGreater(pair.client.local_flow_control_window(sid), before - 40000)
        pair.send(sid, end=True)
        self.assertEqual(pb.Rep.FromString(pair.replies[sid].messages()[0]).n, 200)

    def test_slow_handler_stops_the_caller(self) -> None:
        """Messages a handler has not taken are not acknowledged: the caller's window closes, memory stays bounded."""
        pair = H2Pair()
        sid = pair.open("/rpcdtest.Probe/Sum")
        call = pair.protocol.calls[sid]
        inbox = call.inbox
        assert inbox is not None
        # The handler stops reading: its pending wait is taken away.
        waiting, inbox._waiting = inbox._waiting, None
        message = pb.Req(count=1, blob=b"q" * 1000)
        sent = 0
        while pair.client.local_flow_control_window(sid) >= 1010:
            pair.send(sid, message)
            sent += 1
        self.assertLess(sent, 70)  # the 64 KiB stream window, not more
        self.assertEqual(inbox.queued(), sent)
        self.assertGreater(call.unacknowledged, 60000)
        # The messages are taken: the window reopens.
        while inbox.queued():
            inbox.__anext__()
        pair.pump()
        self.assertEqual(pair.protocol.held_bytes, 0)
        self.assertGreater(pair.client.local_flow_control_window(sid), 60000)
        # The handler, given back its wait, sees the end of the stream.
        assert waiting is not None
        inbox._waiting = waiting
        pair.send(sid, end=True)
        self.assertEqual(pair.replies[sid].status, 0)

    def test_partial_messages_bounded_per_connection(self) -> None:
        """Partial messages on many streams hold at most about twice the maximum message per connection."""
        pair = H2Pair(Limits(max_frame_bytes=1000))
        before = pair.client.outbound_flow_control_window
        sids = []
        for _ in range(20):
            sid = pair.open("/rpcdtest.Probe/Echo")
            pair.client.send_data(sid, b"\0" + (900).to_bytes(4, "big") + b"p" * 500)
            pair.pump()
            sids.append(sid)
        # Beyond the budget (2 x 1000) nothing is acknowledged: the caller can
        # send no more than its connection window on top.
        held = pair.protocol.held_bytes
        withheld = sum(c.unacknowledged for c in pair.protocol.calls.values())
        self.assertEqual(held, 20 * 500)
        self.assertGreaterEqual(withheld, held - (2000 + 505))
        self.assertLessEqual(pair.client.outbound_flow_control_window, before - withheld)
        for sid in sids:
            pair.client.reset_stream(sid, ErrorCodes.CANCEL)
        pair.pump()
        self.assertEqual(pair.protocol.held_bytes, 0)
        self.assertEqual(pair.call("/rpcdtest.Probe/Echo", pb.Req(text="after")).status, 0)


class ConnectionTests(SynchronousTestCase):
    """Limits on the connection: streams, resets, pings, GOAWAY."""

    def test_settings(self) -> None:
        """The server announces its stream cap and refuses push."""
        pair = H2Pair(Limits(max_calls_per_connection=7))
        self.assertEqual(pair.client.remote_settings.max_concurrent_streams, 7)
        self.assertEqual(pair.client.remote_settings.enable_push, 0)

    def test_rapid_reset(self) -> None:
        """More than MAX_RESETS stream resets in the window ends the connection with ENHANCE_YOUR_CALM."""
        pair = H2Pair()
        for _ in range(grpcserver.MAX_RESETS + 1):
            sid = pair.open("/rpcdtest.Probe/Wait")
            pair.send(sid, pb.Req(), end=True)
            pair.client.reset_stream(sid, ErrorCodes.CANCEL)
            pair.pump()
            if pair.terminated:
                break
        assert pair.terminated is not None
        self.assertEqual(pair.terminated.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(pair.transport.disconnecting)

    def test_slow_resets_allowed(self) -> None:
        """Resets spread over time are fine."""
        pair = H2Pair()
        for _ in range(grpcserver.MAX_RESETS * 2):
            sid = pair.open("/rpcdtest.Probe/Wait")
            pair.send(sid, pb.Req(), end=True)
            pair.client.reset_stream(sid, ErrorCodes.CANCEL)
            pair.pump()
            pair.clock.advance(grpcserver.RESET_WINDOW / grpcserver.MAX_RESETS * 1.01)
        self.assertIsNone(pair.terminated)
        self.assertEqual(pair.probe.cancelled, grpcserver.MAX_RESETS * 2)

    def test_ping_answered(self) -> None:
        """Pings are answered; too frequent ones with nothing sent between are refused with too_many_pings."""
        pair = H2Pair()
        pair.client.ping(b"12345678")
        pair.pump()
        self.assertIsNone(pair.terminated)
        for _ in range(grpcserver.MAX_PING_STRIKES):
            pair.client.ping(b"12345678")
            pair.pump()
        self.assertIsNone(pair.terminated)
        pair.client.ping(b"12345678")
        pair.pump()
        assert pair.terminated is not None
        self.assertEqual(pair.terminated.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertEqual(pair.terminated.additional_data, b"too_many_pings")

    def test_pings_spaced_or_with_data(self) -> None:
        """Pings spaced by the minimum interval, or with replies between, are fine."""
        pair = H2Pair()
        for _ in range(5):
            pair.client.ping(b"12345678")
            pair.pump()
            pair.clock.advance(grpcserver.MIN_PING_INTERVAL)
        for _ in range(5):
            pair.client.ping(b"12345678")
            pair.call("/rpcdtest.Probe/Echo", pb.Req())
        self.assertIsNone(pair.terminated)

    def test_drain(self) -> None:
        """drain() sends GOAWAY, refuses new streams, lets running calls finish, then closes."""
        pair = H2Pair()
        reply = pair.call("/rpcdtest.Probe/Wait", pb.Req())
        pair.protocol.drain()
        frame, _ = Frame.parse_frame_header(memoryview(pair.transport.value()[:9]))
        self.assertIsInstance(frame, GoAwayFrame)
        pair.transport.clear()
        self.assertFalse(pair.transport.disconnecting)
        # (The h2 client would close on GOAWAY; the reply is read as frames.)
        pair.probe.waiting[0].callback(None)
        self.assertIn(b"grpc-status=0;", _headers_text(pair))
        self.assertTrue(pair.transport.disconnecting)
        self.assertEqual(reply.headers, {})

    def test_drain_keeps_reading(self) -> None:
        """While draining, running client streams still get their messages and answer."""
        pair = H2Pair()
        sid = pair.open("/rpcdtest.Probe/Sum")
        pair.send(sid, pb.Req(count=2))
        pair.protocol.drain()
        pair.transport.clear()  # the GOAWAY (the h2 client would close on it)
        pair.client.send_data(sid, encode_message(pb.Req(count=40).SerializeToString()), end_stream=True)
        pair.protocol.dataReceived(pair.client.data_to_send())
        self.assertIn(b"grpc-status=0;", _headers_text(pair))
        self.assertTrue(pair.transport.disconnecting)

    def test_shutdown_says_goaway(self) -> None:
        """When the reactor shuts down, each connection sends GOAWAY NO_ERROR and stops taking calls."""
        from twisted.internet.testing import MemoryReactorClock
        reactor = MemoryReactorClock()
        pair = H2Pair(clock=reactor)
        [(trigger, args, kwargs)] = reactor.triggers["before"]["shutdown"]
        trigger(*args, **kwargs)
        frame, _ = Frame.parse_frame_header(memoryview(pair.transport.value()[:9]))
        self.assertIsInstance(frame, GoAwayFrame)
        self.assertTrue(pair.transport.disconnecting)  # no calls were running

    def test_protocol_error(self) -> None:
        """Bytes that are not HTTP/2 end the connection with GOAWAY PROTOCOL_ERROR."""
        pair = H2Pair()
        pair.protocol.dataReceived(b"\0\0\x04\x08\0\0\0\0\0\0\0\0\0")  # WINDOW_UPDATE 0 on stream 0
        incoming = pair.transport.value()
        events = pair.client.receive_data(incoming)
        self.assertTrue(any(isinstance(e, ConnectionTerminated) and e.error_code == ErrorCodes.PROTOCOL_ERROR
                            for e in events))
        self.assertTrue(pair.transport.disconnecting)


class StandardServiceTests(SynchronousTestCase):
    """Health and reflection over gRPC."""

    def test_health(self) -> None:
        """Check says SERVING for the server and served services, NOT_FOUND for others."""
        from rpcd.pb import health_pb2
        pair = H2Pair()
        for name in ("", "helloworld.HelloWorldService", "Probe"):
            reply = pair.call("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest(service=name))
            self.assertEqual(health_pb2.HealthCheckResponse.FromString(reply.messages()[0]).status,
                             health_pb2.HealthCheckResponse.SERVING, name)
        reply = pair.call("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest(service="x"))
        self.assertEqual(reply.status, 5)

    def test_health_watch(self) -> None:
        """Watch sends the status, then each change, until the caller resets."""
        from rpcd.pb import health_pb2
        pair = H2Pair()
        sid = pair.open("/grpc.health.v1.Health/Watch")
        pair.send(sid, health_pb2.HealthCheckRequest(service=""), end=True)
        health = pair.server.registry.lookup_shared("GrpcHealth.Watch").function.__self__
        health.set_status("", False)
        pair.pump()
        statuses = [health_pb2.HealthCheckResponse.FromString(m).status
                    for m in pair.replies[sid].messages()]
        self.assertEqual(statuses, [health_pb2.HealthCheckResponse.SERVING,
                                    health_pb2.HealthCheckResponse.NOT_SERVING])
        pair.client.reset_stream(sid, ErrorCodes.CANCEL)
        pair.pump()
        self.assertEqual(pair.protocol.calls, {})

    def test_reflection(self) -> None:
        """Reflection lists the services and returns the file defining a symbol, with its imports."""
        from google.protobuf import descriptor_pb2

        from rpcd.pb import reflection_v1_pb2 as r
        pair = H2Pair()
        reply = pair.call("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                          r.ServerReflectionRequest(list_services=""),
                          r.ServerReflectionRequest(file_containing_symbol="rpcdtest.Probe"),
                          r.ServerReflectionRequest(file_containing_symbol="no.Such"))
        listed, files, missing = [r.ServerReflectionResponse.FromString(m) for m in reply.messages()]
        self.assertEqual([s.name for s in listed.list_services_response.service],
                         ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                          "grpc.reflection.v1alpha.ServerReflection", "helloworld.HelloWorldService",
                          "rpcdtest.Probe"])
        names = [descriptor_pb2.FileDescriptorProto.FromString(f).name
                 for f in files.file_descriptor_response.file_descriptor_proto]
        self.assertEqual(names, ["grpc_probe.proto", "google/protobuf/any.proto"])
        self.assertEqual(missing.error_response.error_code, 5)


def _client_bytes() -> list[bytes]:
    """What an h2 client sends for a few calls: the samples to mutate."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    samples = [client.data_to_send()]
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", "t"),
               ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "5S"),
               ("x-meta-bin", "AAE")]
    for path, body in (("/rpcdtest.Probe/Echo", pb.Req(text="x").SerializeToString()),
                       ("/rpcdtest.Probe/Chat", pb.Req(text="y").SerializeToString()),
                       ("/rpcdtest.Probe/Count", pb.Req(count=3).SerializeToString())):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(":path", path), *headers])
        client.send_data(sid, encode_message(body) + encode_message(body, compress=True),
                         end_stream=True)
        samples.append(client.data_to_send())
    client.reset_stream(3)
    client.ping(b"01234567")
    samples.append(client.data_to_send())
    return samples


class FuzzTests(SynchronousTestCase):
    """Mutated HTTP/2 input never makes the gRPC protocol raise or log a failure."""

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(wirefuzz.mutated(_client_bytes()),
                     wirefuzz.mutated(_client_bytes()[1:]).map(lambda d: _client_bytes()[0] + d),
                     st.binary(max_size=300)),
           st.lists(st.integers(0, 10_000), max_size=8))
    def test_mutated(self, data: bytes, cuts: list[int]) -> None:
        """Whatever arrives, the protocol answers or closes with GOAWAY; no exception, no logged failure."""
        pair = H2Pair(Limits(max_frame_bytes=4096))
        protocol = pair.protocol
        with capturedLogs() as events:
            for chunk in wirefuzz.chunks(data, cuts):
                if pair.transport.disconnecting:
                    break
                protocol.dataReceived(chunk)
            pair.clock.advance(10)
            self.assertEqual(protocol.held_bytes, sum(c.held for c in protocol.calls.values()))
            self.assertLessEqual(protocol.held_bytes, 2 * 4096 + 70_000 + grpcserver.CONNECTION_WINDOW)
            protocol.connectionLost()
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual(failures, [], [e["log_failure"].getTraceback() for e in failures])
