"""
The server side of rpcd's native protocol.

Requests are answered in the order their handlers finish.  Every reply a
single read produces is written with one C{write}, sent at once on a plain
socket (see L{NativeServerProtocol._write}); a method that returns a plain
value costs no Deferred.  While the peer's replies are over
C{limits.write_buffer_bytes}, frames already read are held, not started
(L{rpcd.server.backpressure}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.server.backpressure import UNCAPPED, ReadThrottle, calls_ended, lose_connection
from rpcd.core.dispatch import Dispatcher, error_fields
from rpcd.core.twistedcompat import direct_writer
from rpcd.server.replies import unencodable
from rpcd.errors import Code, ProtocolError, RPCError
from rpcd.core.keepalive import PingStrikes, TooManyPings
from rpcd.wire.connection import (
    BAD_FRAME,
    CALL,
    CANCEL,
    CONNECTION_ERROR,
    CREDIT,
    END,
    GOAWAY,
    MESSAGE,
    PING,
    NativeConnection,
)
from rpcd.wire.fields import CallOptions

if TYPE_CHECKING:
    from rpcd.server.budget import InputGuard
    from rpcd.server.factory import RPCServer

log = Logger()

_STREAM_EVENTS = frozenset({MESSAGE, END, CREDIT, BAD_FRAME})

_PLAIN_RESULTS = frozenset({int, str, float, bool, bytes, type(None), list, dict})


class NativeServerProtocol(Protocol):
    """
    Serves one connection in the native protocol: the IO, timers and
    dispatch around a L{NativeConnection}, which holds every frame rule.

    @ivar conn: the connection's protocol state (sans-IO).
    @ivar dispatcher: runs this connection's calls.
    """

    protocol_name = "native"
    transport: ITCPTransport
    throttle: ReadThrottle | None = None
    input_guard: InputGuard | None = None

    def __init__(self, server: RPCServer) -> None:
        """
        @param server: what every connection shares (registry, limits, clock).
        """
        self.server = server
        self.conn = NativeConnection(client_side=False, max_frame=server.limits.max_frame_bytes)
        self.dispatcher: Dispatcher | None = None
        self._streams: Any = None
        self._send: Callable[[bytes], None] | None = None  # direct_writer's
        self._closing = False  # reading has ended: no more calls start
        self._read_ended = False
        self._pings: PingStrikes | None = None  # the peer's PINGs (rpcd.core.keepalive)

    def connectionMade(self) -> None:
        self.session = self.server.new_session(self.transport, self.protocol_name)
        self.dispatcher = Dispatcher(self.session, self.server.clock,
                                     self.server.limits.max_calls_per_connection)
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())
        self._send = direct_writer(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # a GOAWAY was sent: nothing more from this peer is read
        conn = self.conn
        events = conn.receive_data(data)
        guard = self.input_guard
        # (A preface, too, must arrive in time.)
        if guard is not None and not guard.update(conn.buffered(), bool(events)):
            return
        throttle = self.throttle
        if throttle is not None and (throttle.paused or throttle.held is not None):
            throttle.hold(events, None)
            out = conn.data_to_send()  # CALLs the connection refused itself
            if out:
                self.transport.write(out)
            return
        self._frames_received(events)

    def replies_drained(self) -> None:
        """
        The peer has read its replies: start the frames held for it, until
        they are done or its replies are over the cap again.
        """
        throttle = self.throttle
        if throttle is None:
            return
        if not self._closing:
            throttle.run_held(self._frames_received)
        if self._read_ended and throttle.held is None:
            self._close_after_calls()

    def read_connection_lost(self) -> None:
        """
        The peer shut down its write side: answer every call it sent (the
        held ones once it reads), then close.  An unfinished frame is
        dropped.
        """
        self._read_ended = True
        if self.input_guard is not None:
            self.input_guard.stop()
        if self.throttle is None or self.throttle.held is None:
            self._close_after_calls()

    def _close_after_calls(self) -> None:
        if self._closing:
            return
        self._closing = True
        dispatcher = self.dispatcher
        calls_ended(dispatcher.running if dispatcher is not None else {}).addCallback(
            self._close_now)

    def _close_now(self, _: object = None) -> None:
        if self._streams is not None:
            self._streams.flush()
        lose_connection(self.transport)

    def _frames_received(self, frames: list[Any], _unused: object = None) -> None:
        """
        Run the events of one read (or those the throttle held).

        @param frames: events of L{NativeConnection.receive_data} (a
            protocol error is the last of them).
        """
        conn = self.conn
        throttle = self.throttle
        # How many bytes of replies may be queued (asked once per read)
        # before the rest of the frames are held; every reply counts, since
        # one read can hold thousands of calls of large results.
        room = throttle.room() if throttle is not None else UNCAPPED
        queued = 0
        frames_left = iter(frames)
        dispatcher = self.dispatcher
        assert dispatcher is not None  # set by connectionMade, before any data
        running = dispatcher.running
        simple_call = dispatcher.simple_calls.get
        dispatch = dispatcher.call
        send_result = conn.send_result
        error: ProtocolError | None = None
        # The loop runs once per event of a read (often dozens): the common
        # CALL (four fields, no options, checked by the connection) is
        # handled inline, and a method on the dispatcher's hot path is called
        # straight; the rest goes through _start_stream and _control.
        try:
            for frame in frames_left:
                if len(frame) == 4 and frame[0] == CALL:
                    _, call_id, method, value = frame
                    timeout = metadata = None
                elif frame[0] != CALL:
                    if frame[0] == CONNECTION_ERROR:
                        self._goaway(frame[2], frame[3])
                        return
                    self._control(frame)
                    continue
                else:
                    _, call_id, method, value, options = frame
                    if options.stream:
                        self._start_stream(call_id, method, value, options)
                        continue
                    timeout = options.timeout
                    metadata = options.metadata
                if call_id in running:
                    conn.send_error(call_id, Code.INVALID_ARGUMENT,
                                    f"call id {call_id} is already in use on this connection")
                    continue
                call = simple_call(method)
                try:
                    if call is not None:
                        result = call(value, call_id, timeout)
                    else:
                        result = dispatch(method, value, call_id, timeout=timeout, metadata=metadata)
                except RPCError as e:
                    conn.send_error(call_id, e.code, e.message, e.details)
                    continue
                # A plain result cannot be a Deferred; the type test is much
                # cheaper than isinstance (Deferred is an abc).
                if type(result) not in _PLAIN_RESULTS and isinstance(result, Deferred):
                    # Functions and one tuple of arguments, not two bound
                    # methods and two tuples: a pending long-poll holds them.
                    later = (self, call_id)
                    result.addCallbacks(_reply_later, _fail_later, callbackArgs=later, errbackArgs=later)
                    continue
                try:
                    queued += send_result(call_id, result)
                except Exception as e:
                    self._unencodable(method, call_id, e)
                    continue
                if queued > room:
                    assert throttle is not None  # room is finite
                    throttle.hold(list(frames_left), None)
                    break
        except ProtocolError as e:  # TooManyPings
            error = e
        out = conn.data_to_send()
        if out:
            self._write(out)
        if error is not None:
            self._protocol_error(error)
        elif throttle is not None and throttle.held is not None and not throttle.paused:
            # The replies fit in the transport after all (the peer reads):
            # go on with the held frames (in the loop of run_held).
            self.replies_drained()

    def _write(self, data: bytes) -> None:
        """
        Write the replies of one read, sending them at once when the
        transport is a TCP (or Unix) socket with nothing queued
        (L{rpcd.core.twistedcompat.direct_writer}); on other transports
        (TLS, test transports), with C{transport.write}.

        @param data: the frames.
        """
        send = self._send
        if send is None:
            self.transport.write(data)
        else:
            send(data)

    def _start_stream(self, call_id: int, method: str, value: Any, options: CallOptions) -> None:
        if self._streams is None:
            from rpcd.server.streams import ServerStreams
            self._streams = ServerStreams(self)
        self._streams.open(call_id, method, value, options)

    @property
    def closing(self) -> bool:
        """
        Whether a GOAWAY was sent: it is the last frame the peer gets.
        """
        return self.conn.closed

    def _unencodable(self, method: str, call_id: int, error: Exception) -> None:
        internal = unencodable(method, "msgpack", error)
        self.conn.send_error(call_id, internal.code, internal.message)

    def _control(self, event: Any) -> None:
        """
        Handle an event that is not a CALL (nor the last one, a
        CONNECTION_ERROR).

        @param event: the event.
        @raise ProtocolError: too many PINGs (L{TooManyPings}).
        """
        kind = event[0]
        if kind == CANCEL:
            assert self.dispatcher is not None  # set by connectionMade, before any data
            self.dispatcher.cancel(event[1])
        elif kind == PING:
            if self._pings is None:
                limits = self.server.limits
                self._pings = PingStrikes(self.server.clock, limits.keepalive_min_ping_interval,
                                          limits.keepalive_max_ping_strikes)
            self._pings.ping()  # TooManyPings: a GOAWAY
            self.conn.send_pong(event[1])
        elif kind == GOAWAY:
            lose_connection(self.transport)
        elif kind in _STREAM_EVENTS:
            if self._streams is not None:
                self._streams.event_received(event)
        # PONG and PREFACE_RECEIVED need nothing.

    def drain(self, message: str = "the server is shutting down") -> None:
        """
        Go away gracefully: send a GOAWAY with code 0 (OK) whose C{last_id}
        is the highest id of the calls and streams running now; they go on
        and are answered, and the connection closes once they have all
        ended.  Calls read later are not run (each gets an UNAVAILABLE
        ERROR; rpcd's client has retried them elsewhere already); CANCEL,
        stream frames and PINGs are still read.  Frames held by the read
        throttle were not started: they are dropped, not run.

        @param message: the GOAWAY's reason.
        """
        conn = self.conn
        if self._closing or conn.drain_last is not None:
            return
        dispatcher = self.dispatcher
        running = dispatcher.running if dispatcher is not None else {}
        if self.throttle is not None:
            self.throttle.held = None
        conn.drain(max((k for k in running if type(k) is int), default=0), message)
        self.transport.write(conn.data_to_send())
        calls_ended(running).addCallback(self._drained)

    def _drained(self, _: object) -> None:
        if not self._closing:
            self._closing = True
            self._close_now()

    def stop_now(self, message: str) -> None:
        """
        The grace is over: fail every call and stream still running with
        UNAVAILABLE, cancel their handlers, and close.

        @param message: the errors' message.
        """
        conn = self.conn
        if conn.closed:
            return
        dispatcher = self.dispatcher
        for k in (dispatcher.running if dispatcher is not None else ()):
            if type(k) is int:
                conn.send_error(k, Code.UNAVAILABLE, message)
        conn.close(None)
        self._closing = True
        if self.throttle is not None:
            self.throttle.held = None
        out = conn.data_to_send()
        if out:
            self.transport.write(out)
        lose_connection(self.transport)
        if dispatcher is not None:
            for d in list(dispatcher.running.values()):
                d.cancel()

    def _goaway(self, code: int, message: str) -> None:
        self._closing = True
        if self.throttle is not None:
            self.throttle.held = None
        log.info("closing connection from {peer}: {why}", peer=self.session.peer, why=message)
        conn = self.conn
        conn.close(int(code), message)
        self.transport.write(conn.data_to_send())
        lose_connection(self.transport)

    def _protocol_error(self, error: ProtocolError) -> None:
        if isinstance(error, TooManyPings):
            self._goaway(Code.RESOURCE_EXHAUSTED, str(error))
            return
        self._goaway(Code.INVALID_ARGUMENT, f"protocol error: {error}")

    def send_ping(self, opaque: int) -> None:
        """
        Send a PING (L{rpcd.core.keepalive.KeepAlive}, on a quiet connection).

        @param opaque: echoed by the peer's PONG.
        """
        conn = self.conn
        if not conn.closed:
            conn.send_ping(opaque)
            self.transport.write(conn.data_to_send())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.conn.clear()
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self._streams is not None:
            self._streams.connection_lost()



def _reply_later(result: Any, protocol: NativeServerProtocol, call_id: int) -> None:
    """
    A call's Deferred fired: send its RESULT (callback of the Deferred a
    handler returned).
    """
    conn = protocol.conn
    if conn.closed:
        return
    try:
        conn.send_result(call_id, result)
    except Exception as e:
        protocol._unencodable("call", call_id, e)
    protocol.transport.write(conn.data_to_send())


def _fail_later(failure: Failure, protocol: NativeServerProtocol, call_id: int) -> None:
    """
    A call's Deferred failed: send its ERROR (errback of the Deferred a
    handler returned).
    """
    conn = protocol.conn
    if conn.closed:
        return
    error = failure.value
    assert error is not None  # a Failure always holds its exception
    code, message, details = error_fields(error)
    conn.send_error(call_id, code, message, details)
    protocol.transport.write(conn.data_to_send())
