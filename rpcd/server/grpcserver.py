"""
The server side of gRPC: HTTP/2 (from C{h2}, sans-IO, its HPACK behind the
caches of L{rpcd.wire.hpackfast}) on a connection the sniffer handed over
after the HTTP/2 client preface (or ALPN C{h2} on TLS).

Each HTTP/2 stream is one call, routed by its C{:path}
(C{/package.Service/Method}, see L{rpcd.core.protos.routes}) to an rpcd method
and run by the connection's L{rpcd.core.dispatch.Dispatcher} like a native
stream: it counts against C{max_calls_per_connection}; RST_STREAM, the
C{grpc-timeout} deadline and the end of the connection cancel it.

Memory stays bounded both ways:
  - in: a message's length is checked against C{limits.max_frame_bytes}
    before it is buffered; the HTTP/2 window of a streaming call is opened
    again only for messages its handler has taken (one may wait queued), so
    a slow handler stops the caller; and data is acknowledged only while
    the connection holds at most twice C{max_frame_bytes} not yet taken by
    handlers (partial and queued messages), so the connection's receive
    window bounds the rest;
  - out: a handler's messages wait for the caller's HTTP/2 window, and the
    handler's stream is not iterated further until they have gone.

Abuse is answered with GOAWAY: more than L{MAX_RESETS} RST_STREAMs from the
peer within L{RESET_WINDOW} seconds (the HTTP/2 Rapid Reset attack), or
pings more often than every C{limits.keepalive_min_ping_interval} seconds
with nothing sent in between, more than C{limits.keepalive_max_ping_strikes}
times in a row (C{too_many_pings}, grpc-go's enforcement), both with
ENHANCE_YOUR_CALM.

Keepalive: the sniffer's L{rpcd.keepalive.KeepAlive} sends an HTTP/2 PING
(L{GrpcServerProtocol.send_ping}) on a connection quiet for
C{limits.keepalive_interval} while calls run, and closes it when nothing
(the PING's ACK among any bytes) comes back within C{keepalive_timeout}.  Streams beyond C{SETTINGS_MAX_CONCURRENT_STREAMS}
(C{min(max_calls_per_connection, 1000)}) are a protocol error (h2's).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Sequence

from google.protobuf.message import Message
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.server.backpressure import take_over_producer
from rpcd.core.dispatch import Dispatcher
from rpcd.errors import Code
from rpcd.core.protos import GrpcMethod, routes
from rpcd.server.grpccall import STREAMING_IN, GrpcCall, GrpcMessages
from rpcd.wire.grpcmsg import ACCEPT_ENCODING, MessageError, MessageReader
from rpcd.wire.grpcrequest import RequestCache
from rpcd.wire.h2compat import install as install_early_frame_check
from rpcd.wire.hpackfast import install as install_hpack_caches

if TYPE_CHECKING:
    from rpcd.server.factory import RPCServer
    from rpcd.core.service import BoundMethod

log = Logger()

MAX_RESETS = 200
"""RST_STREAMs a peer may send within L{RESET_WINDOW} seconds."""
RESET_WINDOW = 10.0

MIN_PING_INTERVAL = 10.0
"""The default seconds between a peer's pings, unless rpcd sent something in
between (C{limits.keepalive_min_ping_interval} applies)."""
MAX_PING_STRIKES = 2
"""The default pings allowed too soon before the connection is closed
(C{limits.keepalive_max_ping_strikes} applies)."""

MAX_HEADER_LIST = 16384
"""SETTINGS_MAX_HEADER_LIST_SIZE: the request headers' size, decoded."""

CONNECTION_WINDOW = 1 << 20
"""The connection-level receive window opened at once (streams keep 64 KiB)."""



@implementer(IPushProducer)
class WriteGate:
    """
    The connection's push producer: while the transport's write buffer is
    full, handlers' streams wait (and reading stops, through the read
    throttle this takes the producer slot over from, as
    L{rpcd.server.streams.ServerStreams} does).

    @ivar paused: whether the transport asked us to stop writing.
    """

    def __init__(self, protocol: GrpcServerProtocol) -> None:
        self.protocol = protocol
        self.paused = False
        self._previous: Any = None
        previous = take_over_producer(protocol.transport, self)
        if previous is not None:
            self._previous = previous
            self.paused = bool(getattr(previous, "paused", False))

    def pauseProducing(self) -> None:
        self.paused = True
        if self._previous is not None:
            self._previous.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self._previous is not None:
            self._previous.resumeProducing()
        for call in list(self.protocol.calls.values()):
            call.wake()

    def stopProducing(self) -> None:
        if self._previous is not None:
            self._previous.stopProducing()


class GrpcDispatcher(Dispatcher):
    """
    The connection's dispatcher; a method's result stays a message (it is
    serialized by L{GrpcCall}, not turned into plain data).
    """

    def _convert(self, name: str, method: BoundMethod, result: Any) -> Any:
        return result

    def _passthrough(self, method: BoundMethod) -> frozenset[type]:
        # A method declared to return its output message returns it as it is.
        hint = method.spec.result_hint
        plain = super()._passthrough(method)
        if isinstance(hint, type) and issubclass(hint, Message):
            plain = plain | {hint}
        return plain


class GrpcServerProtocol(Protocol):
    """
    Serves gRPC on one HTTP/2 connection.

    @ivar calls: HTTP/2 stream id to L{GrpcCall}, for calls not yet ended.
    @ivar dispatcher: runs the calls.
    @ivar unary_calls: C{Service.Method} to the dispatcher's hot-path call
        (see L{Dispatcher.simple_calls}) and whether the method takes plain
        data, for unary methods called once on this connection.
    """

    transport: ITCPTransport

    protocol_name = "grpc"

    def __init__(self, server: RPCServer) -> None:
        self.server = server
        self.clock = server.clock
        limits = server.limits
        self.max_message = limits.max_frame_bytes
        self.max_streams = max(1, min(limits.max_calls_per_connection, 1000))
        self.calls: dict[int, GrpcCall] = {}
        self.dispatcher: GrpcDispatcher | None = None
        self.routes: dict[str, GrpcMethod] = {}
        self.unary_calls: dict[str, tuple[Callable[[Any, Any, float | None], Any], bool]] = {}
        self.requests = RequestCache()
        self.gate: WriteGate | None = None
        self.held_bytes = 0
        self.held_budget = 2 * self.max_message
        self._withheld: dict[int, GrpcCall] = {}
        self._resets: deque[float] = deque(maxlen=MAX_RESETS + 1)
        self._last_ping: float | None = None
        self._ping_strikes = 0
        self._in_read = False
        self._shutdown_trigger: Any = None
        self._lost = False
        self._closing = False  # no new calls: draining, or the peer said GOAWAY
        self._aborted = False  # GOAWAY sent over an error: nothing more is read
        # h2's per-header validation (RFC 9113 8.2 character, pseudo-header
        # and connection-header checks) is about a tenth of a unary call's
        # CPU (benchmarks/micro_grpc.py): rpcd reads only :method, :path,
        # content-type and grpc-* (checked in _request) and turns the rest
        # into metadata as bytes, so a malformed header cannot confuse it.
        # rpcd's own replies are built well-formed (metadata checked by
        # encode_metadata), so h2 skips checking them too.
        self.conn = H2Connection(H2Configuration(
            client_side=False, header_encoding=None,
            validate_inbound_headers=False, normalize_inbound_headers=False,
            validate_outbound_headers=False, normalize_outbound_headers=False))
        install_hpack_caches(self.conn, MAX_HEADER_LIST)
        install_early_frame_check(self.conn)

    def connectionMade(self) -> None:
        self.session = self.server.new_session(self.transport, self.protocol_name)
        self.dispatcher = GrpcDispatcher(self.session, self.clock,
                                         self.server.limits.max_calls_per_connection)
        self.routes = routes(self.server.registry)
        add_trigger = getattr(self.clock, "addSystemEventTrigger", None)
        if add_trigger is not None:  # the reactor: a daemon shutting down says GOAWAY
            self._shutdown_trigger = add_trigger("before", "shutdown", self.shutting_down)
        conn = self.conn
        conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            SettingCodes.ENABLE_PUSH: 0,
        })
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW)
        self.flush()

    # Reading.

    def dataReceived(self, data: bytes) -> None:
        if self._lost or self._aborted:
            return
        self._in_read = True
        try:
            try:
                events = self.conn.receive_data(data)
            except H2ProtocolError as e:
                log.info("closing {peer}: HTTP/2 protocol error: {error}",
                         peer=self.session.peer, error=e)
                self._in_read = False
                self.go_away(getattr(e, "error_code", ErrorCodes.PROTOCOL_ERROR) or
                             ErrorCodes.PROTOCOL_ERROR)
                return
            handlers = self._handlers
            for event in events:
                if self._aborted:
                    break
                handler = handlers.get(type(event))
                if handler is not None:
                    handler(self, event)
        finally:
            self._in_read = False
        self.flush()

    def _on_data(self, event: DataReceived) -> None:
        ended = event.stream_ended is not None
        self._data(event.stream_id, event.data, event.flow_controlled_length, ended)
        if ended:
            self._ended(event.stream_id)

    def _on_request(self, event: RequestReceived) -> None:
        self._request(event.stream_id, event.headers)
        if event.stream_ended is not None:
            self._ended(event.stream_id)

    def _on_ended(self, event: StreamEnded) -> None:
        self._ended(event.stream_id)

    def _on_window(self, event: WindowUpdated) -> None:
        self._window_opened(event.stream_id)

    def _on_reset(self, event: StreamReset) -> None:
        self._reset(event.stream_id)

    def _on_ping(self, event: PingReceived) -> None:
        self._ping()

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        self._closing = True
        self._close_when_idle()

    _handlers: dict[type, Callable[[GrpcServerProtocol, Any], None]] = {
        DataReceived: _on_data, RequestReceived: _on_request, StreamEnded: _on_ended,
        WindowUpdated: _on_window, StreamReset: _on_reset, PingReceived: _on_ping,
        ConnectionTerminated: _on_terminated,
    }
    """What each h2 event calls (others are h2's own business)."""

    def _request(self, stream_id: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        if self._closing:
            self.on_stream(self.conn.reset_stream, stream_id, ErrorCodes.REFUSED_STREAM)
            return
        request = self.requests.read(headers)
        if request.http_error is not None:
            self._http_error(stream_id, *request.http_error)
            return
        path = request.path
        route = self.routes.get(path)
        call = GrpcCall(self, stream_id, route, path)
        self.calls[stream_id] = call
        if self.gate is None:
            self.gate = WriteGate(self)
        if route is None:
            call.finish(Code.UNIMPLEMENTED, self._unknown(path))
            return
        if not request.encoding_ok:
            call.finish(Code.UNIMPLEMENTED, f"grpc-encoding {request.encoding} is not supported "
                        f"(rpcd accepts {ACCEPT_ENCODING})")
            return
        call.reader = MessageReader(self.max_message, request.encoding)
        call.compress = request.compress
        if request.error is not None:
            call.finish(Code.INVALID_ARGUMENT, request.error)
            return
        call.timeout = request.timeout
        call.metadata = request.metadata  # the cache's: copied if handed out
        if route.kind in STREAMING_IN:
            call.inbox = GrpcMessages(call)
            call.start()

    def _unknown(self, path: str) -> str:
        service, _, method = path.lstrip("/").partition("/")
        if not method:
            return f"malformed method name {path!r} (want /package.Service/Method)"
        if any(p.startswith(f"/{service}/") for p in self.routes):
            return f"unknown method {method} for service {service}"
        return f"unknown service {service}"

    def _http_error(self, stream_id: int, status: int, why: str) -> None:
        if self.on_stream(self.conn.send_headers, stream_id, [
                (":status", str(status)), ("content-type", "text/plain; charset=utf-8")]):
            self.on_stream(self.conn.send_data, stream_id, why.encode() + b"\n", end_stream=True)

    def on_stream(self, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """
        Do an h2 operation on a stream that may have closed under us (the
        peer reset it, or h2 closed it over a stream error).

        @return: whether it was done.
        """
        try:
            operation(*args, **kwargs)
        except H2ProtocolError:
            return False
        return True

    def _data(self, stream_id: int, data: bytes, flow_length: int, ended: bool) -> None:
        call = self.calls.get(stream_id)
        if call is not None and ended:
            # Known before the handler runs, so that a unary reply sent
            # while this frame is read sends no RST_STREAM after it.
            call.half_closed = True
        if call is None or call.reader is None or call.done:
            self.on_stream(self.conn.acknowledge_received_data, flow_length, stream_id)
            return
        try:
            payload = call.reader.whole(data)
            if payload is not None:
                call.message_received(payload, len(payload))
            else:
                for payload in call.reader.feed(data):
                    call.message_received(payload, len(payload))
                    if call.done:
                        break
        except MessageError as e:
            call.finish(e.code, str(e))
        self.account(call)
        if call.done or self._may_acknowledge(call):
            try:
                self.conn.acknowledge_received_data(flow_length, stream_id)
            except H2ProtocolError:
                pass  # the stream closed under us
        else:
            call.unacknowledged += flow_length
            self._withheld[stream_id] = call

    def _may_acknowledge(self, call: GrpcCall) -> bool:
        """
        Whether the caller may send more on a call: the connection holds at
        most L{held_budget} bytes of request data not yet taken by handlers,
        and a streaming call at most one whole message queued.
        """
        inbox = call.inbox
        return self.held_bytes <= self.held_budget and (inbox is None or inbox.queued() <= 1)

    def account(self, call: GrpcCall) -> None:
        """
        Count what a call holds of the caller's data (a partial message, and
        messages its handler has not taken), and open the windows that were
        held back once the connection is under its budget again.

        @param call: a call whose holdings may have changed.
        """
        held = 0 if call.done or call.reader is None else call.reader.pending
        if call.inbox is not None and not call.done:
            held += call.inbox.queued_bytes
        change = held - call.held
        if not change:
            return
        call.held = held
        self.held_bytes += change
        if change < 0 and self._withheld:
            for waiting in list(self._withheld.values()):
                if waiting.done or self._may_acknowledge(waiting):
                    del self._withheld[waiting.stream_id]
                    n, waiting.unacknowledged = waiting.unacknowledged, 0
                    if n and not self._lost:
                        self.on_stream(self.conn.acknowledge_received_data, n, waiting.stream_id)
            self.flush()

    def _ended(self, stream_id: int) -> None:
        call = self.calls.get(stream_id)
        if call is None or call.done:
            return
        call.half_closed = True
        if call.inbox is not None:
            call.inbox.end()
        elif call.request is None and call.reader is not None:
            call.finish(Code.INTERNAL, "grpc: the request ended without a message "
                        f"({call.route.name if call.route else call.path} takes one)")

    def _reset(self, stream_id: int) -> None:
        now = self.clock.seconds()
        resets = self._resets
        resets.append(now)
        if len(resets) > MAX_RESETS and now - resets[0] < RESET_WINDOW:
            self.go_away(ErrorCodes.ENHANCE_YOUR_CALM, b"too many stream resets",
                         f"more than {MAX_RESETS} RST_STREAM in {RESET_WINDOW:g} s (Rapid Reset)")
            return
        call = self.calls.pop(stream_id, None)
        if call is not None:
            call.cancelled()
            self._withheld.pop(stream_id, None)
            self.account(call)

    def _ping(self) -> None:
        limits = self.server.limits
        min_interval = limits.keepalive_min_ping_interval
        if not min_interval:
            return  # no enforcement configured
        now = self.clock.seconds()
        last, self._last_ping = self._last_ping, now
        if last is not None and now - last < min_interval:
            self._ping_strikes += 1
            if self._ping_strikes > limits.keepalive_max_ping_strikes:
                self.go_away(ErrorCodes.ENHANCE_YOUR_CALM, b"too_many_pings",
                             f"pings more often than every {min_interval:g} s "
                             f"(limits.keepalive_min_ping_interval)")

    def send_ping(self, opaque: int) -> None:
        """
        Send an HTTP/2 PING (L{rpcd.keepalive.KeepAlive}, on a quiet
        connection); the peer's ACK is a read, which proves it alive.

        @param opaque: the PING's 8 bytes of opaque data, as an integer.
        """
        if self._lost or self._aborted:
            return
        try:
            self.conn.ping((opaque & (1 << 64) - 1).to_bytes(8, "big"))
        except H2ProtocolError:
            return  # h2 closed the connection already
        self.flush()

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            call = self.calls.get(stream_id)
            if call is not None:
                call.pump()
            return
        for call in list(self.calls.values()):
            if call.out or call.trailers is not None:
                call.pump()

    # Writing.

    def sent_something(self) -> None:
        """
        Headers or data went out: the peer's next ping is not a strike.
        """
        self._ping_strikes = 0
        self._last_ping = None

    def flush(self) -> None:
        """
        Write what h2 has queued (at the end of a read, or at once outside
        one).
        """
        if self._in_read or self._lost:
            return
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def forget(self, call: GrpcCall) -> None:
        """
        A call sent its trailers.
        """
        if self.calls.get(call.stream_id) is call:
            del self.calls[call.stream_id]
        self._withheld.pop(call.stream_id, None)
        self.account(call)
        if self._closing:
            self._close_when_idle()

    def go_away(self, code: int = ErrorCodes.NO_ERROR, data: bytes | None = None,
                why: str | None = None) -> None:
        """
        Send GOAWAY and close the connection (running handlers are cancelled
        when it is gone).

        @param code: the HTTP/2 error code.
        @param data: GOAWAY's debug data.
        @param why: logged with the peer's address.
        """
        if self._lost:
            return
        if why:
            log.info("closing {peer}: {why}", peer=self.session.peer, why=why)
        self._closing = True
        self._aborted = True
        try:
            self.conn.close_connection(code, data)
        except H2ProtocolError:
            pass  # h2 closed the connection already
        self._in_read = False
        self.flush()
        self.transport.loseConnection()

    def drain(self, why: str | None = None) -> None:
        """
        Stop taking new calls (GOAWAY with the last stream id seen) and close
        once the calls running have ended.

        @param why: the reason (not sent: a gRPC GOAWAY says NO_ERROR).
        """
        if self._closing or self._lost:
            return
        self._closing = True
        # h2's close_connection() would stop the running calls' replies too:
        # the GOAWAY frame goes out beside h2's state (hyperframe builds it).
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self.conn.highest_inbound_stream_id
        goaway.error_code = ErrorCodes.NO_ERROR
        self.flush()
        self.transport.write(goaway.serialize())
        self._close_when_idle()

    def shutting_down(self) -> None:
        """
        The daemon is stopping: tell the peer with GOAWAY (NO_ERROR) that no
        more calls are taken, so that its next call goes elsewhere or waits
        for a new connection instead of failing on a dropped one.
        """
        self._shutdown_trigger = None
        self.drain()

    def _close_when_idle(self) -> None:
        if not self.calls and not self._lost:
            self.transport.loseConnection()

    def busy(self) -> bool:
        """
        @return: whether calls are open (the connection is not idle).
        """
        return bool(self.calls)

    @property
    def paused(self) -> bool:
        """
        @return: whether the transport's write buffer is full.
        """
        return self.gate is not None and self.gate.paused

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        trigger, self._shutdown_trigger = self._shutdown_trigger, None
        if trigger is not None:
            getattr(self.clock, "removeSystemEventTrigger")(trigger)
        calls, self.calls = self.calls, {}
        for call in calls.values():
            call.done = True
        if self.dispatcher is not None:
            self.dispatcher.close()
