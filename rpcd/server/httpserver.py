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
                         (see L{rpcd.server.jsoncalls} for the codes); another
                         content type (or none) gets 415, so that a browser's
                         cross-site form post cannot call a method; another
                         method gets 405.
    CONNECT /_goRPC_     C{HTTP/1.0 200 Connected to Go RPC\\n\\n}, then
                         the connection is Go's net/rpc gob protocol, fed
                         the bytes that followed the request head.
    * /_goRPC_           Go's C{405 must CONNECT} response.
    GET /debug/rpc       an HTML page of services, methods (signature, doc)
                         and call counts, as Go's C{net/rpc} serves it
                         (HEAD too), with live figures (L{rpcd.server.statuspage});
                         C{GET /debug/rpc.json} the same as JSON.
    GET /metrics         the daemon's figures in Prometheus' text format,
                         with C{[http] metrics = true} (L{rpcd.server.metrics}).
    GET /openrpc.json    the OpenRPC document of the methods the request
                         may call (L{rpcd.core.schema}), as C{rpc.discover}
                         answers it.
    anything else        404 C{404 page not found}, as Go's mux answers.

    OPTIONS /rpc         a CORS preflight from an allowed cross origin: 204
                         with the C{Access-Control-Allow-*} headers.

A request the parser refuses gets its status (400, 413, 431, 501, 505)
with the reason in plain text, after the answers to the requests
before it, and the connection is closed with the reason logged.

Origin safety (L{rpcd.wire.httporigin}, C{[http]} in the config): a request
whose C{Host} is not a name of this daemon gets 421, one that changes
something from another origin not in C{allowed_origins} gets 403, each
with a body naming the value and the key to set; C{/debug/rpc} answers 404
with C{debug_page = false}.  B{Each request is its own session}: a login
(C{HelloService.Login}) lasts for the request that made it, so that it
never rides a keep-alive connection a proxy shares among users; a POST may
log its own session in with HTTP Basic credentials (C{Authorization: Basic},
401 or 429 if they fail); the debug page lists only the services the
request may call.

Bounds: at most C{[http] max_pipelined} requests are read ahead of the
responses written; later bytes wait unread (the socket stops being read)
until earlier responses are written.  While more than
C{limits.write_buffer_bytes} wait to be sent, no new request is started.
When the peer shuts down its sending side (half-close), the requests read
before it are answered, then the connection is closed.

The daemon's handshake timeout (C{limits.handshake_timeout}) covers each
request as it arrives: the first request, and each later one from its first
byte, must be complete (head and body) within it.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.server.backpressure import ReadThrottle, set_write_cap
from rpcd.server.httpconfig import HTTPConfig
from rpcd.core.dispatch import Dispatcher
from rpcd.errors import ResourceExhausted, RPCError
from rpcd.server.fairness import Waiter
from rpcd.core.interceptors import TRACE_HEADERS
from rpcd.middleware.ratelimit import RETRY_AFTER, retry_after_header
from rpcd.core.session import Session
from rpcd.server import protocols, statuspage
from rpcd.server.statuspage import DEBUG_JSON_PATH, METRICS_CONTENT_TYPE, METRICS_PATH
from rpcd.wire import sniff
from rpcd.wire.httporigin import OriginPolicy
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
from rpcd.server.jsoncalls import answer_payload
from rpcd.wire.jsonrpc import parse_request
from rpcd.core.schema import registry_document

if TYPE_CHECKING:
    from rpcd.server.metrics import Metrics
    from rpcd.server.factory import RPCServer
    from rpcd.core.service import ServiceRegistry

log = Logger()

RPC_PATH = "/rpc"
GO_RPC_PATH = "/_goRPC_"
DEBUG_PATH = "/debug/rpc"
OPENRPC_PATH = "/openrpc.json"
_OBSERVE_PATHS = frozenset({METRICS_PATH, DEBUG_JSON_PATH})
#: Probes: answered for any Host (see L{HTTPServerProtocol._probe}).
PROBE_PATHS = frozenset({"/healthz", "/readyz"})

#: The media types a JSON-RPC 2.0 POST may carry.
JSON_TYPES = frozenset({"application/json", "application/json-rpc", "application/jsonrequest"})

_NOT_FOUND_BODY = b"404 page not found\n"
_TEXT = ("Content-Type", "text/plain; charset=utf-8")
_CHALLENGE = ("WWW-Authenticate", 'Basic realm="rpcd", charset="UTF-8"')

# Bytes handed to the parser at a time: what it has parsed but not started
# (while the pipeline is full) is at most this much input.
_FEED_BYTES = 16384


def http_config(server: RPCServer) -> HTTPConfig:
    """
    @param server: the shared server state.
    @return: its C{[http]} settings (C{server.http}, set by
        L{rpcd.daemon.make_server}), or the defaults.
    """
    config = getattr(server, "http", None)
    return config if isinstance(config, HTTPConfig) else HTTPConfig()


class _Slot:
    """One response, in request order; C{data} is None until it is ready."""

    __slots__ = ("data", "close")

    def __init__(self, data: bytes | None = None, close: bool = False) -> None:
        self.data = data
        self.close = close


@implementer(IPushProducer)
class _WriteWatch:
    """
    The producer an HTTP connection registers with its transport: the
    transport pauses it while more than C{limits.write_buffer_bytes} wait
    to be sent, and resumes it once they have drained.
    """

    def __init__(self, protocol: HTTPServerProtocol) -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:
        self.protocol.write_blocked(True)

    def resumeProducing(self) -> None:
        self.protocol.write_blocked(False)

    def stopProducing(self) -> None:
        pass


class HTTPServerProtocol(Protocol):
    """
    Serves one HTTP connection.

    @ivar session: the connection's session (peer, TLS identity); calls
        never run in it: each request gets a fresh copy.
    @ivar tunnel: after C{CONNECT /_goRPC_}, the gob protocol that owns the
        connection; bytes go to it from then on.
    @ivar write_full: whether more than C{limits.write_buffer_bytes} wait
        to be sent (no request is started then).
    """

    transport: ITCPTransport

    protocol_name = "http"
    has_preamble = True
    draining = False  # set by the sniffer's drain: every answer says Connection: close

    def __init__(self, server: RPCServer) -> None:
        """
        @param server: what every connection shares (registry, limits, clock).
        """
        self.server = server
        config = http_config(server)
        self.config = config
        self.policy = OriginPolicy(config.allowed_hosts, config.allowed_origins)
        self.parser = HTTPRequestParser(max_body_size=server.limits.max_frame_bytes)
        self.tunnel: Protocol | None = None
        self.write_full = False
        self._calls: set[Dispatcher] = set()  # per-request dispatchers with calls running
        self._logins: set[Deferred[None]] = set()  # Authorization checks running
        self._queue: deque[_Slot] = deque()
        self._held = bytearray()  # received, not yet given to the parser
        self._connect: HTTPRequest | None = None  # a CONNECT waiting for earlier answers
        self._connect_buffer = bytearray()
        self._closing = False
        self._lost = False
        self._read_closed = False
        self._failed = False  # a parse error was answered: nothing more is read
        self._pumping = False
        self._reading = True
        self._local_host: str | None = None
        self._check_hosts = True
        self._host_ok: str | None = None  # the last Host value found allowed
        self._head_timed = True  # the sniffer's deadline runs for the first request
        self._turn: Waiter | None = None  # its place in the daemon's turns (rpcd.server.fairness)

    def connectionMade(self) -> None:
        self.session = self.server.new_session(self.transport, self.protocol_name)
        if getattr(self.server, "turns", None) is not None:
            self._turn = Waiter(self._turn_came)
        local = self.transport.getHost()
        if isinstance(local, (IPv4Address, IPv6Address)):
            self._local_host = local.host
        else:
            self._check_hosts = False  # a Unix socket: no web page can reach it
        try:
            cast(IConsumer, self.transport).registerProducer(_WriteWatch(self), True)
        except RuntimeError:
            pass  # someone else watches the write buffer
        else:
            set_write_cap(self.transport, self.server.limits.write_buffer_bytes)

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.dataReceived(data)
            return
        if self._connect is not None:
            self._buffer_for_tunnel(data)
            return
        if self._closing or self.parser.finished:
            return
        self._held += data
        limit = self.server.limits.max_frame_bytes + 65536
        if len(self._held) > limit:
            # The transport kept delivering although reading was paused.
            log.info("closing {peer}: more than {limit} bytes of pipelined requests sent "
                     "while earlier ones wait for their answers", peer=self.session.peer,
                     limit=limit)
            self._abandon()
            return
        if self._pump() is None and not self._head_timed and not self.write_full and \
                len(self._queue) < self.config.max_pipelined and data.strip(b"\r\n"):
            self._head_timed = True  # a new request began: it must end in time
            self.server.expect_preamble(self)

    def _pump(self) -> bool | None:
        """
        Start the requests that may start: those parsed, then those in the
        held bytes, fed to the parser a slice at a time, until the pipeline
        is full or the write buffer is; then write what is ready.

        @return: whether a request completed (None if none did).
        """
        if self._pumping:
            return None  # the loop running further up the stack sees the change
        self._pumping = True
        try:
            return self._pump_once()
        finally:
            self._pumping = False
            if self._turn is not None:
                self.server.turns.done(self._turn)

    def _pump_once(self) -> bool | None:
        parser = self.parser
        completed = None
        try:
            while not (self._closing or self._lost or self._failed or self._connect is not None):
                if self._queue and self._queue[0].data is not None:
                    # Answers out as soon as they are ready, so that a full
                    # write buffer stops the next request.
                    self._flush()
                    continue
                if len(self._queue) >= self.config.max_pipelined:
                    self._flush()
                    if len(self._queue) >= self.config.max_pipelined:
                        break
                    continue
                if self.write_full or self._answers_waiting() > self.server.limits.write_buffer_bytes:
                    break
                turn = self._turn
                if turn is not None:
                    if turn.in_queue:
                        break  # _turn_came goes on
                    turn.backlog = len(self._held)
                    if not self.server.turns.may_run(turn):
                        break
                request = parser.next_request()
                if request is None:
                    if not self._held or parser.finished:
                        break
                    chunk = bytes(self._held[:_FEED_BYTES])
                    del self._held[:_FEED_BYTES]
                    parser.feed(chunk)
                    continue
                completed = True
                self._handle(request)
        except HTTPParseError as e:
            log.info("closing {peer}: HTTP {status}: {detail}", peer=self.session.peer,
                     status=e.status, detail=e.detail)
            self._failed = True
            self._queue.append(_Slot(error_response(e), close=True))
        if parser.finished:
            self._held.clear()
        if completed:
            self._head_timed = False
            self.server.preamble_done(self)
        if not self._queue and not self._closing and parser.take_continue():
            self.transport.write(CONTINUE_RESPONSE)
        self._flush()
        self._set_reading()
        return completed

    def _answers_waiting(self) -> int:
        """
        @return: the bytes of answers ready but not yet written, because an
            earlier request is still running (at most C{max_pipelined}
            slots).
        """
        return sum(len(slot.data) for slot in self._queue if slot.data is not None)

    def _set_reading(self) -> None:
        """
        Read from the socket only while requests may be started.
        """
        if self._lost or self.tunnel is not None:
            return
        reading = not self.write_full and len(self._queue) < self.config.max_pipelined \
            and self._answers_waiting() <= self.server.limits.write_buffer_bytes \
            and not (self._turn is not None and self._turn.in_queue)
        if reading != self._reading:
            self._reading = reading
            reader = cast(IPushProducer, self.transport)
            if reading:
                reader.resumeProducing()
            else:
                reader.pauseProducing()

    def _turn_came(self) -> None:
        """
        This connection's turn to start requests (L{rpcd.server.fairness}).
        """
        if self.tunnel is None and not self._lost:
            self._pump()

    def write_blocked(self, full: bool) -> None:
        """
        The transport's write buffer went over the cap (C{full}) or drained.

        @param full: whether it is over C{limits.write_buffer_bytes} now.
        """
        if full == self.write_full:
            return
        self.write_full = full
        if full:
            self._set_reading()
        elif self.tunnel is None:
            self._pump()

    def read_connection_lost(self) -> None:
        """
        The peer will send nothing more (it shut down its sending side; the
        sniffer relays this): answer the requests read before, then close.
        """
        self._read_closed = True
        if self.tunnel is not None:
            tunnel_half_close = getattr(self.tunnel, "read_connection_lost", None)
            if tunnel_half_close is not None:
                tunnel_half_close()
            else:
                self.transport.loseConnection()
            return
        self._pump()

    def _handle(self, request: HTTPRequest) -> None:
        path = request.target.partition("?")[0]
        if path in PROBE_PATHS:
            self._probe(request, path)
            return
        if not self._allowed(request):
            return
        if path == RPC_PATH:
            self._rpc(request)
        elif path == GO_RPC_PATH:
            if request.method == "CONNECT":
                self._connect = request
                self._buffer_for_tunnel(bytes(self._held))
                self._held.clear()
            else:
                self._answer(go_must_connect_response(request, self._date()),
                             close=not request.keep_alive)
        elif path in _OBSERVE_PATHS:
            self._observe(request, path)
        elif path == OPENRPC_PATH:
            self._openrpc(request)
        elif path == DEBUG_PATH and not self.config.debug_page:
            self._respond(request, 404, [_TEXT], _NOT_FOUND_BODY)
        elif path == DEBUG_PATH and request.method in ("GET", "HEAD"):
            session = self._request_session()
            page = debug_page(self.server.registry, session, self.server.metrics)
            session.close()
            self._respond(request, 200, [("Content-Type", "text/html; charset=utf-8")],
                          page.encode("utf-8"))
        elif path == DEBUG_PATH:
            self._respond(request, 405, [("Allow", "GET, HEAD"), _TEXT],
                          b"405 method not allowed: use GET\n")
        else:
            self._respond(request, 404, [_TEXT], _NOT_FOUND_BODY)

    def _observe(self, request: HTTPRequest, path: str) -> None:
        """
        Answer C{GET /metrics} (with C{[http] metrics}) or
        C{GET /debug/rpc.json} (with C{[http] debug_page}), or 404.
        """
        metrics = self.server.metrics
        if (path == METRICS_PATH and metrics is None) or \
                (path == DEBUG_JSON_PATH and not self.config.debug_page):
            self._respond(request, 404, [_TEXT], _NOT_FOUND_BODY)
        elif request.method not in ("GET", "HEAD"):
            self._respond(request, 405, [("Allow", "GET, HEAD"), _TEXT],
                          b"405 method not allowed: use GET\n")
        elif path == METRICS_PATH:
            self._respond(request, 200, [("Content-Type", METRICS_CONTENT_TYPE)], metrics.exposition())
        else:
            session = self._request_session()
            body = statuspage.status_json(self.server.registry, session, metrics)
            session.close()
            self._respond(request, 200, [("Content-Type", "application/json"),
                                         ("Cache-Control", "no-store")], body)

    def _openrpc(self, request: HTTPRequest) -> None:
        """
        Answer C{GET /openrpc.json}: the document of what this request's
        session (no login) may call.
        """
        if request.method not in ("GET", "HEAD"):
            self._respond(request, 405, [("Allow", "GET, HEAD"), _TEXT],
                          b"405 method not allowed: use GET\n")
            return
        session = self._request_session()
        try:
            body = json.dumps(registry_document(self.server.registry, session)).encode("utf-8")
        finally:
            session.close()
        self._respond(request, 200, [("Content-Type", "application/json"),
                                     ("Cache-Control", "no-store")], body)

    def _probe(self, request: HTTPRequest, path: str) -> None:
        """
        Answer a liveness (C{/healthz}: 200 while the daemon runs its
        reactor) or readiness (C{/readyz}: 200 only between listening and
        draining, else 503) probe.

        Probes are answered whatever the C{Host} header says: Kubernetes
        sends the pod's IP, which is not among C{[http] allowed_hosts}, and
        the answer tells a web page nothing it could misuse (no service
        runs, no data is returned).
        """
        if request.method not in ("GET", "HEAD"):
            self._respond(request, 405, [("Allow", "GET, HEAD"), _TEXT],
                          b"405 method not allowed: use GET\n")
            return
        from rpcd.core.health import health_of
        health = health_of(self.server.registry)
        headers = [_TEXT, ("Cache-Control", "no-store")]
        if path == "/healthz":
            self._respond(request, 200, headers, b"ok\n")
        elif health.serving(""):
            self._respond(request, 200, headers, b"ready\n")
        else:
            why = b"draining\n" if health.draining else b"not ready: starting\n"
            self._respond(request, 503, headers, b"503 " + why)

    def _allowed(self, request: HTTPRequest) -> bool:
        """
        Check the request's C{Host} and C{Origin}; answer 421 or 403 if
        they are refused.

        @return: whether the request may go on.
        """
        host = request.headers.get("host")
        if host is not None and self._check_hosts and host != self._host_ok:
            if self.policy.host_allowed(host, self._local_host):
                self._host_ok = host  # clients send the same Host each time
            else:
                log.info("refused a request from {peer} for Host {host!r} (not in [http] "
                         "allowed_hosts)", peer=self.session.peer, host=host[:200])
                self._respond(request, 421, [_TEXT], (
                    f"421 misdirected request: Host {_quote(host)} is not a name of this "
                    f"daemon; to serve it, add it to [http] allowed_hosts in rpcd's config\n"
                ).encode("utf-8"))
                return False
        origin = request.headers.get("origin")
        if origin is None or request.method in ("GET", "HEAD"):
            return True
        allowed, cross = self.policy.origin_allowed(origin, host)
        if not allowed:
            log.info("refused a {method} from {peer} with Origin {origin!r} (not in [http] "
                     "allowed_origins)", method=request.method, peer=self.session.peer,
                     origin=origin[:200])
            self._respond(request, 403, [_TEXT], (
                f"403 forbidden: requests from Origin {_quote(origin)} are refused; "
                f"to allow them, add it to [http] allowed_origins in rpcd's config\n"
            ).encode("utf-8"))
            return False
        if cross and request.method == "OPTIONS" and request.target.partition("?")[0] == RPC_PATH:
            self._respond(request, 204, [*_cors(origin), ("Access-Control-Allow-Methods", "POST"),
                                         ("Access-Control-Allow-Headers", "Content-Type"),
                                         ("Access-Control-Max-Age", "600")], b"")
            return False
        return True

    def _request_session(self) -> Session:
        """
        @return: a fresh session for one request: the connection's peer and
            TLS identity, no login.
        """
        base = self.session
        return Session(self.server.registry, base.peer, base.peer_host,
                       self.server.authenticator, base.tls_identity, base.protocol)

    def _rpc(self, request: HTTPRequest) -> None:
        if request.method != "POST":
            self._respond(request, 405, [("Allow", "POST"), _TEXT],
                          b"405 method not allowed: POST a JSON-RPC 2.0 request\n")
            return
        media = (request.headers.get("content-type") or "").partition(";")[0].strip().lower()
        if media not in JSON_TYPES:
            self._respond(request, 415, [_TEXT],
                          b"415 unsupported media type: POST /rpc needs "
                          b"Content-Type: application/json\n")
            return
        limits = self.server.limits
        payload = parse_request(request.body, limits.max_frame_bytes)
        dispatcher = Dispatcher(self._request_session(), self.server.clock,
                                limits.max_calls_per_connection)
        trace_headers = {name: value for name in ("traceparent", "tracestate")
                         if (value := request.headers.get(name)) is not None}
        if trace_headers:
            dispatcher.session.data[TRACE_HEADERS] = trace_headers  # for rpcd.middleware.tracing
        authorization = request.headers.get("authorization")
        if authorization is None:
            self._run(request, payload, dispatcher, None)
            return
        credentials = basic_credentials(authorization)
        if credentials is None:
            dispatcher.session.close()
            self._respond(request, 401, [_TEXT, _CHALLENGE],
                          b"401 unauthorized: send Authorization: Basic base64(user:password)\n")
            return
        slot = _Slot()
        self._queue.append(slot)
        self._calls.add(dispatcher)
        login = Deferred.fromCoroutine(dispatcher.session.login(*credentials))
        self._logins.add(login)
        login.addBoth(self._logged_in, login, slot, request, payload, dispatcher)

    def _logged_in(self, outcome: object, login: Deferred[None], slot: _Slot,
                   request: HTTPRequest, payload: Any, dispatcher: Dispatcher) -> None:
        """
        The request's C{Authorization} was checked: run its calls, or
        answer 401 (429 when too many logins failed).
        """
        self._logins.discard(login)
        if not isinstance(outcome, Failure):
            if not self._lost:
                self._run(request, payload, dispatcher, slot)
            return
        self._calls.discard(dispatcher)
        dispatcher.session.close()
        error = outcome.value
        if isinstance(error, ResourceExhausted):
            status, headers = 429, [_TEXT]
        elif isinstance(error, RPCError):
            status, headers = 401, [_TEXT, _CHALLENGE]
        elif isinstance(error, CancelledError):
            return  # the connection was lost
        else:
            log.failure("checking the Authorization of {peer} failed", outcome,
                        peer=self.session.peer)
            status, headers, error = 500, [_TEXT], RPCError("internal error")
        message = getattr(error, "message", str(error))
        self._fill(slot, request, self._format(request, status, headers,
                                               f"{status} {message}\n".encode("utf-8")))

    def _run(self, request: HTTPRequest, payload: Any, dispatcher: Dispatcher,
             slot: _Slot | None) -> None:
        """
        Run a request's calls in its session and queue its response (in
        C{slot} if it has one already).
        """
        reply = answer_payload(dispatcher, payload)
        if isinstance(reply, Deferred):
            if slot is None:
                slot = _Slot()
                self._queue.append(slot)
            self._calls.add(dispatcher)
            reply.addCallback(self._rpc_later, slot, request, dispatcher)
            return
        self._calls.discard(dispatcher)
        dispatcher.session.close()
        data = self._rpc_response(request, reply, dispatcher.session.data.get(RETRY_AFTER))
        if slot is None:
            self._queue.append(_Slot(data, not request.keep_alive))
        else:
            self._fill(slot, request, data)

    def _rpc_later(self, reply: bytes | None, slot: _Slot, request: HTTPRequest,
                   dispatcher: Dispatcher) -> None:
        self._calls.discard(dispatcher)
        dispatcher.session.close()
        self._fill(slot, request, self._rpc_response(request, reply,
                                                     dispatcher.session.data.get(RETRY_AFTER)))

    def _fill(self, slot: _Slot, request: HTTPRequest, data: bytes) -> None:
        """
        A response that was waiting is ready: write what can be written.
        """
        slot.data = data
        slot.close = not request.keep_alive
        self._pump()

    def _rpc_response(self, request: HTTPRequest, reply: bytes | None,
                      retry_after: float | None = None) -> bytes:
        headers = []
        origin = request.headers.get("origin")
        if origin is not None and self.policy.origin_allowed(origin, request.headers.get("host"))[1]:
            headers = _cors(origin)
        if reply is None:
            return self._format(request, 204, headers, b"")
        if retry_after is not None and reply[:1] == b"{":
            # A single call refused by the rate limit (rpcd.middleware.ratelimit): 429
            # with the hint, the JSON-RPC error in the body.
            return self._format(request, 429, [("Content-Type", "application/json"),
                                               ("Retry-After", retry_after_header(retry_after)),
                                               *headers], reply)
        return self._format(request, 200, [("Content-Type", "application/json"), *headers], reply)

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
        if request.version == "HTTP/1.1" and (not request.keep_alive or self.draining):
            fields.append(("Connection", "close"))
        elif request.version == "HTTP/1.0" and request.keep_alive:
            fields.append(("Connection", "keep-alive"))
        return format_response(status, None, fields, body, request.version)

    def _date(self) -> str:
        return _date_of(int(self.server.clock.seconds()))

    def _flush(self) -> None:
        """
        Write the responses that are ready, in request order; close after
        one that ends the connection, or once everything read before a
        half-close is answered; open a waiting C{CONNECT} tunnel once
        everything before it is answered.
        """
        if self._lost or self._closing:
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
        if not close and self._read_closed and not queue and self._connect is None and \
                (self.parser.finished or not (self._held or self.parser.has_requests)):
            close = True
        if close:
            self._closing = True
            self._connect = None
            self._held.clear()
            self.transport.loseConnection()
        elif not queue and self._connect is not None:
            self._open_tunnel()

    def _abandon(self) -> None:
        self._closing = True
        self._connect = None
        self._held.clear()
        self._connect_buffer = bytearray()
        self.transport.loseConnection()

    def _buffer_for_tunnel(self, data: bytes) -> None:
        self._connect_buffer += data
        limit = self.server.limits.max_frame_bytes + 65536
        if len(self._connect_buffer) > limit:
            log.info("closing {peer}: more than {limit} bytes sent after CONNECT before "
                     "the earlier requests were answered", peer=self.session.peer, limit=limit)
            self._abandon()

    def _open_tunnel(self) -> None:
        request, self._connect = self._connect, None
        assert request is not None
        leftover = request.leftover + bytes(self._connect_buffer)
        self._connect_buffer = bytearray()
        make = _gob_protocol()
        if make is None:
            self._closing = True
            self.transport.write(format_response(
                501, None, [_TEXT, ("Connection", "close")],
                b"Go's net/rpc (gob) is not available in this build\n", "HTTP/1.0"))
            self.transport.loseConnection()
            return
        self.transport.write(GO_CONNECTED_RESPONSE)
        consumer = cast(IConsumer, self.transport)
        consumer.unregisterProducer()
        if not self._reading:
            self._reading = True
            cast(IPushProducer, self.transport).resumeProducing()
        limit = self.server.limits.write_buffer_bytes
        throttle = ReadThrottle(self.transport, self.session.peer, limit)
        throttle.turns = getattr(self.server, "turns", None)
        guard = self.server.input_guard(self._close_abusive)
        self.tunnel = take_over(make, self.server, self.transport, leftover,
                                throttle=throttle, input_guard=guard)
        self.session.close()  # the tunnel has its own: count the connection once
        if not self._lost:
            try:  # the tunnel did not register a producer of its own
                consumer.registerProducer(throttle, True)
            except RuntimeError:
                pass
            else:
                set_write_cap(self.transport, limit)
        if self._read_closed:
            self.read_connection_lost()

    def _close_abusive(self, why: str) -> None:
        """
        The gob tunnel's input guard found a message too slow or over the
        daemon's input budget: close the connection, saying why.

        @param why: the reason, naming the limit.
        """
        if not self._lost:
            log.info("closing {peer}: {why}", peer=self.session.peer, why=why)
            self.transport.abortConnection()

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
        return bool(self._queue) or bool(self._calls)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        if self._turn is not None:
            self._turn.forget()
        self._queue.clear()
        self._held.clear()
        logins, self._logins = self._logins, set()
        for login in logins:
            login.cancel()
        calls, self._calls = self._calls, set()
        for dispatcher in calls:
            dispatcher.close()
        self.session.close()
        if self.tunnel is not None:
            self.tunnel.connectionLost(reason)


def _quote(value: str) -> str:
    """A header value for a message: quoted, escaped, at most 200 characters."""
    return ascii(value[:200])


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """
    Read HTTP Basic credentials (RFC 7617).

    @param authorization: an C{Authorization} header value.
    @return: C{(user, password)}, or None if the value is not
        C{Basic base64(user:password)} with UTF-8 text.
    """
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, colon, password = text.partition(":")
    return (user, password) if colon else None


def _cors(origin: str) -> list[tuple[str, str]]:
    """The headers that let a browser read an answer to an allowed cross origin."""
    return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]


_last_date: tuple[int, str] = (-1, "")


def _date_of(second: int) -> str:
    """The C{Date} header text for a second, formatted once per second."""
    global _last_date
    if _last_date[0] != second:
        _last_date = (second, http_date(second))
    return _last_date[1]


def _gob_protocol() -> Callable[[RPCServer], Protocol] | None:
    try:
        return protocols.protocol_class(sniff.GOB)
    except ValueError:
        return None


def take_over(make: Callable[[RPCServer], Protocol], server: RPCServer, transport: Any,
              leftover: bytes, **limits: Any) -> Protocol:
    """
    Hand a connection to the gob server protocol after C{CONNECT}.

    If the protocol's class has a C{take_over(server, transport, leftover,
    **limits)} class method, it builds and starts the protocol; otherwise the protocol
    is built as C{make(server)}, connected to the transport, and fed the
    leftover bytes, as any wire protocol is after sniffing.

    @param make: the gob server protocol's class (from C{SERVER_PROTOCOLS}).
    @param server: the shared server state.
    @param transport: the connection.
    @param leftover: the bytes that followed the C{CONNECT} head.
    @param limits: the connection's C{throttle} and C{input_guard}, for a
        C{take_over} that takes them.
    @return: the protocol that owns the connection now.
    """
    hook = getattr(make, "take_over", None)
    if hook is not None:
        return hook(server, transport, leftover, **limits)
    protocol = make(server)
    protocol.makeConnection(transport)
    if leftover:
        protocol.dataReceived(leftover)
    return protocol


def debug_page(registry: ServiceRegistry, session: Session | None = None,
               metrics: Metrics | None = None) -> str:
    """
    The C{/debug/rpc} page (L{rpcd.server.statuspage}): for each service a table
    of its methods with their signatures, first doc lines and calls since
    the daemon started (with figures, errors, calls running and latency
    percentiles too), refreshed live.

    @param registry: the daemon's services.
    @param session: list only the services this session may call (see
        L{rpcd.core.service.ServiceRegistry.may_call}); None lists them all.
    @param metrics: the daemon's figures, or None.
    @return: the HTML text.
    """
    return statuspage.page(statuspage.status(registry, session, metrics))
