"""
Tests for L{rpcd.wire.httpparse}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from rpcd.wire.httpparse import (
    CONTINUE_RESPONSE,
    GO_CONNECTED_RESPONSE,
    Headers,
    HTTPParseError,
    HTTPRequest,
    HTTPRequestParser,
    error_response,
    format_response,
    go_must_connect_response,
    http_date,
    max_chunks,
)

# What Go 1.19's rpc.DialHTTP writes (net/rpc/client.go, DialHTTPPath).
GO_CONNECT = b"CONNECT /_goRPC_ HTTP/1.0\n\n"
# The start of a gob stream: what follows the CONNECT in the same packet.
GOB_BYTES = b"\x1a\xff\x81\x03\x01\x01\x07Request\x01\xff\x82\x00\x01\x02\x01\r"


def parse(*chunks: bytes, **kwargs: int) -> list[HTTPRequest]:
    parser = HTTPRequestParser(**kwargs)
    out: list[HTTPRequest] = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser.requests())
    return out


def refusal(data: bytes, **kwargs: int) -> HTTPParseError:
    parser = HTTPRequestParser(**kwargs)
    parser.feed(data)
    try:
        list(parser.requests())
    except HTTPParseError as e:
        return e
    raise AssertionError(f"{data!r} was accepted")


class ParsingTests(SynchronousTestCase):
    """
    Requests that parse.
    """

    def test_go_connect_with_gob_bytes(self) -> None:
        """
        Go's CONNECT, with gob bytes in the same feed, parses; the gob bytes are the leftover.
        """
        [request] = parse(GO_CONNECT + GOB_BYTES)
        self.assertEqual(
            (request.method, request.target, request.version, len(request.headers)),
            ("CONNECT", "/_goRPC_", "HTTP/1.0", 0),
        )
        self.assertEqual(request.leftover, GOB_BYTES)
        self.assertFalse(request.keep_alive)

    def test_go_connect_byte_by_byte(self) -> None:
        """
        Go's CONNECT fed one byte at a time completes at its last byte, with no leftover.
        """
        parser = HTTPRequestParser()
        for i, byte in enumerate(GO_CONNECT):
            parser.feed(bytes([byte]))
            requests = list(parser.requests())
            self.assertEqual(len(requests), 1 if i == len(GO_CONNECT) - 1 else 0)
        self.assertEqual(requests[0].leftover, b"")
        self.assertTrue(parser.finished)

    def test_feed_after_connect(self) -> None:
        """
        Feeding the parser after a CONNECT is a programming error.
        """
        parser = HTTPRequestParser()
        parser.feed(GO_CONNECT)
        self.assertRaises(RuntimeError, parser.feed, GOB_BYTES)

    def test_post_crlf(self) -> None:
        """
        A POST with CRLF line endings gives its headers and Content-Length body.
        """
        [request] = parse(
            b"POST /rpc HTTP/1.1\r\nHost: example\r\nContent-Type: application/json\r\n"
            b"Content-Length: 7\r\n\r\n[1,2,3]"
        )
        self.assertEqual((request.method, request.target, request.body), ("POST", "/rpc", b"[1,2,3]"))
        self.assertEqual(request.headers.get("content-type"), "application/json")
        self.assertEqual(request.headers.get("CONTENT-TYPE"), "application/json")
        self.assertTrue(request.keep_alive)

    def test_lf_only(self) -> None:
        """
        Bare LF line endings are accepted.
        """
        [request] = parse(b"POST /rpc HTTP/1.0\nContent-Length: 2\n\n{}")
        self.assertEqual((request.version, request.body), ("HTTP/1.0", b"{}"))

    def test_every_split_point(self) -> None:
        """
        A request cut into two feeds at any byte parses the same.
        """
        data = b"POST /rpc HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        for cut in range(len(data) + 1):
            [request] = parse(data[:cut], data[cut:])
            self.assertEqual(request.body, b"hello", cut)

    def test_headers_order_and_case(self) -> None:
        """
        Headers keep their order and names as sent; lookups ignore case; values are trimmed.
        """
        [request] = parse(
            b"GET /debug/rpc HTTP/1.1\r\nHost: h\r\nX-A:  1 \r\nx-a:\t2\r\nAccept: */*\r\n\r\n"
        )
        self.assertEqual(
            list(request.headers), [("Host", "h"), ("X-A", "1"), ("x-a", "2"), ("Accept", "*/*")]
        )
        self.assertEqual(request.headers.get_all("X-a"), ["1", "2"])
        self.assertIn("ACCEPT", request.headers)
        self.assertNotIn("Cookie", request.headers)
        self.assertIsNone(request.headers.get("cookie"))

    def test_obs_text_in_value(self) -> None:
        """
        Bytes above 0x7f in a header value are kept, decoded as ISO-8859-1.
        """
        [request] = parse(b"GET / HTTP/1.0\r\nX-Name: caf\xe9\r\n\r\n")
        self.assertEqual(request.headers.get("x-name"), "caf\u00e9")

    def test_no_content_length(self) -> None:
        """
        A request without Content-Length has an empty body.
        """
        [request] = parse(b"POST /rpc HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(request.body, b"")

    def test_zero_content_length(self) -> None:
        """
        Content-Length: 0 gives an empty body at once.
        """
        [request] = parse(b"POST /rpc HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(request.body, b"")

    def test_body_waits(self) -> None:
        """
        A request is not delivered until its whole body has arrived.
        """
        parser = HTTPRequestParser()
        parser.feed(b"POST /rpc HTTP/1.0\r\nContent-Length: 4\r\n\r\nab")
        self.assertEqual(list(parser.requests()), [])
        parser.feed(b"cd")
        [request] = parser.requests()
        self.assertEqual(request.body, b"abcd")

    def test_pipelined(self) -> None:
        """
        Pipelined requests on one connection come out in order, each with its body.
        """
        data = (
            b"POST /rpc HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nonePOST /rpc HTTP/1.1\r\n"
            b"Host: h\r\nContent-Length: 3\r\n\r\ntwoGET /debug/rpc HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        requests = parse(data)
        self.assertEqual(
            [(r.method, r.body) for r in requests], [("POST", b"one"), ("POST", b"two"), ("GET", b"")]
        )
        bytewise = parse(*[bytes([b]) for b in data])
        self.assertEqual(bytewise, requests)

    def test_pipelined_any_chunk_size(self) -> None:
        """
        Pipelined requests cut into chunks of any size parse the same, whatever is left over between them.
        """
        data = (
            b"POST /rpc HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\none"
            b"GET /debug/rpc HTTP/1.1\r\nHost: h\r\nX-Long: " + b"y" * 40 + b"\r\n\r\n"
            b"POST /rpc HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\ntwo"
        )
        expected = parse(data)
        self.assertEqual(len(expected), 3)
        for size in range(1, len(data) + 1):
            chunks = [data[i:i + size] for i in range(0, len(data), size)]
            self.assertEqual(parse(*chunks), expected, size)

    def test_leading_empty_lines(self) -> None:
        """
        Empty lines before a request line are skipped.
        """
        [request] = parse(b"\r\n\n\r\nGET / HTTP/1.0\r\n\r\n")
        self.assertEqual(request.target, "/")

    def test_keep_alive(self) -> None:
        """
        HTTP/1.1 keeps alive unless Connection: close; HTTP/1.0 only with keep-alive.
        """
        for head, keep_alive in [
            (b"GET / HTTP/1.1\r\nHost: h\r\n", True),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n", False),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade, close\r\n", False),
            (b"GET / HTTP/1.0\r\n", False),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n", True),
        ]:
            [request] = parse(head + b"\r\n")
            self.assertEqual(request.keep_alive, keep_alive, head)

    def test_bytes_after_close_ignored(self) -> None:
        """
        After a request that closes the connection, later bytes are discarded, even garbage.
        """
        parser = HTTPRequestParser()
        parser.feed(b"GET / HTTP/1.0\r\n\r\nGARBAGE\x00\r\n\r\n")
        self.assertEqual(len(list(parser.requests())), 1)
        self.assertTrue(parser.finished)
        parser.feed(b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(list(parser.requests()), [])

    def test_expect_continue(self) -> None:
        """
        take_continue is true once when an HTTP/1.1 head asks for 100-continue and the body is pending.
        """
        parser = HTTPRequestParser()
        parser.feed(b"POST /rpc HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        self.assertTrue(parser.take_continue())
        self.assertFalse(parser.take_continue())
        parser.feed(b"{}")
        self.assertEqual([r.body for r in parser.requests()], [b"{}"])
        parser = HTTPRequestParser()
        parser.feed(b"POST /rpc HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}")
        self.assertFalse(parser.take_continue())


class RefusalTests(SynchronousTestCase):
    """
    Requests refused, with the status to answer.
    """

    def assertRefused(self, data: bytes, status: int, detail: str, **kwargs: int) -> None:
        error = refusal(data, **kwargs)
        self.assertEqual(error.status, status, data)
        self.assertIn(detail, error.detail, data)

    def test_bare_cr(self) -> None:
        """
        A CR not followed by LF is refused, wherever it is in the head.
        """
        self.assertRefused(b"GET / HTTP/1.0\r\nX: a\rb\r\n\r\n", 400, "bare CR")
        self.assertRefused(b"GET / HTTP/1.0\rX: y\r\n\r\n", 400, "bare CR")
        self.assertRefused(b"GET / HTTP/1.0\r\n\r\r\n", 400, "bare CR")

    def test_control_characters(self) -> None:
        """
        NUL and other control characters in the head are refused.
        """
        self.assertRefused(b"GET / HTTP/1.0\r\nX: a\x00b\r\n\r\n", 400, "control character")
        self.assertRefused(b"GET / HTTP/1.0\r\nX: a\x1bb\r\n\r\n", 400, "control character")
        self.assertRefused(b"GET /\x7f HTTP/1.0\r\n\r\n", 400, "control character")

    def test_malformed_request_lines(self) -> None:
        """
        Request lines that are not METHOD SP TARGET SP HTTP/x.y are refused.
        """
        for line in [
            b"GET /",
            b"GET  / HTTP/1.0",
            b"GET / HTTP/1.0 ",
            b" GET / HTTP/1.0",
            b"GET\t/ HTTP/1.0",
            b"G(T / HTTP/1.0",
            b"GET / http/1.0",
            b"GET / HTTP/1",
            b"GET /caf\xe9 HTTP/1.0",
        ]:
            self.assertRefused(line + b"\r\n\r\n", 400, "malformed request line")

    def test_version(self) -> None:
        """
        Well-formed versions other than 1.0 and 1.1 get 505.
        """
        self.assertRefused(b"GET / HTTP/2.0\r\n\r\n", 505, "HTTP/2.0")
        self.assertRefused(b"GET / HTTP/0.9\r\n\r\n", 505, "HTTP/0.9")

    def test_obs_fold(self) -> None:
        """
        A header continued on the next line (obs-fold) is refused.
        """
        self.assertRefused(b"GET / HTTP/1.0\r\nX: a\r\n b\r\n\r\n", 400, "line folding")
        self.assertRefused(b"GET / HTTP/1.0\r\nX: a\r\n\tb\r\n\r\n", 400, "line folding")

    def test_malformed_header(self) -> None:
        """
        Headers without a colon, with space before it, or with a bad name are refused.
        """
        for line in [b"X", b"X : y", b"X\t: y", b": y", b"X(y): z"]:
            self.assertRefused(b"GET / HTTP/1.0\r\n" + line + b"\r\n\r\n", 400, "malformed header")

    def test_host_required(self) -> None:
        """
        HTTP/1.1 requests need exactly one Host.
        """
        self.assertRefused(b"GET / HTTP/1.1\r\n\r\n", 400, "Host")
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "Host")

    def test_single_fields(self) -> None:
        """
        Two Host, Content-Type or Origin headers are refused, in HTTP/1.0 too.
        """
        for name in ("Host", "Content-Type", "Origin"):
            for version in (b"HTTP/1.0", b"HTTP/1.1"):
                host = b"" if name == "Host" else b"Host: a\r\n"
                data = (b"POST /rpc " + version + b"\r\n" + host
                        + (name.encode() + b": x\r\n") * 2 + b"\r\n")
                self.assertRefused(data, 400, f"{name} header")

    def test_transfer_encoding(self) -> None:
        """
        Transfer codings other than chunked alone get 501; chunked twice gets 400.
        """
        for codings in [b"gzip", b"gzip, chunked", b"chunked, gzip", b"identity", b""]:
            self.assertRefused(
                b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + codings + b"\r\n\r\n",
                501,
                "only chunked",
            )
        self.assertRefused(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
            "more than once",
        )

    def test_transfer_encoding_with_content_length(self) -> None:
        """
        Transfer-Encoding with Content-Length is refused, whatever the coding (request smuggling).
        """
        for codings in [b"chunked", b"gzip"]:
            self.assertRefused(
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: "
                + codings + b"\r\n\r\n0\r\n\r\n",
                400,
                "Content-Length",
            )

    def test_transfer_encoding_http_1_0(self) -> None:
        """
        Transfer-Encoding in an HTTP/1.0 request is refused.
        """
        self.assertRefused(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "HTTP/1.0"
        )

    def test_content_length(self) -> None:
        """
        Content-Length must appear once, be all digits, and fit the body limit.
        """
        base = b"POST / HTTP/1.0\r\n"
        for value in [b"-1", b"+1", b"1.0", b"0x10", b"", b"1 2", b"5, 5", b"\xd9\xa1"]:
            self.assertRefused(base + b"Content-Length: " + value + b"\r\n\r\n", 400, "Content-Length")
        self.assertRefused(
            base + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\n", 400, "more than one"
        )
        self.assertRefused(base + b"Content-Length: 11\r\n\r\n", 413, "limit of 10", max_body_size=10)
        self.assertRefused(base + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", 413, "exceeds")
        [request] = parse(base + b"Content-Length: 10\r\n\r\n" + b"x" * 10, max_body_size=10)
        self.assertEqual(len(request.body), 10)

    def test_body_limit_before_body(self) -> None:
        """
        An oversized Content-Length is refused from the head alone, before any body byte.
        """
        parser = HTTPRequestParser(max_body_size=100)
        parser.feed(b"POST / HTTP/1.0\r\nContent-Length: 101\r\n\r\n")
        self.assertRaises(HTTPParseError, list, parser.requests())

    def test_header_limit(self) -> None:
        """
        A head over max_header_size is refused as bytes arrive, without waiting for its end.
        """
        parser = HTTPRequestParser(max_header_size=100)
        parser.feed(b"GET / HTTP/1.0\r\nX: " + b"a" * 60)
        self.assertEqual(list(parser.requests()), [])
        parser.feed(b"a" * 60)
        error = self.assertRaises(HTTPParseError, list, parser.requests())
        self.assertEqual(error.status, 431)
        self.assertRefused(b"GET / HTTP/1.0\r\nX: " + b"a" * 90 + b"\r\n\r\n", 431, "100", max_header_size=100)
        [request] = parse(b"GET / HTTP/1.0\r\nX: " + b"a" * 60 + b"\r\n\r\n", max_header_size=100)
        self.assertEqual(len(request.headers.get("x") or ""), 60)

    def test_error_after_good_request(self) -> None:
        """
        A bad pipelined request is reported after the good one before it, and keeps being reported.
        """
        parser = HTTPRequestParser()
        parser.feed(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nBAD\r\n\r\n")
        it = parser.requests()
        self.assertEqual(next(it).target, "/a")
        self.assertRaises(HTTPParseError, next, it)
        self.assertRaises(HTTPParseError, list, parser.requests())
        self.assertTrue(parser.finished)


CHUNKED_HEAD = b"POST /rpc HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
# A chunked body whose decoded bytes are b'{"jsonrpc":"2.0"}'.
CHUNKED_BODY = b"5\r\n{\"jso\r\nA\r\nnrpc\":\"2.0\r\n2\r\n\"}\r\n0\r\n\r\n"


class ChunkedTests(SynchronousTestCase):
    """
    Transfer-Encoding: chunked request bodies.
    """

    def test_one_feed(self) -> None:
        """
        A chunked body in one feed is decoded; the request has no trailers.
        """
        [request] = parse(CHUNKED_HEAD + CHUNKED_BODY)
        self.assertEqual(request.body, b'{"jsonrpc":"2.0"}')
        self.assertEqual(len(request.trailers), 0)
        self.assertTrue(request.keep_alive)

    def test_byte_by_byte(self) -> None:
        """
        A chunked request fed one byte at a time completes at its last byte, decoded the same.
        """
        data = CHUNKED_HEAD + CHUNKED_BODY
        parser = HTTPRequestParser()
        for i, byte in enumerate(data):
            parser.feed(bytes([byte]))
            requests = list(parser.requests())
            self.assertEqual(len(requests), 1 if i == len(data) - 1 else 0, i)
        self.assertEqual(requests[0].body, b'{"jsonrpc":"2.0"}')

    def test_every_split_point(self) -> None:
        """
        A chunked request cut into two feeds at any byte parses the same.
        """
        data = CHUNKED_HEAD + b"3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n"
        for cut in range(len(data) + 1):
            [request] = parse(data[:cut], data[cut:])
            self.assertEqual((request.body, request.trailers.get("x-sum")), (b"abcde", "5"), cut)

    def test_empty_body(self) -> None:
        """
        A chunked body of only the last chunk is empty.
        """
        [request] = parse(CHUNKED_HEAD + b"0\r\n\r\n")
        self.assertEqual(request.body, b"")

    def test_extensions_ignored(self) -> None:
        """
        Chunk extensions, with token or quoted values and whitespace around them, are ignored.
        """
        [request] = parse(
            CHUNKED_HEAD + b"3;name=value\r\nabc\r\n"
            b'2 ; q="a \\"quoted\\" \xe9;x" ;flag\r\nde\r\n'
            b"0;last\t=\ttrue\r\n\r\n"
        )
        self.assertEqual(request.body, b"abcde")

    def test_trailers(self) -> None:
        """
        Trailer fields are kept apart from the headers, in order, with their names as sent.
        """
        [request] = parse(
            CHUNKED_HEAD + b"2\r\n{}\r\n0\r\nX-Checksum: abc \r\nx-more:\t1\r\n\r\n"
        )
        self.assertEqual(list(request.trailers), [("X-Checksum", "abc"), ("x-more", "1")])
        self.assertNotIn("x-checksum", request.headers)
        self.assertEqual(request.body, b"{}")

    def test_bare_lf(self) -> None:
        """
        Chunk-size lines, chunk data and trailers may end with a bare LF.
        """
        [request] = parse(
            b"POST /rpc HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n"
            b"3\nabc\n2;x=y\nde\r\n0\nX: 1\n\n"
        )
        self.assertEqual((request.body, request.trailers.get("x")), (b"abcde", "1"))

    def test_pipelined_after_chunked(self) -> None:
        """
        Requests pipelined after a chunked one parse, whole or byte by byte.
        """
        data = (
            CHUNKED_HEAD + b"3\r\none\r\n0\r\n\r\n"
            b"POST /rpc HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\ntwo"
            + CHUNKED_HEAD + b"5\r\nthree\r\n0\r\nX: y\r\n\r\n"
            b"GET /debug/rpc HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        requests = parse(data)
        self.assertEqual(
            [(r.method, r.body) for r in requests],
            [("POST", b"one"), ("POST", b"two"), ("POST", b"three"), ("GET", b"")],
        )
        self.assertEqual(parse(*[bytes([b]) for b in data]), requests)

    def test_connection_close(self) -> None:
        """
        Bytes after a chunked request with Connection: close are discarded.
        """
        parser = HTTPRequestParser()
        parser.feed(
            b"POST /rpc HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\nGARBAGE\x00\r\n\r\n"
        )
        self.assertEqual([r.body for r in parser.requests()], [b"x"])
        self.assertTrue(parser.finished)

    def test_expect_continue(self) -> None:
        """
        take_continue is true once for a chunked HTTP/1.1 request that asks for 100-continue.
        """
        head = (
            b"POST /rpc HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        parser = HTTPRequestParser()
        parser.feed(head)
        self.assertTrue(parser.take_continue())
        self.assertFalse(parser.take_continue())
        parser.feed(b"2\r\n{}\r\n0\r\n\r\n")
        self.assertEqual([r.body for r in parser.requests()], [b"{}"])
        parser = HTTPRequestParser()
        parser.feed(head + b"2\r\n{}\r\n0\r\n\r\n")
        self.assertFalse(parser.take_continue())

    def test_largest_chunk_size(self) -> None:
        """
        A chunk-size of 16 hex digits is accepted, leading zeros included.
        """
        [request] = parse(CHUNKED_HEAD + b"0" * 15 + b"3\r\nabc\r\n0\r\n\r\n")
        self.assertEqual(request.body, b"abc")


class ChunkedRefusalTests(SynchronousTestCase):
    """
    Chunked bodies refused, with the status to answer.
    """

    def assertRefused(self, body: bytes, status: int, detail: str, **kwargs: int) -> None:
        error = refusal(CHUNKED_HEAD + body, **kwargs)
        self.assertEqual(error.status, status, body)
        self.assertIn(detail, error.detail, body)

    def test_chunk_size_not_hex(self) -> None:
        """
        A chunk-size that is not hex digits, or has space, a sign or a prefix, is refused.
        """
        for line in [b"g", b"", b" 5", b"5 ", b"-5", b"+5", b"0x5", b"5.0", b"\xd9\xa1"]:
            self.assertRefused(line + b"\r\nhello\r\n0\r\n\r\n", 400, "chunk-size line")

    def test_too_many_chunks(self) -> None:
        """
        A body of more chunks than L{max_chunks} allows for the body limit
        is refused at the first chunk too many, however small the chunks;
        exactly that many is accepted.
        """
        limit = max_chunks(4096)
        self.assertEqual(limit, 1024 + 16)
        self.assertRefused(b"1\r\nx\r\n" * (limit + 1), 400, f"more than {limit} chunks",
                           max_body_size=4096)
        parser = HTTPRequestParser(max_body_size=4096)
        parser.feed(CHUNKED_HEAD + b"1\r\nx\r\n" * (limit - 1) + b"0\r\n\r\n")
        [request] = list(parser.requests())
        self.assertEqual(request.body, b"x" * (limit - 1))

    def test_chunk_size_too_many_digits(self) -> None:
        """
        A chunk-size of more than 16 hex digits is refused, even with leading zeros.
        """
        self.assertRefused(b"0" * 16 + b"1\r\nx\r\n0\r\n\r\n", 400, "16 hex digits")
        self.assertRefused(b"F" * 17 + b"\r\n", 400, "16 hex digits")

    def test_malformed_extensions(self) -> None:
        """
        Chunk extensions that do not follow RFC 9112's grammar are refused.
        """
        for extension in [b";", b";=1", b";a=", b'; a="open', b";a=b c", b";a b", b";a=\"\x01\"",
                          b";a=\"\x7f\"", b"x"]:
            self.assertRefused(b"1" + extension + b"\r\nx\r\n0\r\n\r\n", 400, "chunk-size line")

    def test_bare_cr_and_control_characters(self) -> None:
        """
        A bare CR or a control character in a chunk-size line is refused.
        """
        self.assertRefused(b"1\r;a=b\r\nx\r\n0\r\n\r\n", 400, "bare CR")
        self.assertRefused(b"1;a=\x00\r\nx\r\n0\r\n\r\n", 400, "control character")

    def test_chunk_size_line_limit(self) -> None:
        """
        A chunk-size line longer than max_header_size is refused as it arrives, before its end.
        """
        parser = HTTPRequestParser(max_header_size=100)
        parser.feed(CHUNKED_HEAD + b"1;a=" + b"b" * 90)
        self.assertEqual(list(parser.requests()), [])
        parser.feed(b"b" * 10)
        error = self.assertRaises(HTTPParseError, list, parser.requests())
        self.assertEqual((error.status, error.detail), (400, "a chunk-size line exceeds 100 bytes"))
        [request] = parse(CHUNKED_HEAD + b"1;a=" + b"b" * 94 + b"\r\nx\r\n0\r\n\r\n",
                          max_header_size=100)
        self.assertEqual(request.body, b"x")

    def test_body_limit(self) -> None:
        """
        Decoded bytes above max_body_size get 413, naming the limit; the limit itself is accepted.
        """
        self.assertRefused(b"B\r\n", 413, "limit of 10 bytes", max_body_size=10)
        self.assertRefused(b"6\r\nabcdef\r\n5\r\n", 413, "limit of 10 bytes", max_body_size=10)
        self.assertRefused(b"F" * 16 + b"\r\n", 413, "limit of 10 bytes", max_body_size=10)
        [request] = parse(CHUNKED_HEAD + b"6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n",
                          max_body_size=10)
        self.assertEqual(request.body, b"abcdefghij")

    def test_body_limit_before_chunk_data(self) -> None:
        """
        An oversized chunk is refused from its chunk-size line alone, before any of its data.
        """
        parser = HTTPRequestParser(max_body_size=100)
        parser.feed(CHUNKED_HEAD + b"40\r\n" + b"x" * 64 + b"\r\n")
        self.assertEqual(list(parser.requests()), [])
        parser.feed(b"25\r\n")
        error = self.assertRaises(HTTPParseError, list, parser.requests())
        self.assertEqual(error.status, 413)
        self.assertIn("exceeds the limit of 100 bytes", error.detail)

    def test_missing_crlf_after_data(self) -> None:
        """
        Chunk data not followed by CRLF or LF is refused.
        """
        for after in [b"X\r\n0\r\n\r\n", b"\rX0\r\n\r\n", b"\r\r\n0\r\n\r\n", b"0\r\n\r\n"]:
            self.assertRefused(b"5\r\nhello" + after, 400, "not followed by CRLF")

    def test_missing_crlf_found_at_arrival(self) -> None:
        """
        A CR after chunk data waits for the next byte, which must be LF.
        """
        parser = HTTPRequestParser()
        parser.feed(CHUNKED_HEAD + b"5\r\nhello\r")
        self.assertEqual(list(parser.requests()), [])
        parser.feed(b"X")
        error = self.assertRaises(HTTPParseError, list, parser.requests())
        self.assertEqual(error.status, 400)

    def test_trailer_section_limit(self) -> None:
        """
        A trailer section longer than max_header_size gets 431 as it arrives; one within it parses.
        """
        parser = HTTPRequestParser(max_header_size=100)
        parser.feed(CHUNKED_HEAD + b"0\r\nX-A: " + b"a" * 50 + b"\r\nX-B: " + b"b" * 30)
        self.assertEqual(list(parser.requests()), [])
        parser.feed(b"b" * 10)
        error = self.assertRaises(HTTPParseError, list, parser.requests())
        self.assertEqual((error.status, error.detail), (431, "the trailer section exceeds 100 bytes"))
        trailers = b"X-A: " + b"a" * 50 + b"\r\nX-B: " + b"b" * 34 + b"\r\n\r\n"
        self.assertEqual(len(trailers), 100)
        [request] = parse(CHUNKED_HEAD + b"0\r\n" + trailers, max_header_size=100)
        self.assertEqual(len(request.trailers), 2)
        self.assertRefused(b"0\r\n" + trailers[:-2] + b"X: 1\r\n\r\n", 431, "trailer section",
                           max_header_size=100)

    def test_malformed_trailers(self) -> None:
        """
        Malformed, folded or control-character trailer lines are refused.
        """
        self.assertRefused(b"0\r\nX\r\n\r\n", 400, "malformed trailer line")
        self.assertRefused(b"0\r\nX : 1\r\n\r\n", 400, "malformed trailer line")
        self.assertRefused(b"0\r\nX: 1\r\n folded\r\n\r\n", 400, "line folding")
        self.assertRefused(b"0\r\nX: \x00\r\n\r\n", 400, "control character")
        self.assertRefused(b"0\r\nX: a\rb\r\n\r\n", 400, "bare CR")

    def test_after_good_request(self) -> None:
        """
        A bad chunked request is reported after the good chunked one before it.
        """
        parser = HTTPRequestParser()
        parser.feed(CHUNKED_HEAD + b"1\r\na\r\n0\r\n\r\n" + CHUNKED_HEAD + b"zz\r\n")
        it = parser.requests()
        self.assertEqual(next(it).body, b"a")
        self.assertRaises(HTTPParseError, next, it)
        self.assertTrue(parser.finished)


class ResponseTests(SynchronousTestCase):
    """
    Formatting responses.
    """

    def test_format(self) -> None:
        """
        A response gets its status line, headers in order, Content-Length, CRLFs and body.
        """
        self.assertEqual(
            format_response(200, "OK", [("Content-Type", "application/json")], b"{}"),
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )
        self.assertEqual(format_response(204, version="HTTP/1.0"), b"HTTP/1.0 204 No Content\r\n\r\n")
        self.assertEqual(
            format_response(200, "OK", [("content-length", "3")], b"abc"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc",
        )

    def test_response_splitting(self) -> None:
        """
        CR, LF or control characters in a header or the reason are refused.
        """
        self.assertRaises(ValueError, format_response, 200, "OK", [("X", "a\r\nSet-Cookie: x")])
        self.assertRaises(ValueError, format_response, 200, "OK\r\n", [])
        self.assertRaises(ValueError, format_response, 200, "OK", [("X\n", "a")])
        self.assertRaises(ValueError, format_response, 200, "OK", [("X", "\x00")])

    def test_error_response(self) -> None:
        """
        A parse error becomes a plain-text response with its status and Connection: close.
        """
        response = error_response(refusal(b"GET / HTTP/2.0\r\n\r\n"))
        self.assertTrue(response.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n"))
        self.assertIn(b"\r\nConnection: close\r\n", response)
        self.assertTrue(response.endswith(b"\r\n\r\nHTTP version HTTP/2.0 is not supported\n"))

    def test_go_connected(self) -> None:
        """
        The CONNECT answer is Go's exact bytes.
        """
        self.assertEqual(GO_CONNECTED_RESPONSE, b"HTTP/1.0 200 Connected to Go RPC\n\n")
        self.assertEqual(CONTINUE_RESPONSE, b"HTTP/1.1 100 Continue\r\n\r\n")

    def test_go_must_connect(self) -> None:
        """
        The 405 for other methods on Go's RPC path matches Go 1.19's net/http bytes for each version.
        """
        date = http_date(1795448109)
        self.assertEqual(date, "Mon, 23 Nov 2026 15:35:09 GMT")
        head = b"405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Mon, 23 Nov 2026 15:35:09 GMT\r\nContent-Length: 17\r\n"
        for request, expected in [
            (b"GET /_goRPC_ HTTP/1.0\r\n\r\n", b"HTTP/1.0 " + head + b"\r\n405 must CONNECT\n"),
            (b"GET /_goRPC_ HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 " + head + b"\r\n405 must CONNECT\n"),
            (
                b"POST /_goRPC_ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab",
                b"HTTP/1.1 " + head + b"Connection: close\r\n\r\n405 must CONNECT\n",
            ),
            (
                b"GET /_goRPC_ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                b"HTTP/1.0 " + head + b"Connection: keep-alive\r\n\r\n405 must CONNECT\n",
            ),
        ]:
            [parsed] = parse(request)
            self.assertEqual(go_must_connect_response(parsed, date), expected)

    def test_headers_equality(self) -> None:
        """
        Headers compare by their fields in order.
        """
        self.assertEqual(Headers([("A", "1")]), Headers([("A", "1")]))
        self.assertNotEqual(Headers([("A", "1")]), Headers([("a", "1")]))


class PropertyTests(SynchronousTestCase):
    """
    Properties over random input.
    """

    @settings(max_examples=300, deadline=None)
    @given(data=st.binary(max_size=300), cut=st.integers(min_value=0, max_value=300))
    def test_random_bytes(self, data: bytes, cut: int) -> None:
        """
        Random bytes give requests or HTTPParseError, never another exception.
        """
        parser = HTTPRequestParser(max_header_size=200, max_body_size=50)
        try:
            for chunk in (data[:cut], data[cut:]):
                if parser.finished:
                    break
                parser.feed(chunk)
                for request in parser.requests():
                    self.assertIsInstance(request, HTTPRequest)
        except HTTPParseError as e:
            self.assertIn(e.status, (400, 413, 431, 501, 505))

    @settings(max_examples=300, deadline=None)
    @given(
        lines=st.lists(
            st.sampled_from(
                [b"GET / HTTP/1.1", b"POST /rpc HTTP/1.0", b"Host: h", b"Content-Length: 3",
                 b"Connection: close", b"X: \x00", b" fold", b"", b"abc", b"CONNECT /_goRPC_ HTTP/1.0",
                 b"Transfer-Encoding: chunked", b"3;x=y", b"0"]
            ),
            max_size=8,
        ),
        ending=st.sampled_from([b"\n", b"\r\n", b"\r"]),
        cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=4),
    )
    def test_splitting_does_not_matter(self, lines: list[bytes], ending: bytes, cuts: list[int]) -> None:
        """
        HTTP-like input gives the same requests, or the same error status, however it is split.
        """
        data = ending.join(lines)

        def outcome(chunks: list[bytes]) -> object:
            parser = HTTPRequestParser()
            got: list[HTTPRequest] = []
            try:
                for chunk in chunks:
                    if parser.finished:
                        break
                    parser.feed(chunk)
                    got.extend(parser.requests())
            except HTTPParseError as e:
                return got, e.status
            if got and got[-1].method == "CONNECT":
                # The leftover depends on where the feeds were cut.
                got[-1].leftover = b""
            return got, None

        points = sorted({c % (len(data) + 1) for c in cuts})
        chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
        self.assertEqual(outcome(chunks), outcome([data]))
