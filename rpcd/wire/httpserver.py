"""
The server side of HTTP: JSON-RPC 2.0 over C{POST /rpc}, Go's
C{rpc.DialHTTP} (C{CONNECT /_goRPC_}, then gob), and C{GET /debug/rpc}.

Requests are parsed strictly by L{rpcd.wire.httpparse}; one connection
serves many requests (keep-alive), and pipelined requests are answered in
the order they came, however long each call takes.

    POST /rpc            a JSON-RPC 2.0 request or batch
                         (C{Content-Type: application/json}, or
                         C{application/json-rpc}, C{application/jsonrequest}):
                         200 with C{application/json}, the response(s);
                         204 when there is nothing to answer (notifications
                         only).  Errors are JSON-RPC error objects in a 200
                         (see L{rpcd.wire.jsoncalls} for the codes); another
                         content type (or none) gets 415, so that a browser's
                         cross-site form post cannot call a method; another
                         method gets 405.
    CONNECT /_goRPC_     C{HTTP/1.0 200 Connected to Go RPC\\n\\n}, then
                         the connection is Go's net/rpc gob protocol, fed
                         the bytes that followed the request head.
    * /_goRPC_           Go's C{405 must CONNECT} response.
    GET /debug/rpc       an HTML page of services, methods (signature, doc)
                         and call counts, as Go's C{net/rpc} serves it
                         (HEAD too).
    anything else        404 C{404 page not found}, as Go's mux answers.

A request the parser refuses gets its status (400, 413, 431, 501, 505)
with the reason in plain text, after the answers to the requests
before it, and the connection is closed with the reason logged.

The daemon's handshake timeout (C{limits.handshake_timeout}) covers each
request as it arrives: the first request, and each later one from its first
byte, must be complete (head and body) within it.
"""

from __future__ import annotations

import html
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.dispatch import Dispatcher
from rpcd.wire import sniff
from rpcd.wire.httpparse import (
    CONTINUE_RESPONSE,
    GO_CONNECTED_RESPONSE,
    HTTPParseError,
    HTTPRequest,
    HTTPRequestParser,
    error_response,
    format_response,
    go_must_connect_response,
    http_date,
)
from rpcd.wire.jsoncalls import answer_payload
from rpcd.wire.jsonrpc import parse_request

if TYPE_CHECKING:
    from rpcd.server import RPCServer
    from rpcd.service import ServiceRegistry

log = Logger()

RPC_PATH = "/rpc"
GO_RPC_PATH = "/_goRPC_"
DEBUG_PATH = "/debug/rpc"

#: The media types a JSON-RPC 2.0 POST may carry.
JSON_TYPES = frozenset({"application/json", "application/json-rpc", "application/jsonrequest"})

_NOT_FOUND_BODY = b"404 page not found\n"


class _Slot:
    """One response, in request order; C{data} is None until it is ready."""

    __slots__ = ("data", "close")

    def __init__(self, data: bytes | None = None, close: bool = False) -> None:
        self.data = data
        self.close = close


class HTTPServerProtocol(Protocol):
    """
    Serves one HTTP connection.

    @ivar dispatcher: runs this connection's JSON-RPC calls.
    @ivar tunnel: after C{CONNECT /_goRPC_}, the gob protocol that owns the
        connection; bytes go to it from then on.
    """

    transport: ITCPTransport

    protocol_name = "http"
    has_preamble = True

    def __init__(self, server: RPCServer) -> None:
        """
        @param server: what every connection shares (registry, limits, clock).
        """
        self.server = server
        self.parser = HTTPRequestParser(max_body_size=server.limits.max_frame_bytes)
        self.dispatcher: Dispatcher | None = None
        self.tunnel: Protocol | None = None
        self._queue: deque[_Slot] = deque()
        self._connect: HTTPRequest | None = None  # a CONNECT waiting for earlier answers
        self._connect_buffer = bytearray()
        self._closing = False
        self._lost = False
        self._head_timed = True  # the sniffer's deadline runs for the first request

    def connectionMade(self) -> None:
        self.session = self.server.new_session(self.transport, self.protocol_name)
        self.dispatcher = Dispatcher(self.session, self.server.clock,
                                     self.server.limits.max_calls_per_connection)

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.dataReceived(data)
            return
        if self._connect is not None:
            self._buffer_for_tunnel(data)
            return
        parser = self.parser
        if self._closing or parser.finished:
            return
        parser.feed(data)
        complete = False
        try:
            for request in parser.requests():
                complete = True
                self._handle(request)
                if self._closing or self._connect is not None:
                    break
        except HTTPParseError as e:
            log.info("closing {peer}: HTTP {status}: {detail}", peer=self.session.peer,
                     status=e.status, detail=e.detail)
            self._queue.append(_Slot(error_response(e), close=True))
        if complete:
            self._head_timed = False
            self.server.preamble_done(self)
        elif not self._head_timed and data.strip(b"\r\n"):
            self._head_timed = True
            self.server.expect_preamble(self)
        if not self._queue and not self._closing and parser.take_continue():
            self.transport.write(CONTINUE_RESPONSE)
        self._flush()

    def _handle(self, request: HTTPRequest) -> None:
        path = request.target.partition("?")[0]
        if path == RPC_PATH:
            self._rpc(request)
        elif path == GO_RPC_PATH:
            if request.method == "CONNECT":
                self._connect = request
            else:
                self._answer(go_must_connect_response(request, self._date()),
                             close=not request.keep_alive)
        elif path == DEBUG_PATH and request.method in ("GET", "HEAD"):
            self._respond(request, 200, [("Content-Type", "text/html; charset=utf-8")],
                          debug_page(self.server.registry).encode("utf-8"))
        elif path == DEBUG_PATH:
            self._respond(request, 405, [("Allow", "GET, HEAD"),
                                         ("Content-Type", "text/plain; charset=utf-8")],
                          b"405 method not allowed: use GET\n")
        else:
            self._respond(request, 404, [("Content-Type", "text/plain; charset=utf-8")],
                          _NOT_FOUND_BODY)

    def _rpc(self, request: HTTPRequest) -> None:
        if request.method != "POST":
            self._respond(request, 405, [("Allow", "POST"),
                                         ("Content-Type", "text/plain; charset=utf-8")],
                          b"405 method not allowed: POST a JSON-RPC 2.0 request\n")
            return
        media = (request.headers.get("content-type") or "").partition(";")[0].strip().lower()
        if media not in JSON_TYPES:
            self._respond(request, 415, [("Content-Type", "text/plain; charset=utf-8")],
                          b"415 unsupported media type: POST /rpc needs "
                          b"Content-Type: application/json\n")
            return
        limits = self.server.limits
        payload = parse_request(request.body, limits.max_frame_bytes)
        dispatcher = self.dispatcher
        assert dispatcher is not None  # set by connectionMade, before any request
        reply = answer_payload(dispatcher, payload)
        if isinstance(reply, Deferred):
            slot = _Slot()
            self._queue.append(slot)
            reply.addCallback(self._rpc_later, slot, request)
            return
        self._queue.append(_Slot(self._rpc_response(request, reply), not request.keep_alive))

    def _rpc_later(self, reply: bytes | None, slot: _Slot, request: HTTPRequest) -> None:
        slot.data = self._rpc_response(request, reply)
        slot.close = not request.keep_alive
        self._flush()

    def _rpc_response(self, request: HTTPRequest, reply: bytes | None) -> bytes:
        if reply is None:
            return self._format(request, 204, [], b"")
        return self._format(request, 200, [("Content-Type", "application/json")], reply)

    def _respond(self, request: HTTPRequest, status: int, headers: list[tuple[str, str]],
                 body: bytes) -> None:
        self._answer(self._format(request, status, headers, body), close=not request.keep_alive)

    def _answer(self, data: bytes, close: bool) -> None:
        self._queue.append(_Slot(data, close))

    def _format(self, request: HTTPRequest, status: int, headers: list[tuple[str, str]],
                body: bytes) -> bytes:
        fields = [("Date", self._date()), *headers]
        if request.method == "HEAD":
            fields.append(("Content-Length", str(len(body))))
            body = b""
        if request.version == "HTTP/1.1" and not request.keep_alive:
            fields.append(("Connection", "close"))
        elif request.version == "HTTP/1.0" and request.keep_alive:
            fields.append(("Connection", "keep-alive"))
        return format_response(status, None, fields, body, request.version)

    def _date(self) -> str:
        return _date_of(int(self.server.clock.seconds()))

    def _flush(self) -> None:
        """
        Write the responses that are ready, in request order; close after
        one that ends the connection; open a waiting C{CONNECT} tunnel once
        everything before it is answered.
        """
        if self._lost:
            return
        queue = self._queue
        out: list[bytes] = []
        close = False
        while queue and queue[0].data is not None:
            slot = queue.popleft()
            out.append(slot.data)  # type: ignore[arg-type]
            if slot.close:
                close = True
                queue.clear()
                break
        if out:
            self.transport.write(b"".join(out))
        if close:
            self._closing = True
            self._connect = None
            self.transport.loseConnection()
        elif not queue and self._connect is not None:
            self._open_tunnel()

    def _buffer_for_tunnel(self, data: bytes) -> None:
        self._connect_buffer += data
        limit = self.server.limits.max_frame_bytes + 65536
        if len(self._connect_buffer) > limit:
            log.info("closing {peer}: more than {limit} bytes sent after CONNECT before "
                     "the earlier requests were answered", peer=self.session.peer, limit=limit)
            self._connect = None
            self._closing = True
            self._connect_buffer = bytearray()
            self.transport.loseConnection()

    def _open_tunnel(self) -> None:
        request, self._connect = self._connect, None
        assert request is not None
        leftover = request.leftover + bytes(self._connect_buffer)
        self._connect_buffer = bytearray()
        make = _gob_protocol()
        if make is None:
            self._closing = True
            self.transport.write(format_response(
                501, None, [("Content-Type", "text/plain; charset=utf-8"), ("Connection", "close")],
                b"Go's net/rpc (gob) is not available in this build\n", "HTTP/1.0"))
            self.transport.loseConnection()
            return
        self.transport.write(GO_CONNECTED_RESPONSE)
        self.tunnel = take_over(make, self.server, self.transport, leftover)

    def busy(self) -> bool:
        """
        @return: whether calls are running or answers are waiting (then the
            connection is not idle); after C{CONNECT}, whether the tunnel is
            busy.
        """
        tunnel = self.tunnel
        if tunnel is not None:
            busy = getattr(tunnel, "busy", None)
            if busy is not None:
                return bool(busy())
            dispatcher = getattr(tunnel, "dispatcher", None)
            return bool(dispatcher is not None and dispatcher.running)
        return bool(self._queue) or bool(self.dispatcher is not None and self.dispatcher.running)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._queue.clear()
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self.tunnel is not None:
            self.tunnel.connectionLost(reason)


_last_date: tuple[int, str] = (-1, "")


def _date_of(second: int) -> str:
    """The C{Date} header text for a second, formatted once per second."""
    global _last_date
    if _last_date[0] != second:
        _last_date = (second, http_date(second))
    return _last_date[1]


def _gob_protocol() -> Callable[[RPCServer], Protocol] | None:
    from rpcd.server import _protocol_class
    try:
        return _protocol_class(sniff.GOB)
    except ImportError:
        return None


def take_over(make: Callable[[RPCServer], Protocol], server: RPCServer, transport: Any,
              leftover: bytes) -> Protocol:
    """
    Hand a connection to the gob server protocol after C{CONNECT}.

    If the protocol's class has a C{take_over(server, transport, leftover)}
    class method, it builds and starts the protocol; otherwise the protocol
    is built as C{make(server)}, connected to the transport, and fed the
    leftover bytes, as any wire protocol is after sniffing.

    @param make: the gob server protocol's class (from C{SERVER_PROTOCOLS}).
    @param server: the shared server state.
    @param transport: the connection.
    @param leftover: the bytes that followed the C{CONNECT} head.
    @return: the protocol that owns the connection now.
    """
    hook = getattr(make, "take_over", None)
    if hook is not None:
        return hook(server, transport, leftover)
    protocol = make(server)
    protocol.makeConnection(transport)
    if leftover:
        protocol.dataReceived(leftover)
    return protocol


_PAGE_HEAD = """<html>
<head><meta charset="utf-8"><title>Services</title></head>
<body>
<h1>Services</h1>
"""
_PAGE_TAIL = """</body>
</html>
"""


def debug_page(registry: ServiceRegistry) -> str:
    """
    The C{/debug/rpc} page, after Go's C{net/rpc/debug.go}: for each service
    a table of its methods with their signatures, first doc lines and how
    many times each was called since the daemon started.  Every name and
    text is HTML-escaped.

    @param registry: the daemon's services.
    @return: the HTML text.
    """
    counts = registry.call_counts
    out = [_PAGE_HEAD]
    for spec in registry.services():
        name = html.escape(spec.name)
        out.append(f"<hr>\nService {name}\n<hr>\n<table>\n"
                   "<tr><th align=center>Method</th><th align=center>Calls</th>"
                   "<th align=left>Description</th></tr>\n")
        for method in sorted(spec.methods.values(), key=lambda m: m.name):
            calls = counts.get(f"{spec.name}.{method.name}", 0)
            out.append(f"<tr><td align=left><code>{name}.{html.escape(method.signature)}"
                       f"</code></td><td align=center>{calls}</td>"
                       f"<td align=left>{html.escape(method.doc)}</td></tr>\n")
        out.append("</table>\n")
    out.append(_PAGE_TAIL)
    return "".join(out)
