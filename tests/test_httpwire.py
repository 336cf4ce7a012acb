"""
Tests for rpcd's C{http} wire protocol (L{rpcd.wire.httpserver}) without
sockets: JSON-RPC 2.0 over C{POST /rpc}, C{CONNECT /_goRPC_} into gob,
C{/debug/rpc}, strict parsing, keep-alive, pipelining and the handshake
timeout.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from rpcd.server import protocols as server_module
from rpcd.examples.arith import Cal
from rpcd.server import Limits
from rpcd.testing import MemoryConnection
from rpcd.wire.httpserver import HTTPServerProtocol, debug_page
from tests.jsonservices import connect_protocol, make_server
from tests.test_jsonwire import SPEC_EXAMPLES, without_data


def post(body: bytes, *, version: str = "HTTP/1.1", content_type: str = "application/json",
         extra: str = "", target: str = "/rpc") -> bytes:
    """A POST request to /rpc carrying a body."""
    head = (f"POST {target} {version}\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n")
    return head.encode("latin-1") + body


def get(target: str, *, version: str = "HTTP/1.1", method: str = "GET", extra: str = "") -> bytes:
    """A bodiless request."""
    return f"{method} {target} {version}\r\nHost: localhost\r\n{extra}\r\n".encode("latin-1")


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """
    Split the bytes a server wrote into responses.

    @return: C{(status, headers by lower-case name, body)} for each.
    """
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            headers[name.lower()] = value
        length = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


class RPCTests(SynchronousTestCase):
    """JSON-RPC 2.0 over POST /rpc."""

    def setUp(self) -> None:
        self.server, self.math, self.odd = make_server()
        self.protocol, self.transport = connect_protocol(self.server)

    def test_spec_examples(self) -> None:
        """Each specification example is answered as the specification says, 204 for none."""
        for request, expected in SPEC_EXAMPLES:
            server, _, _ = make_server()
            protocol, transport = connect_protocol(server)
            protocol.dataReceived(post(request))
            ((status, headers, body),) = responses(transport.value())
            if expected is None:
                self.assertEqual((status, body), (204, b""), request)
                self.assertNotIn("content-length", headers)
            else:
                self.assertEqual(status, 200, request)
                self.assertEqual(headers["content-type"], "application/json")
                self.assertEqual(without_data(json.loads(body)), expected, request)
            self.assertFalse(transport.disconnecting)

    def test_keep_alive(self) -> None:
        """Several requests on one HTTP/1.1 connection, in separate reads, are all answered."""
        for i in range(3):
            self.protocol.dataReceived(
                post(b'{"jsonrpc":"2.0","method":"Cal.Square","params":[%d],"id":%d}' % (i, i)))
        replies = responses(self.transport.value())
        self.assertEqual([json.loads(b)["result"]["Ans"] for _, _, b in replies], [0, 1, 4])
        self.assertFalse(self.transport.disconnecting)

    def test_pipelining_in_order(self) -> None:
        """Pipelined requests are answered in request order even when the first ends last."""
        self.protocol.dataReceived(
            post(b'{"jsonrpc":"2.0","method":"Odd.Later","params":["a"],"id":1}')
            + post(b'{"jsonrpc":"2.0","method":"Cal.Square","params":[3],"id":2}')
            + get("/debug/rpc"))
        self.assertEqual(self.transport.value(), b"")
        self.odd.waiting["a"].callback("first")
        replies = responses(self.transport.value())
        self.assertEqual([s for s, _, _ in replies], [200, 200, 200])
        self.assertEqual(json.loads(replies[0][2])["result"], "first")
        self.assertEqual(json.loads(replies[1][2])["id"], 2)
        self.assertIn(b"Services", replies[2][2])
        self.assertEqual(self.transport.writes, 1)

    def test_connection_close(self) -> None:
        """Connection: close, and HTTP/1.0 without keep-alive, close after the answer."""
        for request in [post(b'{"jsonrpc":"2.0","method":"Cal.Square","params":[1],"id":1}',
                             extra="Connection: close\r\n"),
                        post(b'{"jsonrpc":"2.0","method":"Cal.Square","params":[1],"id":1}',
                             version="HTTP/1.0")]:
            server, _, _ = make_server()
            protocol, transport = connect_protocol(server)
            protocol.dataReceived(request + get("/debug/rpc"))
            ((status, headers, body),) = responses(transport.value())
            self.assertEqual(status, 200)
            self.assertTrue(transport.disconnecting)
        self.assertEqual(headers.get("connection"), None)  # HTTP/1.0 says nothing

    def test_http10_keep_alive(self) -> None:
        """HTTP/1.0 with Connection: keep-alive stays open and says so."""
        self.protocol.dataReceived(post(b'{"jsonrpc":"2.0","method":"Cal.Square","params":[1],"id":1}',
                                        version="HTTP/1.0", extra="Connection: keep-alive\r\n"))
        ((status, headers, _),) = responses(self.transport.value())
        self.assertEqual(headers["connection"], "keep-alive")
        self.assertFalse(self.transport.disconnecting)

    def test_wrong_method_and_type(self) -> None:
        """GET /rpc is 405, a non-JSON content type 415, another path 404; all keep the connection."""
        self.protocol.dataReceived(get("/rpc") + post(b"{}", content_type="text/plain")
                                   + get("/nope") + post(b"{}", content_type="application/json; charset=utf-8",
                                                         target="/rpc?x=1"))
        replies = responses(self.transport.value())
        self.assertEqual([s for s, _, _ in replies], [405, 415, 404, 200])
        self.assertEqual(replies[0][1]["allow"], "POST")
        self.assertEqual(replies[2][2], b"404 page not found\n")
        self.assertEqual(json.loads(replies[3][2])["error"]["code"], -32600)
        self.assertFalse(self.transport.disconnecting)

    def test_strict_json(self) -> None:
        """NaN, Infinity and duplicate keys in a body are parse errors naming the problem."""
        for body, why in [(b'{"jsonrpc":"2.0","method":"Cal.Square","params":[NaN],"id":1}', "NaN"),
                          (b'{"jsonrpc":"2.0","method":"Cal.Square","params":[Infinity],"id":1}',
                           "Infinity"),
                          (b'{"jsonrpc":"2.0","method":"Cal.Square","params":[1],"id":1,"id":1}',
                           "duplicate object key 'id'"),
                          (b'{"jsonrpc":"2.0"} {}', "extra data")]:
            self.transport.clear()
            self.protocol.dataReceived(post(body))
            ((status, _, reply),) = responses(self.transport.value())
            error = json.loads(reply)["error"]
            self.assertEqual((status, error["code"]), (200, -32700))
            self.assertIn(why, error["data"])

    def test_expect_continue(self) -> None:
        """A head with Expect: 100-continue gets 100 Continue before its body."""
        whole = post(b'{"jsonrpc":"2.0","method":"Cal.Square","params":[2],"id":1}',
                     extra="Expect: 100-continue\r\n")
        head, _, body = whole.partition(b"\r\n\r\n")
        self.protocol.dataReceived(head + b"\r\n\r\n")
        self.assertEqual(self.transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.transport.clear()
        self.protocol.dataReceived(body)
        self.assertEqual(json.loads(responses(self.transport.value())[0][2])["result"]["Ans"], 4)

    def test_chunked_body(self) -> None:
        """A chunked body, sent in pieces after 100 Continue, is decoded and answered; the connection stays open."""
        head = (b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
        self.protocol.dataReceived(head)
        self.assertEqual(self.transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.transport.clear()
        for piece in [b"1a\r\n", b'{"jsonrpc":"2.0","method":', b'\r\n1', b"9;x=y\r\n",
                      b'"Cal.Square","params":[5]\r\n', b'8\r\n,"id":1}\r\n0\r\n', b"\r\n"]:
            self.protocol.dataReceived(piece)
        ((status, _, body),) = responses(self.transport.value())
        self.assertEqual((status, json.loads(body)["result"]["Ans"]), (200, 25))
        self.assertFalse(self.transport.disconnecting)

    def test_chunked_body_limit(self) -> None:
        """A chunk that takes the body over limits.max_frame_bytes is refused with 413 from its size line."""
        server, _, _ = make_server(limits=Limits(max_frame_bytes=100))
        protocol, transport = connect_protocol(server)
        with capturedLogs():
            protocol.dataReceived(b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n65\r\n")
        ((status, headers, body),) = responses(transport.value())
        self.assertEqual((status, headers["connection"]), (413, "close"))
        self.assertIn(b"exceeds the limit of 100 bytes", body)
        self.assertTrue(transport.disconnecting)

    def test_body_limit(self) -> None:
        """A body over limits.max_frame_bytes is refused with 413 from its head."""
        server, _, _ = make_server(limits=Limits(max_frame_bytes=100))
        protocol, transport = connect_protocol(server)
        with capturedLogs():
            protocol.dataReceived(post(b"x" * 101)[:120])
        ((status, headers, body),) = responses(transport.value())
        self.assertEqual((status, headers["connection"]), (413, "close"))
        self.assertIn(b"exceeds the limit of 100 bytes", body)
        self.assertTrue(transport.disconnecting)

    def test_calls_counted_and_sessions(self) -> None:
        """Calls over HTTP count for /debug/rpc; a connection keeps one session."""
        for _ in range(3):
            self.protocol.dataReceived(post(b'{"jsonrpc":"2.0","method":"Math.get_data","id":1}'))
        self.assertEqual(self.server.registry.call_counts["Math.get_data"], 3)
        self.assertEqual(self.protocol.inner.session.protocol, "http")


class StrictnessTests(SynchronousTestCase):
    """Requests the parser refuses: their status, then the connection closes."""

    CASES = [
        (b"POST /rpc HTTP/1.1\r\nHost: a\rX: y\r\nContent-Length: 0\r\n\r\n", 400, "bare CR"),
        (b"POST /rpc HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n", 400, "control character"),
        (b"POST /rpc HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
         400, "more than one Content-Length"),
        (b"POST /rpc HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431, "exceeds"),
        (b"POST /rpc HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
         b"2\r\n{}\r\n0\r\n\r\n", 400, "Content-Length"),
        (b"POST /rpc HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}0\r\n\r\n",
         400, "CRLF"),
        (b"POST /rpc HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "gzip"),
        (b"GET /debug/rpc HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0"),
        (b"GET /debug/rpc HTTP/1.1\r\n\r\n", 400, "Host"),
        (b"GET  /debug/rpc HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line"),
        (b"POST /rpc HTTP/1.1\r\nHost: a\r\n Folded: x\r\n\r\n", 400, "folding"),
        (b"POST /rpc HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"),
    ]

    def test_refusals(self) -> None:
        """Each malformed request gets its status with the reason, is logged, and closes."""
        for data, status, why in self.CASES:
            server, _, _ = make_server()
            protocol, transport = connect_protocol(server)
            with capturedLogs() as events:
                protocol.dataReceived(data)
            replies = responses(transport.value())
            self.assertEqual([s for s, _, _ in replies], [status], data[:60])
            self.assertIn(why.encode(), replies[0][2])
            self.assertEqual(replies[0][1]["connection"], "close")
            self.assertTrue(transport.disconnecting)
            self.assertTrue(any(e.get("status") == status for e in events))

    def test_good_requests_before_a_bad_one(self) -> None:
        """Pipelined requests before a bad one are answered first, in order."""
        server, _, _ = make_server()
        protocol, transport = connect_protocol(server)
        with capturedLogs():
            protocol.dataReceived(get("/debug/rpc") + b"GET /x HTTP/1.1\r\nHost: a\r\nX\x00: 1\r\n\r\n"
                                  + get("/debug/rpc"))
        self.assertEqual([s for s, _, _ in responses(transport.value())], [200, 400])
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(get("/debug/rpc"))
        self.assertEqual(len(responses(transport.value())), 2)


class _Recorder(Protocol):
    """Stands in for the gob protocol: records what it is given."""

    made: list["_Recorder"] = []

    def __init__(self, server: Any) -> None:
        self.received = b""
        self.lost = False
        _Recorder.made.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class GoConnectTests(SynchronousTestCase):
    """CONNECT /_goRPC_ (Go's rpc.DialHTTP) and Go's 405."""

    def setUp(self) -> None:
        _Recorder.made = []
        self.server, _, self.odd = make_server()

    def recording(self) -> None:
        protocols = dict(server_module.SERVER_PROTOCOLS, gob="tests.test_httpwire:_Recorder")
        self.patch(server_module, "SERVER_PROTOCOLS", protocols)

    def test_connected_bytes_and_leftover(self) -> None:
        """The answer is Go's exact bytes; the bytes after the head go to gob, then all later ones."""
        self.recording()
        protocol, transport = connect_protocol(self.server)
        protocol.dataReceived(b"CONNECT /_goRPC_ HTTP/1.0\n\n\x0b\xff\x81gob bytes")
        self.assertEqual(transport.value(), b"HTTP/1.0 200 Connected to Go RPC\n\n")
        (tunnel,) = _Recorder.made
        self.assertIs(tunnel.transport, transport)
        self.assertEqual(tunnel.received, b"\x0b\xff\x81gob bytes")
        protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(tunnel.received, b"\x0b\xff\x81gob bytesGET / HTTP/1.1\r\n\r\n")
        protocol.connectionLost(Exception("bye"))  # type: ignore[arg-type]
        self.assertTrue(tunnel.lost)

    def test_connect_after_pending_answers(self) -> None:
        """A CONNECT pipelined behind a running call is answered after it; bytes in between wait."""
        self.recording()
        protocol, transport = connect_protocol(self.server)
        protocol.dataReceived(post(b'{"jsonrpc":"2.0","method":"Odd.Later","params":["a"],"id":1}')
                              + b"CONNECT /_goRPC_ HTTP/1.0\n\nabc")
        protocol.dataReceived(b"def")
        self.assertEqual(_Recorder.made, [])
        self.odd.waiting["a"].callback(1)
        self.assertTrue(transport.value().endswith(b"HTTP/1.0 200 Connected to Go RPC\n\n"))
        self.assertEqual(_Recorder.made[0].received, b"abcdef")

    def test_real_gob_over_connect(self) -> None:
        """rpcd's gob-http client calls through CONNECT into the gob protocol."""
        conn = MemoryConnection([Cal], codec="gob-http")
        conn.flush()
        d = conn.client.call("Cal.Square", 12)
        conn.flush()
        self.assertEqual(self.successResultOf(d), {"Num": 12, "Ans": 144})
        self.assertIsInstance(conn.server_protocol.inner, HTTPServerProtocol)
        self.assertEqual(conn.server_protocol.inner.tunnel.session.protocol, "gob")

    def test_must_connect(self) -> None:
        """Any other method on /_goRPC_ gets Go's 405 must CONNECT, byte for byte."""
        protocol, transport = connect_protocol(self.server)
        protocol.dataReceived(b"GET /_goRPC_ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        self.assertEqual(transport.value(),
                         b"HTTP/1.1 405 Method Not Allowed\r\n"
                         b"Content-Type: text/plain; charset=utf-8\r\n"
                         b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
                         b"Content-Length: 17\r\n\r\n405 must CONNECT\n")
        self.assertFalse(transport.disconnecting)

    def test_connect_elsewhere(self) -> None:
        """CONNECT to another path is a 404 and the connection closes."""
        protocol, transport = connect_protocol(self.server)
        protocol.dataReceived(b"CONNECT example.com:443 HTTP/1.1\r\nHost: localhost\r\n\r\nxyz")
        ((status, _, _),) = responses(transport.value())
        self.assertEqual(status, 404)
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"more")

    def test_gob_unavailable(self) -> None:
        """Without a gob protocol, CONNECT gets 501 and the connection closes."""
        protocols = {k: v for k, v in server_module.SERVER_PROTOCOLS.items() if k != "gob"}
        self.patch(server_module, "SERVER_PROTOCOLS", protocols)
        protocol, transport = connect_protocol(self.server)
        protocol.dataReceived(b"CONNECT /_goRPC_ HTTP/1.0\n\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.0 501 Not Implemented\r\n"))
        self.assertTrue(transport.disconnecting)


class DebugPageTests(SynchronousTestCase):
    """GET /debug/rpc."""

    def test_page(self) -> None:
        """The page lists every service and method with signature, doc and call count, escaped."""
        server, _, _ = make_server()
        protocol, transport = connect_protocol(server)
        protocol.dataReceived(post(b'[{"jsonrpc":"2.0","method":"Cal.Square","params":[1],"id":1},'
                                   b'{"jsonrpc":"2.0","method":"Cal.Square","params":[2],"id":2}]'))
        transport.clear()
        protocol.dataReceived(get("/debug/rpc"))
        ((status, headers, body),) = responses(transport.value())
        self.assertEqual((status, headers["content-type"]), (200, "text/html; charset=utf-8"))
        page = body.decode("utf-8")
        for service in ("Arith", "Cal", "Math", "Odd", "ServiceA"):
            self.assertIn(f"Service {service}\n", page)
        self.assertRegex(page, r"<code>Cal\.Square\(num: int\) -&gt; Result</code></td>"
                               r"<td align=center>2</td><td align=left>Return num and num squared\.</td>")
        self.assertRegex(page, r"<code>Math\.subtract\(minuend: int, subtrahend: int\) -&gt; int</code>"
                               r"</td><td align=center>0</td>")
        self.assertIn("Count &lt;items&gt; &amp; &quot;things&quot; for "
                      "&lt;script&gt;alert(1)&lt;/script&gt;.", page)
        self.assertNotIn("<script>alert", page)  # the page's own script is its refresh
        self.assertNotIn("<items>", page)

    def test_head(self) -> None:
        """HEAD gets the page's headers and no body; POST gets 405."""
        server, _, _ = make_server()
        protocol, transport = connect_protocol(server)
        protocol.dataReceived(get("/debug/rpc", method="HEAD"))
        head = transport.value()
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(head.endswith(b"\r\n\r\n"))
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        self.assertEqual(length, len(debug_page(server.registry).encode()))
        transport.clear()
        protocol.dataReceived(post(b"{}", target="/debug/rpc"))
        self.assertEqual(responses(transport.value())[0][0], 405)


class HandshakeTimeoutTests(SynchronousTestCase):
    """The handshake timeout covers each request head (slow-loris)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.server, _, _ = make_server(clock=self.clock,
                                        limits=Limits(handshake_timeout=10, idle_timeout=0))
        self.protocol, self.transport = connect_protocol(self.server)

    def test_slow_first_head(self) -> None:
        """A first request dribbled for longer than the timeout is aborted."""
        request = get("/debug/rpc")
        with capturedLogs() as events:
            for i in range(5):
                self.protocol.dataReceived(request[i:i + 1])
                self.clock.advance(2.5)
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(any("the http preamble did not finish" in e.get("why", "") for e in events))

    def test_complete_head_stops_it(self) -> None:
        """Once a request is complete, a keep-alive connection may stay quiet past the timeout."""
        self.protocol.dataReceived(get("/debug/rpc"))
        self.clock.advance(60)
        self.assertFalse(self.transport.disconnecting)

    def test_next_head_timed_again(self) -> None:
        """The next request on a kept-alive connection is timed from its first byte."""
        self.protocol.dataReceived(get("/debug/rpc"))
        self.clock.advance(60)
        with capturedLogs():
            self.protocol.dataReceived(b"GET /deb")
            self.clock.advance(9)
            self.protocol.dataReceived(b"ug/r")
            self.assertFalse(self.transport.disconnecting)
            self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_protocol_class(self) -> None:
        """The http protocol says it has a preamble, so the sniffer keeps timing it."""
        self.assertTrue(HTTPServerProtocol.has_preamble)
        self.protocol.dataReceived(b"GET ")
        self.assertIsInstance(self.protocol.inner, HTTPServerProtocol)
