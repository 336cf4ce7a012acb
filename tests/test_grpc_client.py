"""
Unit tests of rpcd's gRPC client without sockets: the message framing and
headers (L{rpcd.wire.grpc_client_messages}), and the channel
(L{rpcd.grpc_client}) against an C{h2} server connection in memory.
"""

from __future__ import annotations

import gzip
import struct
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from rpcd.errors import Code, ConnectionLost, DeadlineExceeded, RPCError
from rpcd.grpc_client import GRPCClientChannel
from rpcd.grpc_client_protos import ProtoSet, load_protos
from rpcd.wire.grpc_client_messages import (
    GRPCWireError,
    MessageReader,
    call_status,
    decode_metadata,
    encode_message,
    encode_metadata,
    encode_timeout,
)
from tests.daemon import ROOT

_protos: ProtoSet | None = None


def echo_protos() -> ProtoSet:
    """
    @return: C{tests/protos/echo.proto}, loaded once.
    """
    global _protos
    if _protos is None:
        _protos = load_protos([ROOT / "tests" / "protos" / "echo.proto"])
    return _protos


class MessagesTests(SynchronousTestCase):
    """Framing, timeouts, metadata and status, as the gRPC spec has them."""

    def test_timeout_units(self) -> None:
        """grpc-timeout uses the finest unit that fits in 8 digits, rounded up."""
        self.assertEqual(encode_timeout(0.05), "50000000n")
        self.assertEqual(encode_timeout(0.5), "500000u")
        self.assertEqual(encode_timeout(5), "5000000u")
        self.assertEqual(encode_timeout(1000), "1000000m")
        self.assertEqual(encode_timeout(200000), "200000S")
        self.assertEqual(encode_timeout(1e-12), "1n")
        self.assertEqual(encode_timeout(1e12), "99999999H")

    def test_metadata_round_trip(self) -> None:
        """Text and -bin metadata (base64 without padding) survive encoding; repeated keys become lists."""
        fields = encode_metadata({"X-User": "alice", "trace-bin": b"\x00\x01", "tag": ["a", "b"]})
        self.assertEqual(fields, [(b"x-user", b"alice"), (b"trace-bin", b"AAE"),
                                  (b"tag", b"a"), (b"tag", b"b")])
        self.assertEqual(decode_metadata([(b":status", b"200"), (b"content-type", b"x"), *fields]),
                         {"x-user": "alice", "trace-bin": b"\x00\x01", "tag": ["a", "b"]})

    def test_metadata_refused(self) -> None:
        """Reserved keys, bad characters, text in -bin keys and non-ASCII values are refused, naming the key."""
        for bad in ({"grpc-timeout": "1S"}, {"te": "x"}, {"a b": "x"}, {"k-bin": "text"},
                    {"k": "héllo"}, {"k": b"bytes"}):
            with self.assertRaises(ValueError) as cm:
                encode_metadata(bad)
            self.assertIn(repr(next(iter(bad))), str(cm.exception))

    def test_reader_splits(self) -> None:
        """Messages split across and packed into chunks come out whole and in order."""
        wire = encode_message(b"one") + encode_message(b"") + encode_message(b"three")
        reader = MessageReader()
        out = []
        for i in range(len(wire)):
            out += reader.feed(wire[i:i + 1])
        self.assertEqual(out, [b"one", b"", b"three"])
        self.assertFalse(reader.partial)

    def test_reader_limit(self) -> None:
        """A length over the limit fails RESOURCE_EXHAUSTED from the 5-byte prefix alone."""
        reader = MessageReader(max_size=10)
        with self.assertRaises(GRPCWireError) as cm:
            reader.feed(struct.pack(">BI", 0, 11))
        self.assertEqual(cm.exception.code, Code.RESOURCE_EXHAUSTED)

    def test_reader_gzip(self) -> None:
        """gzip messages are inflated, within the limit; without grpc-encoding gzip they are refused."""
        body = gzip.compress(b"a" * 1000)
        reader = MessageReader(max_size=1000)
        reader.encoding = "gzip"
        self.assertEqual(reader.feed(struct.pack(">BI", 1, len(body)) + body), [b"a" * 1000])
        small = MessageReader(max_size=999)
        small.encoding = "gzip"
        with self.assertRaises(GRPCWireError) as cm:
            small.feed(struct.pack(">BI", 1, len(body)) + body)
        self.assertEqual(cm.exception.code, Code.RESOURCE_EXHAUSTED)
        with self.assertRaises(GRPCWireError) as cm:
            MessageReader().feed(struct.pack(">BI", 1, len(body)) + body)
        self.assertEqual(cm.exception.code, Code.INTERNAL)

    def test_status(self) -> None:
        """grpc-status, a percent-encoded grpc-message and the details come out of trailers."""
        self.assertEqual(call_status({b"grpc-status": b"5", b"grpc-message": b"h%C3%A9 100%25",
                                      b"grpc-status-details-bin": b"AAE"}),
                         (5, "hé 100%", b"\x00\x01"))
        self.assertEqual(call_status({})[0], Code.UNKNOWN)
        self.assertEqual(call_status({b"grpc-status": b"x"})[0], Code.UNKNOWN)


class Server:
    """An h2 server connection in memory, talking to a channel over a StringTransport."""

    def __init__(self, channel: GRPCClientChannel, transport: StringTransport,
                 settings: dict[int, int] | None = None) -> None:
        self.channel = channel
        self.transport = transport
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.events: list[Any] = []

    def pump(self) -> list[Any]:
        """
        Exchange bytes both ways until quiet.

        @return: the server's new events.
        """
        new: list[Any] = []
        while True:
            moved = False
            data = self.transport.value()
            if data:
                self.transport.clear()
                new += self.conn.receive_data(data)
                moved = True
            out = self.conn.data_to_send()
            if out:
                self.channel.dataReceived(out)
                moved = True
            if not moved:
                self.events += new
                return new

    def respond(self, stream_id: int, *payloads: bytes, status: int = 0, message: str = "",
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.conn.send_headers(stream_id, headers or [(b":status", b"200"),
                                                      (b"content-type", b"application/grpc")])
        for payload in payloads:
            self.conn.send_data(stream_id, encode_message(payload))
        self.conn.send_headers(stream_id, [(b"grpc-status", str(status).encode()),
                                           (b"grpc-message", message.encode())], end_stream=True)
        self.pump()

    def requests(self) -> list[Any]:
        return [e for e in self.events if isinstance(e, h2.events.RequestReceived)]


class ChannelTests(SynchronousTestCase):
    """GRPCClientChannel against an h2 server in memory."""

    def setUp(self) -> None:
        self.protos = echo_protos()
        self.clock = Clock()
        self.channel = GRPCClientChannel(self.clock, self.protos)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)
        self.connected = self.channel.connected_d

    def server(self, settings: dict[int, int] | None = None) -> Server:
        server = Server(self.channel, self.transport, settings)
        server.pump()
        self.successResultOf(self.connected)
        return server

    def reply(self, **fields: Any) -> bytes:
        return self.protos.method("Echo.Unary").response_class(**fields).SerializeToString()

    def test_ready_after_settings(self) -> None:
        """The channel is ready only once the server's SETTINGS arrived."""
        self.assertNoResult(self.connected)
        self.server()

    def test_unary(self) -> None:
        """A unary call sends gRPC's headers, the timeout and metadata, and fires with the reply as a dict."""
        server = self.server()
        d = self.channel.call("Echo.Unary", {"text": "hi"}, 2.5, {"x-user": "alice"})
        server.pump()
        [request] = server.requests()
        headers = dict(request.headers)
        self.assertEqual((headers[b":path"], headers[b":method"], headers[b"te"],
                          headers[b"content-type"], headers[b"grpc-timeout"], headers[b"x-user"]),
                         (b"/rpcdtest.Echo/Unary", b"POST", b"trailers", b"application/grpc",
                          b"2500000u", b"alice"))
        data = b"".join(e.data for e in server.events if isinstance(e, h2.events.DataReceived))
        self.assertEqual(data, encode_message(self.protos.request(
            self.protos.method("Echo.Unary"), {"text": "hi"})))
        self.assertTrue(any(isinstance(e, h2.events.StreamEnded) for e in server.events))
        server.respond(request.stream_id, self.reply(text="back", index=3))
        self.assertEqual(self.successResultOf(d), {"text": "back", "index": 3})

    def test_error_status(self) -> None:
        """A non-OK status fails the call with its code, message and trailing metadata."""
        server = self.server()
        d = self.channel.call("Echo.Unary", {})
        server.pump()
        [request] = server.requests()
        server.respond(request.stream_id, status=7, message="no%20way")
        error = self.failureResultOf(d, RPCError).value
        self.assertEqual((error.code, error.message), (Code.PERMISSION_DENIED, "no way"))

    def test_not_grpc(self) -> None:
        """An HTTP 404 fails UNIMPLEMENTED, an HTML answer UNKNOWN; the connection goes on."""
        server = self.server()
        d1 = self.channel.call("Echo.Unary", {})
        d2 = self.channel.call("Echo.Unary", {})
        server.pump()
        one, two = server.requests()
        server.conn.send_headers(one.stream_id, [(b":status", b"404")], end_stream=True)
        server.conn.send_headers(two.stream_id, [(b":status", b"200"),
                                                 (b"content-type", b"text/html")])
        server.pump()
        self.assertEqual(self.failureResultOf(d1, RPCError).value.code, Code.UNIMPLEMENTED)
        self.assertEqual(self.failureResultOf(d2, RPCError).value.code, Code.UNKNOWN)
        d3 = self.channel.call("Echo.Unary", {})
        server.pump()
        server.respond(server.requests()[-1].stream_id, self.reply(text="ok"))
        self.assertEqual(self.successResultOf(d3), {"text": "ok"})

    def test_two_responses_to_a_unary_call(self) -> None:
        """A second response message to a unary call fails it INTERNAL."""
        server = self.server()
        d = self.channel.call("Echo.Unary", {})
        server.pump()
        server.respond(server.requests()[0].stream_id, self.reply(), self.reply())
        error = self.failureResultOf(d, RPCError).value
        self.assertEqual(error.code, Code.INTERNAL)
        self.assertIn("more than one response", error.message)

    def test_deadline(self) -> None:
        """A call past its timeout fails DEADLINE_EXCEEDED and resets its stream with CANCEL."""
        server = self.server()
        d = self.channel.call("Echo.Unary", {}, 1.0)
        server.pump()
        self.clock.advance(1.0)
        self.failureResultOf(d, DeadlineExceeded)
        [reset] = [e for e in server.pump() if isinstance(e, h2.events.StreamReset)]
        self.assertEqual(reset.error_code, h2.errors.ErrorCodes.CANCEL)

    def test_connection_lost(self) -> None:
        """Losing the connection fails pending calls and streams with ConnectionLost."""
        server = self.server()
        d = self.channel.call("Echo.Unary", {})
        stream = self.channel.open_stream("Echo.Count", {"count": 5})
        server.pump()
        self.channel.connectionLost(None)
        self.failureResultOf(d, ConnectionLost)
        self.failureResultOf(stream.result(), ConnectionLost)

    def test_stream_limit(self) -> None:
        """Calls beyond the server's MAX_CONCURRENT_STREAMS wait, and start as streams free up."""
        server = self.server({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        d1 = self.channel.call("Echo.Unary", {"text": "1"})
        d2 = self.channel.call("Echo.Unary", {"text": "2"})
        server.pump()
        self.assertEqual(len(server.requests()), 1)
        server.respond(server.requests()[0].stream_id, self.reply(text="1"))
        self.assertEqual(self.successResultOf(d1), {"text": "1"})
        server.pump()
        self.assertEqual(len(server.requests()), 2)
        server.respond(server.requests()[1].stream_id, self.reply(text="2"))
        self.assertEqual(self.successResultOf(d2), {"text": "2"})

    def test_goaway(self) -> None:
        """GOAWAY fails calls the server did not take with UNAVAILABLE, lets the others finish, and refuses new ones."""
        server = self.server()
        d1 = self.channel.call("Echo.Unary", {})
        d2 = self.channel.call("Echo.Unary", {})
        server.pump()
        one, _ = server.requests()
        server.conn.close_connection(last_stream_id=one.stream_id)
        server.pump()
        self.assertEqual(self.failureResultOf(d2, RPCError).value.code, Code.UNAVAILABLE)
        self.assertEqual(self.failureResultOf(self.channel.call("Echo.Unary", {}),
                                              RPCError).value.code, Code.UNAVAILABLE)
        self.assertNoResult(d1)

    def test_slow_reader_holds_the_window(self) -> None:
        """Messages the application does not take stop the stream's window; taking them reopens it."""
        server = self.server()
        stream = self.channel.open_stream("Echo.Count", {})
        server.pump()
        stream_id = server.requests()[0].stream_id
        server.conn.send_headers(stream_id, [(b":status", b"200"),
                                             (b"content-type", b"application/grpc")])
        message = encode_message(self.reply(payload=b"x" * 60000))
        sent = 0
        while server.conn.local_flow_control_window(stream_id) >= len(message):
            for i in range(0, len(message), 16384):
                server.conn.send_data(stream_id, message[i:i + 16384])
            sent += 1
            server.pump()
        window = self.channel.h2.window if self.channel.h2 else 0
        self.assertGreater(sent * len(message), window)
        self.assertLess(sent * len(message), 2 * window + len(message))
        self.assertLess(server.conn.local_flow_control_window(stream_id), len(message))
        for _ in range(sent):
            self.assertEqual(len(self.successResultOf(stream.__anext__())["payload"]), 80000)
        server.pump()
        self.assertGreaterEqual(server.conn.local_flow_control_window(stream_id), window // 2)

    def test_send_waits_for_window(self) -> None:
        """A request bigger than the server's window goes out as the window grows; send() fires then."""
        server = self.server()
        stream = self.channel.open_stream("Echo.Collect")
        server.pump()
        sent = stream.send({"payload": "eHh4" * 40000})
        server.pump()
        self.assertNoResult(sent)
        received = sum(e.flow_controlled_length for e in server.events
                       if isinstance(e, h2.events.DataReceived))
        self.assertEqual(received, 65535)
        stream_id = server.requests()[0].stream_id
        while not sent.called:
            got = sum(e.flow_controlled_length for e in server.pump()
                      if isinstance(e, h2.events.DataReceived))
            server.conn.acknowledge_received_data(received, stream_id)
            received = got
        self.successResultOf(sent)
        stream.close_send()
        server.pump()
        self.assertTrue(any(isinstance(e, h2.events.StreamEnded) for e in server.events))

    def test_client_stream(self) -> None:
        """A client stream's requests arrive in order; its one response is the result."""
        server = self.server()
        stream = self.channel.open_stream("Echo.Collect")
        for text in ("a", "b"):
            self.successResultOf(stream.send({"text": text}))
        stream.close_send()
        server.pump()
        data = b"".join(e.data for e in server.events if isinstance(e, h2.events.DataReceived))
        method = self.protos.method("Echo.Collect")
        self.assertEqual(data, encode_message(self.protos.request(method, {"text": "a"}))
                         + encode_message(self.protos.request(method, {"text": "b"})))
        server.respond(server.requests()[0].stream_id, self.reply(text="a,b"))
        self.assertEqual(self.successResultOf(stream.result()), {"text": "a,b"})
        self.failureResultOf(stream.send({}), RPCError)

    def test_server_ends_before_client(self) -> None:
        """A server that answers before the client half-closed frees the stream: the next call gets it."""
        server = self.server({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        stream = self.channel.open_stream("Echo.Collect")
        self.successResultOf(stream.send({"text": "a"}))
        server.pump()
        server.respond(server.requests()[0].stream_id, self.reply(text="early"))
        self.assertEqual(self.successResultOf(stream.result()), {"text": "early"})
        d = self.channel.call("Echo.Unary", {})
        server.pump()
        self.assertEqual(len(server.requests()), 2)
        server.respond(server.requests()[1].stream_id, self.reply(text="next"))
        self.assertEqual(self.successResultOf(d), {"text": "next"})
