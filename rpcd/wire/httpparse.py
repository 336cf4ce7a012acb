"""
A strict, sans-io HTTP/1.0 and HTTP/1.1 request parser, and response bytes.

Only what rpcd serves: C{CONNECT /_goRPC_ HTTP/1.0} (Go's C{rpc.DialHTTP}),
C{POST /rpc} with a C{Content-Length} or chunked body, C{GET /debug/rpc}.
Feed bytes, then iterate the complete requests::

    parser = HTTPRequestParser()
    parser.feed(data)
    if parser.take_continue():
        transport.write(CONTINUE_RESPONSE)
    try:
        for request in parser.requests():
            handle(request)           # request.leftover: tunnelled bytes
    except HTTPParseError as e:
        transport.write(error_response(e))   # then close
        transport.loseConnection()

Requests come out in order, each complete with its body; an error is raised
after the requests that preceded it, so pipelined requests are answered up
to the bad one.  An error is final: answer it and close.

Rules, and the status each refusal carries (L{HTTPParseError.status}):
  - 400: a malformed request line or header line, a bare CR, NUL or other
    control character in the head (HTAB allowed in header values), a
    whitespace before a header's colon, obs-fold (a header line starting
    with SP or HTAB), a C{Content-Length} that is not all digits or appears
    more than once, an HTTP/1.1 request without exactly one C{Host}, more
    than one C{Host}, C{Content-Type} or C{Origin} in any request (each
    copy could be read differently by a proxy and by rpcd);
    C{Transfer-Encoding} together with C{Content-Length} (request
    smuggling) or in an HTTP/1.0 request, C{chunked} applied twice; in a
    chunked body, a chunk-size that is not hex or has more than 16 digits,
    a malformed chunk extension, a chunk-size line longer than
    C{max_header_size}, more chunks than L{max_chunks} allows, chunk data
    not followed by CRLF, a malformed trailer field line.
  - 413: a body above C{max_body_size}, refused before any of its bytes is
    buffered: from the C{Content-Length} in the head, or, for a chunked
    body, from the chunk-size line that would take it past the limit,
    before that chunk's data.
  - 431: a head (request line and headers), or a chunked body's trailer
    section, longer than C{max_header_size}, checked as bytes arrive.
  - 501: a C{Transfer-Encoding} other than C{chunked} alone (C{gzip},
    C{gzip, chunked}, C{chunked, gzip}).
  - 505: a well-formed version other than HTTP/1.0 and HTTP/1.1.
Lines may end with CRLF or a bare LF (Go's client sends
C{"CONNECT /_goRPC_ HTTP/1.0\\n\\n"}), in the head and in chunked
framing.  Empty lines before a request line are skipped, as RFC 9112
section 2.2 allows.  A request with neither C{Content-Length} nor
C{Transfer-Encoding} has an empty body.

A C{Transfer-Encoding: chunked} body (RFC 9112 section 7.1) is decoded as
its bytes arrive, keeping its place between feeds: the request's C{body} is
the decoded bytes, so a handler never sees the framing.  Chunk extensions
are checked against the RFC's grammar, then ignored.  Trailer fields are
checked as header lines and kept apart in the request's C{trailers}, never
merged into its C{headers}.

After a C{CONNECT} request the connection stops being HTTP: the request's
C{leftover} holds every byte received after its head (Go starts its gob
stream right after the blank line, often in the same packet), any body
framing is ignored, and feeding the parser again is a programming error.
After a request that does not keep the connection alive, later bytes are
discarded: answer it and close.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Callable, Iterable, Iterator

__all__ = [
    "CONTINUE_RESPONSE",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADER_SIZE",
    "GO_CONNECTED_RESPONSE",
    "HTTPParseError",
    "HTTPRequest",
    "HTTPRequestParser",
    "Headers",
    "REASONS",
    "error_response",
    "format_response",
    "go_must_connect_response",
    "http_date",
    "max_chunks",
]

DEFAULT_MAX_HEADER_SIZE = 16 * 1024
DEFAULT_MAX_BODY_SIZE = 4 * 1024 * 1024

GO_CONNECTED_RESPONSE = b"HTTP/1.0 200 Connected to Go RPC\n\n"
"""What Go's C{rpc.Server.ServeHTTP} writes after a C{CONNECT}, byte for byte;
Go's client accepts nothing else."""

CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
"""The interim response to send when L{HTTPRequestParser.take_continue} says so."""

REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    421: "Misdirected Request",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
"""Reason phrases for the statuses rpcd uses."""

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])")
_VERSION_LIKE = re.compile(rb"HTTP/[0-9]+\.[0-9]+")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*", re.S)
_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")
_HEAD_END = re.compile(rb"\n\r?\n")
_LEADING_EMPTY_LINES = re.compile(rb"(?:\r?\n)*")
_DIGITS = re.compile(rb"[0-9]+")
_BARE_CR = re.compile(rb"\r[^\n]")
_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXTENSIONS = (
    rb"(?:[ \t]*;[ \t]*" + _TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED_STRING + rb"))?)*"
)
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]+)" + _CHUNK_EXTENSIONS)
_MAX_CHUNK_SIZE_DIGITS = 16
# Fields a request may carry at most once (Content-Length has its own check).
_SINGLE_FIELDS = {"host": "Host", "content-type": "Content-Type", "origin": "Origin"}


class HTTPParseError(ValueError):
    """
    The request is refused.

    @ivar status: the status code to answer (400, 413, 431, 501, 505).
    @ivar reason: its reason phrase.
    @ivar detail: what was wrong, in a sentence (also the C{str()}).
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = REASONS.get(status, "Error")
        self.detail = detail


class Headers:
    """
    Header fields in the order received, looked up case-insensitively.

    Iterating gives C{(name, value)} pairs with names as sent.  Names and
    values are C{str}, decoded as ISO-8859-1 (values may hold obs-text).
    """

    __slots__ = ("_fields", "_index")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        """
        @param fields: C{(name, value)} pairs, in order.
        """
        self._fields = list(fields)
        self._index: dict[str, list[str]] = {}
        for name, value in self._fields:
            self._index.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """
        @return: the first value of the field C{name}, or C{default}.
        """
        values = self._index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """
        @return: every value of the field C{name}, in order; may be empty.
        """
        return list(self._index.get(name.lower(), ()))

    def tokens(self, name: str) -> list[str]:
        """
        @return: the comma-separated elements of every C{name} field,
            stripped and lower-cased (for C{Connection}, C{Expect}, ...).
        """
        return [
            token.strip().lower()
            for value in self._index.get(name.lower(), ())
            for token in value.split(",")
            if token.strip()
        ]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._fields == other._fields

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


_NO_FIELDS = Headers()
"""No header fields: shared, as L{Headers} cannot be changed."""


@dataclass(slots=True)
class HTTPRequest:
    """
    One complete request (treat as read-only).

    @ivar method: e.g. C{"POST"}, case as sent (methods are case-sensitive).
    @ivar target: the request-target as sent, e.g. C{"/rpc?x=1"}.
    @ivar version: C{"HTTP/1.0"} or C{"HTTP/1.1"}.
    @ivar headers: the header fields.
    @ivar body: the body (C{Content-Length} bytes, or a chunked body
        decoded), C{b""} if none.
    @ivar keep_alive: whether the connection may serve another request
        after this one: HTTP/1.1 unless C{Connection: close}, HTTP/1.0 only
        with C{Connection: keep-alive}; always C{False} for C{CONNECT}.
    @ivar leftover: for C{CONNECT}, the bytes received after the head, which
        belong to the tunnelled protocol; C{b""} otherwise.
    @ivar trailers: the trailer fields that followed a chunked body, kept
        apart from C{headers}; empty otherwise.
    """

    method: str
    target: str
    version: str
    headers: Headers
    body: bytes = b""
    keep_alive: bool = True
    leftover: bytes = field(default=b"")
    trailers: Headers = field(default_factory=lambda: _NO_FIELDS)


class HTTPRequestParser:
    """
    Incremental, strict request parser for one connection.
    """

    def __init__(
        self,
        max_header_size: int = DEFAULT_MAX_HEADER_SIZE,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        """
        @param max_header_size: the longest head accepted, in bytes, from
            the request line to the blank line included.
        @param max_body_size: the largest body accepted, from its
            C{Content-Length} or decoded from chunks.
        """
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self._buf = bytearray()
        self._ready: deque[HTTPRequest] = deque()
        self._error: HTTPParseError | None = None
        self._pending: HTTPRequest | None = None  # head parsed, body awaited
        self._reader: _LengthBody | _ChunkedBody = _LengthBody(0)  # the pending body's
        self._searched = 0  # head-end search resumes here
        self._continue = False
        self._tunnel = False
        self._done = False

    @property
    def finished(self) -> bool:
        """
        Whether the parser will read no more requests: after a C{CONNECT},
        a request that does not keep the connection alive, or an error.
        """
        return self._done or self._tunnel or self._error is not None

    def feed(self, data: bytes) -> None:
        """
        Add bytes received from the client.

        Never raises for bad input: errors are delivered, in order, by
        L{requests}.  Bytes after an error or after a request that closes
        the connection are discarded.

        @param data: the next bytes, of any length.
        @raise RuntimeError: called after a C{CONNECT} request was parsed;
            its tunnel owns the connection now.
        """
        if self._tunnel:
            raise RuntimeError("the connection is a CONNECT tunnel, not HTTP")
        if self._error is not None or self._done:
            return
        self._buf += data
        try:
            self._parse()
        except HTTPParseError as e:
            self._error = e
            self._buf = bytearray()
            self._continue = False

    def requests(self) -> Iterator[HTTPRequest]:
        """
        Yield the requests completed so far, in order.

        @return: an iterator; requests not consumed wait for the next call.
        @raise HTTPParseError: after the requests that preceded the error;
            raised again by every later call.
        """
        ready = self._ready
        while ready:
            yield ready.popleft()
        if self._error is not None:
            raise self._error

    def next_request(self) -> HTTPRequest | None:
        """
        Take the next completed request, as L{requests} yields them.

        @return: the request, or None if none is complete yet.
        @raise HTTPParseError: the next thing in the stream is an error.
        """
        if self._ready:
            return self._ready.popleft()
        if self._error is not None:
            raise self._error
        return None

    @property
    def has_requests(self) -> bool:
        """
        Whether complete requests wait to be taken from L{requests}.
        """
        return bool(self._ready)

    def take_continue(self) -> bool:
        """
        Whether to send L{CONTINUE_RESPONSE} now: true once per request
        whose head (HTTP/1.1, C{Expect: 100-continue}) has arrived but not
        yet all of its body.  curl, for instance, waits a second for it
        before sending a large body.
        """
        send, self._continue = self._continue, False
        return send

    def _parse(self) -> None:
        buf = self._buf
        pos = 0
        while not (self._done or self._tunnel):
            if self._pending is not None:
                pos = self._reader.read(buf, pos)
                if not self._reader.done:
                    break
                self._complete_request()
                continue
            pos = _LEADING_EMPTY_LINES.match(buf, pos).end()  # type: ignore[union-attr]
            head_end = self._find_head_end(buf, pos)
            if head_end is None:
                break
            request = self._parse_head(bytes(buf[pos:head_end.start() + 1]))
            pos = head_end.end()
            if request.method == "CONNECT":
                pos = self._start_tunnel(request, buf, pos)
            else:
                self._expect_body(request)
        if self._done or self._tunnel:
            self._buf = bytearray()
        elif pos:
            del buf[:pos]
            self._searched = max(0, self._searched - pos)

    def _find_head_end(self, buf: bytearray, pos: int) -> re.Match[bytes] | None:
        """
        Find the blank line ending the head that starts at C{pos}, searching
        only the bytes not searched before.

        @return: the blank line's match, or C{None} while the head is
            incomplete.
        @raise HTTPParseError: a bare CR, or a head over C{max_header_size}.
        """
        match = _HEAD_END.search(buf, max(pos, self._searched - 2))
        if match is None:
            bare_cr = _BARE_CR.search(buf, max(pos, self._searched - 1))
            if bare_cr is not None:
                raise HTTPParseError(400, "bare CR in the request head")
            self._searched = len(buf)
            if len(buf) - pos > self.max_header_size:
                raise _head_too_large(self.max_header_size)
            return None
        self._searched = 0
        if match.end() - pos > self.max_header_size:
            raise _head_too_large(self.max_header_size)
        return match

    def _start_tunnel(self, request: HTTPRequest, buf: bytearray, pos: int) -> int:
        """
        Deliver a C{CONNECT} request with every byte after its head as its
        leftover; the parser reads nothing more.

        @return: the end of C{buf}.
        """
        request.keep_alive = False
        request.leftover = bytes(buf[pos:])
        self._tunnel = True
        self._ready.append(request)
        return len(buf)

    def _expect_body(self, request: HTTPRequest) -> None:
        """
        Wait for the body of a request whose head was parsed (and ask for a
        C{100 Continue} if it wants one and a body is to come).
        """
        self._reader = self._body_reader(request)
        self._pending = request
        if not self._reader.done and "100-continue" in request.headers.tokens("expect"):
            self._continue = request.version == "HTTP/1.1"

    def _complete_request(self) -> None:
        """
        Deliver the pending request, its body read.
        """
        request = self._pending
        assert request is not None
        self._reader.finish(request)
        self._pending = None
        self._continue = False
        self._ready.append(request)
        if not request.keep_alive:
            self._done = True

    def _parse_head(self, head: bytes) -> HTTPRequest:
        """
        Parse a head: its lines, each ended by LF (the blank line excluded).
        """
        lines = _split_lines(head, "the request head")
        request_line = _REQUEST_LINE.fullmatch(lines[0])
        if request_line is None:
            raise HTTPParseError(400, f"malformed request line {lines[0][:100]!r}")
        method, target, version = request_line.groups()
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise HTTPParseError(505, f"HTTP version {version.decode()} is not supported")
        headers = Headers(_parse_field(line, "header") for line in lines[1:])
        version_text = version.decode("ascii")
        connection = headers.tokens("connection")
        if version_text == "HTTP/1.1":
            keep_alive = "close" not in connection
            if len(headers.get_all("host")) != 1:
                raise HTTPParseError(400, "an HTTP/1.1 request needs exactly one Host header")
        else:
            keep_alive = "keep-alive" in connection and "close" not in connection
        index = headers._index
        for name, shown in _SINGLE_FIELDS.items():
            if len(index.get(name, ())) > 1:
                raise HTTPParseError(400, f"more than one {shown} header")
        return HTTPRequest(
            method.decode("ascii"),
            target.decode("ascii"),
            version_text,
            headers,
            keep_alive=keep_alive,
        )

    def _body_reader(self, request: HTTPRequest) -> _LengthBody | _ChunkedBody:
        """
        How the body of a (non-CONNECT) request is framed, checked.
        """
        if "transfer-encoding" in request.headers:
            _check_chunked(request)
            return _ChunkedBody(self.max_body_size, self.max_header_size)
        return _LengthBody(self._content_length(request))

    def _content_length(self, request: HTTPRequest) -> int:
        """
        The body length of a request without C{Transfer-Encoding}, checked.
        """
        lengths = request.headers.get_all("content-length")
        if not lengths:
            return 0
        if len(lengths) > 1:
            raise HTTPParseError(400, "more than one Content-Length header")
        text = lengths[0]
        if not _DIGITS.fullmatch(text.encode("latin-1")):
            raise HTTPParseError(400, f"invalid Content-Length {text[:40]!r}")
        if len(text) > 18 or int(text) > self.max_body_size:
            raise HTTPParseError(
                413,
                f"a body of {text[:40]} bytes exceeds the limit of "
                f"{self.max_body_size} bytes",
            )
        return int(text)


def _head_too_large(max_header_size: int) -> HTTPParseError:
    """The refusal of a head longer than C{max_header_size}."""
    return HTTPParseError(431, f"the request head exceeds {max_header_size} bytes")


def _split_lines(text: bytes, where: str) -> list[bytes]:
    """
    Split lines of a head or of chunked framing, checked.

    @param text: the lines, each ended by LF or CRLF, the last one too.
    @param where: where the lines are, for the error, e.g. C{"the request head"}.
    @return: the lines without their endings.
    @raise HTTPParseError: 400 for a CR not followed by LF, or a control
        character other than HTAB.
    """
    text = text.replace(b"\r\n", b"\n")
    if b"\r" in text:
        raise HTTPParseError(400, f"bare CR in {where}")
    bad = _CONTROL.search(text)
    if bad is not None:
        raise HTTPParseError(400, f"control character {bad.group()!r} in {where}")
    return text.split(b"\n")[:-1]


def _parse_field(line: bytes, kind: str) -> tuple[str, str]:
    """
    Parse a header (or trailer) field line.

    @param line: the line, from L{_split_lines}.
    @param kind: C{"header"} or C{"trailer"}, for the error.
    @return: its C{(name, value)}, the value trimmed, ISO-8859-1 text.
    @raise HTTPParseError: 400 for obs-fold or a malformed line.
    """
    if line[:1] in (b" ", b"\t"):
        raise HTTPParseError(400, f"obsolete line folding in a {kind} field")
    field_line = _HEADER_LINE.fullmatch(line)
    if field_line is None:
        raise HTTPParseError(400, f"malformed {kind} line {line[:100]!r}")
    return field_line.group(1).decode("ascii"), field_line.group(2).decode("latin-1")


def _check_chunked(request: HTTPRequest) -> None:
    """
    Accept C{Transfer-Encoding: chunked} alone, in an HTTP/1.1 request
    without C{Content-Length}.

    @raise HTTPParseError: 400 for C{Transfer-Encoding} in HTTP/1.0, with
        C{Content-Length}, or with C{chunked} twice; 501 for any other coding.
    """
    headers = request.headers
    if request.version == "HTTP/1.0":
        raise HTTPParseError(400, "Transfer-Encoding is not allowed in an HTTP/1.0 request")
    if "content-length" in headers:
        raise HTTPParseError(
            400, "a request with Transfer-Encoding must not have Content-Length"
        )
    codings = headers.tokens("transfer-encoding")
    if codings == ["chunked"]:
        return
    if codings.count("chunked") > 1:
        raise HTTPParseError(400, "Transfer-Encoding applies chunked more than once")
    raise HTTPParseError(
        501, f"Transfer-Encoding {', '.join(codings)!r} is not supported: only chunked is"
    )


class _LengthBody:
    """
    A body of C{Content-Length} bytes, taken once all of it has arrived.

    @ivar done: whether the whole body has been read.
    """

    def __init__(self, size: int) -> None:
        """
        @param size: the body's length, checked.
        """
        self._size = size
        self._body = b""
        self.done = size == 0

    def read(self, buf: bytearray, pos: int) -> int:
        """
        Take the body from C{buf} at C{pos} if all of it is there.

        @return: where the bytes after the body start, or C{pos} while it
            is incomplete.
        """
        end = pos + self._size
        if self.done or len(buf) < end:
            return pos
        self._body = bytes(buf[pos:end])
        self.done = True
        return end

    def finish(self, request: HTTPRequest) -> None:
        """
        Put the body on its request.
        """
        request.body = self._body


# One state of a chunked body: decodes from a buffer and an offset, returns
# where it stopped, or None when it needs more bytes.
_Step = Callable[[bytearray, int], int | None]


class _ChunkedBody:
    """
    A C{Transfer-Encoding: chunked} body (RFC 9112 section 7.1), decoded as
    its bytes arrive.

    Chunk data is moved out of the parser's buffer as it comes; a line
    (chunk-size, trailer field) stays in the buffer until its LF arrives,
    and the search for the LF resumes where it stopped.  Each limit is
    checked before the bytes it bounds are kept.

    @ivar done: whether the body and its trailer section have been read.
    """

    def __init__(self, max_body_size: int, max_header_size: int) -> None:
        """
        @param max_body_size: the most decoded bytes accepted (413 beyond).
        @param max_header_size: the longest chunk-size line (400 beyond) and
            the longest trailer section, blank line included (431 beyond).
        """
        self._max_body_size = max_body_size
        self._max_header_size = max_header_size
        self._chunks_left = max_chunks(max_body_size)
        self._body = bytearray()
        self._trailers: list[tuple[str, str]] = []
        self._trailer_size = 0  # bytes of the trailer lines before the current one
        self._chunk_left = 0  # bytes of the current chunk's data still to come
        self._scanned = 0  # bytes of the current line searched for its LF
        self._step: _Step = self._chunk_size_line
        self.done = False

    def read(self, buf: bytearray, pos: int) -> int:
        """
        Decode what C{buf} holds from C{pos}.

        @return: where the bytes not decoded yet start: after the body once
            it is done, else at the start of an incomplete line.
        @raise HTTPParseError: the body is refused (see the module's rules).
        """
        while not self.done:
            end = self._step(buf, pos)
            if end is None:
                break
            pos = end
        return pos

    def finish(self, request: HTTPRequest) -> None:
        """
        Put the decoded body and the trailer fields on their request.
        """
        request.body = bytes(self._body)
        request.trailers = Headers(self._trailers)

    def _chunk_size_line(self, buf: bytearray, pos: int) -> int | None:
        """Read a chunk-size line; refuse a chunk the body limit has no room for."""
        taken = self._take_line(buf, pos, 0, 400, "a chunk-size line")
        if taken is None:
            return None
        line, end = taken
        self._chunks_left -= 1
        if self._chunks_left < 0:
            # Each chunk costs microseconds of framing work whatever its
            # size: a body of one-byte chunks would cost far more CPU than
            # its bytes are worth.
            raise HTTPParseError(
                400,
                f"a chunked body of more than {max_chunks(self._max_body_size)} chunks: "
                "send larger chunks, or Content-Length",
            )
        size = _chunk_size(line)
        if size == 0:
            self._step = self._trailer_line
            return end
        if size > self._max_body_size - len(self._body):
            raise HTTPParseError(
                413,
                f"a chunked body of {len(self._body) + size} bytes or more exceeds "
                f"the limit of {self._max_body_size} bytes",
            )
        self._chunk_left = size
        self._step = self._chunk_data
        return end

    def _chunk_data(self, buf: bytearray, pos: int) -> int | None:
        """Move what has arrived of the current chunk's data to the body."""
        count = min(self._chunk_left, len(buf) - pos)
        if count == 0:
            return None
        self._body += buf[pos:pos + count]
        self._chunk_left -= count
        if self._chunk_left == 0:
            self._step = self._chunk_data_end
        return pos + count

    def _chunk_data_end(self, buf: bytearray, pos: int) -> int | None:
        """Read the CRLF (or LF) that must follow a chunk's data."""
        if buf[pos:pos + 1] == b"\n":
            self._step = self._chunk_size_line
            return pos + 1
        if buf[pos:pos + 2] == b"\r\n":
            self._step = self._chunk_size_line
            return pos + 2
        if len(buf) - pos < 2 and buf[pos:] in (b"", b"\r"):
            return None
        raise HTTPParseError(400, "chunk data is not followed by CRLF")

    def _trailer_line(self, buf: bytearray, pos: int) -> int | None:
        """Read a trailer field line, or the blank line that ends the body."""
        taken = self._take_line(buf, pos, self._trailer_size, 431, "the trailer section")
        if taken is None:
            return None
        line, end = taken
        if line:
            self._trailers.append(_parse_field(line, "trailer"))
            self._trailer_size += end - pos
        else:
            self.done = True
        return end

    def _take_line(
        self, buf: bytearray, pos: int, counted: int, status: int, what: str
    ) -> tuple[bytes, int] | None:
        """
        Take the line that starts at C{pos} once its LF has arrived.

        @param counted: bytes already counted against C{max_header_size}
            before this line.
        @param status: the status for a line too long.
        @param what: what the line is part of, for errors.
        @return: the line (without CRLF or LF) and where the next one
            starts, or C{None} while it is incomplete.
        @raise HTTPParseError: C{status} when the line, with its LF, is or
            will be longer than C{max_header_size} less C{counted}; 400 for
            a bare CR or a control character in it.
        """
        lf = buf.find(b"\n", pos + self._scanned)
        least_end = len(buf) + 1 if lf < 0 else lf + 1
        if counted + least_end - pos > self._max_header_size:
            raise HTTPParseError(status, f"{what} exceeds {self._max_header_size} bytes")
        if lf < 0:
            self._scanned = len(buf) - pos
            return None
        self._scanned = 0
        [line] = _split_lines(bytes(buf[pos:lf + 1]), what)
        return line, lf + 1


def max_chunks(max_body_size: int) -> int:
    """
    The most chunks (the last, empty one included) a chunked body may have:
    1024, plus one for every 256 bytes the body limit allows (17,408 for
    the default 4 MiB).

    @param max_body_size: the body limit.
    """
    return 1024 + max_body_size // 256


def _chunk_size(line: bytes) -> int:
    """
    The size in a chunk-size line; its extensions are checked and ignored.

    @param line: the line, from L{_split_lines}.
    @raise HTTPParseError: 400 for a line that is not hex digits and
        well-formed extensions, or more than 16 hex digits.
    """
    size_line = _CHUNK_SIZE_LINE.fullmatch(line)
    if size_line is None:
        raise HTTPParseError(400, f"malformed chunk-size line {line[:100]!r}")
    digits = size_line.group(1)
    if len(digits) > _MAX_CHUNK_SIZE_DIGITS:
        raise HTTPParseError(
            400, f"a chunk-size of more than {_MAX_CHUNK_SIZE_DIGITS} hex digits"
        )
    return int(digits, 16)


def _check_field(text: str, what: str) -> bytes:
    data = text.encode("latin-1")
    if _CONTROL.search(data) or b"\r" in data or b"\n" in data:
        raise ValueError(f"control character in the response {what} {text!r}")
    return data


def format_response(
    status: int,
    reason: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    """
    Format a response, with CRLF line endings.

    C{Content-Length} is added after C{headers} unless given there or the
    status forbids a body (1xx, 204, 304).

    @param status: the status code.
    @param reason: the reason phrase; C{None} for the one in L{REASONS}.
    @param headers: C{(name, value)} pairs, in order, ISO-8859-1 text.
    @param body: the body.
    @param version: C{"HTTP/1.1"} or C{"HTTP/1.0"} (use the request's).
    @return: the bytes to write.
    @raise ValueError: a header, the reason or the version holds CR, LF or
        another control character (response splitting), or a header name
        is not a token.
    """
    if reason is None:
        reason = REASONS.get(status, "Unknown")
    out = [
        _check_field(version, "version") + b" " + str(int(status)).encode("ascii")
        + b" " + _check_field(reason, "reason") + b"\r\n"
    ]
    has_length = False
    for name, value in headers:
        raw_name = name.encode("latin-1")
        if not re.fullmatch(_TOKEN, raw_name):
            raise ValueError(f"invalid header name {name!r}")
        has_length = has_length or name.lower() == "content-length"
        out.append(raw_name + b": " + _check_field(value, "header value") + b"\r\n")
    if not has_length and not (100 <= status < 200 or status in (204, 304)):
        out.append(b"Content-Length: " + str(len(body)).encode("ascii") + b"\r\n")
    out.append(b"\r\n")
    out.append(body)
    return b"".join(out)


def error_response(error: HTTPParseError) -> bytes:
    """
    The response to a refused request: its status, a plain-text body with
    the detail, and C{Connection: close} (the parser is finished).

    @param error: what L{HTTPRequestParser.requests} raised.
    @return: the bytes to write before closing the connection.
    """
    return format_response(
        error.status,
        error.reason,
        [("Content-Type", "text/plain; charset=utf-8"), ("Connection", "close")],
        (error.detail + "\n").encode("utf-8"),
    )


def http_date(seconds: float) -> str:
    """
    Format a time for a C{Date} header.

    @param seconds: seconds since the epoch, e.g. C{reactor.seconds()}.
    @return: e.g. C{"Mon, 23 Nov 2026 15:35:09 GMT"}.
    """
    return formatdate(seconds, usegmt=True)


def go_must_connect_response(request: HTTPRequest, date: str) -> bytes:
    """
    What Go's C{rpc.Server.ServeHTTP} answers (through net/http) to any
    method but C{CONNECT} on its RPC path, byte for byte::

        HTTP/1.1 405 Method Not Allowed
        Content-Type: text/plain; charset=utf-8
        Date: Mon, 23 Nov 2026 15:35:09 GMT
        Content-Length: 17
        Connection: close           (HTTP/1.1 closing; keep-alive for 1.0 kept)

        405 must CONNECT

    @param request: the request answered (its version and keep-alive pick
        the status line's version and the C{Connection} header, as in Go).
    @param date: the C{Date} value (see L{http_date}).
    @return: the bytes to write.
    """
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Date", date),
        ("Content-Length", "17"),
    ]
    if request.version == "HTTP/1.1" and not request.keep_alive:
        headers.append(("Connection", "close"))
    elif request.version == "HTTP/1.0" and request.keep_alive:
        headers.append(("Connection", "keep-alive"))
    return format_response(
        405, "Method Not Allowed", headers, b"405 must CONNECT\n", request.version
    )
