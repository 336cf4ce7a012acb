"""
The server side of rpcd's native protocol.

Requests are answered in the order their handlers finish.  Every reply a
single read produces is written with one C{write}, sent at once on a plain
socket (see L{NativeServerProtocol._write}); a method that returns a plain
value costs no Deferred.  While the peer's replies are over
C{limits.write_buffer_bytes}, frames already read are held, not started
(L{rpcd.backpressure}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.backpressure import UNCAPPED, ReadThrottle, calls_ended
from rpcd.dispatch import Dispatcher, error_fields
from rpcd.errors import Code, ProtocolError, RPCError
from rpcd.keepalive import PingStrikes, TooManyPings
from rpcd.wire.fields import (
    CallOptions,
    check_fields,
    check_method,
    frame_name,
    parse_options,
    read_id,
)
from rpcd.wire.frames import (
    CALL,
    CANCEL,
    CREDIT,
    END,
    ERROR,
    GOAWAY,
    MESSAGE,
    PING,
    PONG,
    PREFACE,
    PREFACE_SIZE,
    RESULT,
    VERSION,
    FrameReader,
    check_preface,
    encode_frame,
    pack_length,
)

if TYPE_CHECKING:
    from rpcd.budget import InputGuard
    from rpcd.server import RPCServer

import msgpack

log = Logger()

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack

# The length prefixes of small frames, made once.
_PREFIXES = [pack_length(size) for size in range(256)]

# The tcp.Connection internals _write reads; if a Twisted release renames
# them, the direct send is simply not used.
_SOCKET_INTERNALS = ("_tempDataLen", "dataBuffer", "writeSomeData", "connected", "disconnecting")

_STREAM_FRAMES = frozenset({MESSAGE, END, CREDIT})

_PLAIN_RESULTS = frozenset({int, str, float, bool, bytes, type(None), list, dict})


class NativeServerProtocol(Protocol):
    """
    Serves one connection in the native protocol.

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
        self.reader = FrameReader(server.limits.max_frame_bytes)
        self.dispatcher: Dispatcher | None = None
        self._preface_seen = False
        self._pending = b""
        self._streams: Any = None
        self._socket: Connection | None = None
        self._closing = False  # reading has ended: no more calls start
        self._goaway_sent = False  # nothing more is written
        self._read_ended = False
        self._pings: PingStrikes | None = None  # the peer's PINGs (rpcd.keepalive)
        self._drain_last: int | None = None  # the last_id of a graceful GOAWAY sent

    def connectionMade(self) -> None:
        self.session = self.server.new_session(self.transport, self.protocol_name)
        self.dispatcher = Dispatcher(self.session, self.server.clock,
                                     self.server.limits.max_calls_per_connection)
        self.transport.write(PREFACE)
        if isinstance(self.transport, Connection) and all(
                hasattr(self.transport, name) for name in _SOCKET_INTERNALS):
            self._socket = self.transport

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # a GOAWAY was sent: nothing more from this peer is read
        if not self._preface_seen:
            data = self._pending + data
            if len(data) < PREFACE_SIZE:
                self._pending = data
                if self.input_guard is not None:  # a preface, too, must arrive in time
                    self.input_guard.update(len(data), False)
                return
            try:
                version = check_preface(data)
            except ProtocolError as e:
                self._protocol_error(e)
                return
            if version != VERSION:
                self._goaway(Code.UNIMPLEMENTED, f"protocol version {version} is not supported; "
                                                 f"this server speaks version {VERSION}")
                return
            self._preface_seen = True
            self._pending = b""
            data = data[PREFACE_SIZE:]
            if not data:
                if self.input_guard is not None:
                    self.input_guard.update(0, True)
                return
        frames, error = self.reader.split(data)
        guard = self.input_guard
        if guard is not None and not guard.update(self.reader.buffered(), bool(frames)):
            return
        throttle = self.throttle
        if throttle is not None and (throttle.paused or throttle.held is not None):
            throttle.hold(frames, error)
            return
        self._frames_received(frames, error)

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
        self.transport.loseConnection()

    def _frames_received(self, frames: list[list[Any]], error: ProtocolError | None) -> None:
        out: list[bytes] = []
        if self._drain_last is not None:
            frames = self._refuse_calls(frames, out)
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
        packb = _packb
        prefixes = _PREFIXES
        # The loop runs once per frame of a read (often dozens): the common
        # CALL (four fields, no options) is handled inline, and a method on
        # the dispatcher's hot path is called straight; the rest goes through
        # _parse_call and _control.
        try:
            for frame in frames_left:
                if len(frame) == 4 and frame[0] == CALL:
                    _, call_id, method, value = frame
                    # call_id >> 63: nonzero for ids out of 0..2^63-1, in one step.
                    if type(call_id) is not int or type(method) is not str or call_id >> 63:
                        self._parse_call(frame, out)  # refuses it, naming the bad field
                        continue
                    timeout = metadata = None
                elif frame[0] != CALL:
                    self._control(frame, out)
                    continue
                else:
                    parsed = self._parse_call(frame, out)
                    if parsed is None:
                        continue
                    call_id, method, value, timeout, metadata = parsed
                if call_id in running:
                    out.append(_error_frame(call_id, Code.INVALID_ARGUMENT,
                                            f"call id {call_id} is already in use on this connection"))
                    continue
                call = simple_call(method)
                try:
                    if call is not None:
                        result = call(value, call_id, timeout)
                    else:
                        result = dispatch(method, value, call_id, timeout=timeout, metadata=metadata)
                except RPCError as e:
                    out.append(_error_frame(call_id, e.code, e.message, e.details))
                    continue
                # A plain result cannot be a Deferred; the type test is much
                # cheaper than isinstance (Deferred is an abc).
                if type(result) not in _PLAIN_RESULTS and isinstance(result, Deferred):
                    result.addCallbacks(self._reply_later, self._fail_later,
                                        callbackArgs=(call_id,), errbackArgs=(call_id,))
                    continue
                try:
                    body = packb([RESULT, call_id, result])
                except Exception as e:
                    out.append(self._unencodable(method, call_id, e))
                    continue
                size = len(body)
                if size < 256:
                    out.append(prefixes[size] + body)
                else:
                    out.append(pack_length(size))  # not joined: a large body is copied once
                    out.append(body)
                queued += size
                if queued > room:
                    assert throttle is not None  # room is finite
                    throttle.hold(list(frames_left), error)
                    error = None
                    break
        except ProtocolError as e:
            error = e
        if out:
            self._write(b"".join(out))
        if error is not None:
            self._protocol_error(error)
        elif throttle is not None and throttle.held is not None and not throttle.paused:
            # The replies fit in the transport after all (the peer reads):
            # go on with the held frames (in the loop of run_held).
            self.replies_drained()

    def _write(self, data: bytes) -> None:
        """
        Write the replies of one read, sending them at once when the
        transport is a TCP (or Unix) socket with nothing queued.

        C{transport.write} only queues the bytes and asks the reactor to
        report the socket writable; the send then costs a second reactor
        iteration and two C{epoll_ctl} calls, on every read of a pipelined
        client.  Sending straight from here (with Twisted's own
        C{writeSomeData}) keeps the order of everything written, since
        nothing is queued before; whatever is not sent at once, and every
        write on another transport (TLS, test transports) or on a closing
        connection, goes through C{transport.write} as before.  So do
        writes larger than one send (C{SEND_LIMIT}): most of them would be
        queued anyway, after a copy.

        @param data: the frames.
        """
        sock = self._socket
        if sock is not None and not sock._tempDataLen and not sock.dataBuffer \
                and sock.connected and not sock.disconnecting and len(data) <= sock.SEND_LIMIT:
            sent = sock.writeSomeData(data)
            if type(sent) is int:
                if sent == len(data):
                    return
                data = data[sent:]
            # else the connection is lost: transport.write drops the bytes
            # or queues them for the doWrite that finds out.
        self.transport.write(data)

    def _parse_call(self, frame: list, out: list[bytes]) -> tuple[int, str, Any, Any, Any] | None:
        """
        Check a CALL frame that is not of the plain four-field kind (or whose
        fields are wrong), and start it if it opens a stream.

        A bad field fails the call: an ERROR frame (INVALID_ARGUMENT) naming
        the field goes into C{out}.

        @param frame: the frame body.
        @param out: replies of this read.
        @return: C{(call_id, method, value, timeout, metadata)} for a unary
            call, or None when it was refused or was a stream (now started).
        @raise ProtocolError: the frame's id cannot be read.
        """
        call_id = read_id(frame)
        try:
            check_fields(frame, "[0, id, method, argument]")
            method = check_method(frame[2])
            options = parse_options(frame[4] if len(frame) > 4 else None)
        except (TypeError, ValueError) as e:
            out.append(_error_frame(call_id, Code.INVALID_ARGUMENT, f"CALL {call_id}: {e}"))
            return None
        if options.stream:
            self._start_stream(call_id, method, frame[3], options, out)
            return None
        return call_id, method, frame[3], options.timeout, options.metadata

    def _start_stream(self, call_id: int, method: str, value: Any, options: CallOptions,
                      out: list[bytes]) -> None:
        if self._streams is None:
            from rpcd.streams import ServerStreams
            self._streams = ServerStreams(self)
        self._streams.open(call_id, method, value, options, out)

    @property
    def closing(self) -> bool:
        """
        Whether a GOAWAY was sent: it is the last frame the peer gets.
        """
        return self._goaway_sent

    def _reply_later(self, result: Any, call_id: int) -> None:
        if self._goaway_sent:
            return
        try:
            frame = encode_frame([RESULT, call_id, result])
        except Exception as e:
            frame = self._unencodable("call", call_id, e)
        self.transport.write(frame)

    def _fail_later(self, failure: Failure, call_id: int) -> None:
        if self._goaway_sent:
            return
        error = failure.value
        assert error is not None  # a Failure always holds its exception
        code, message, details = error_fields(error)
        self.transport.write(_error_frame(call_id, code, message, details))

    def _unencodable(self, method: str, call_id: int, error: Exception) -> bytes:
        log.error("{method} returned a value msgpack cannot encode: {error}",
                  method=method, error=error)
        return _error_frame(call_id, Code.INTERNAL, f"{method}: the result cannot be encoded: {error}")

    def _control(self, frame: list, out: list[bytes]) -> None:
        """
        Handle a frame that is not a CALL.

        @param frame: the frame body.
        @param out: replies of this read.
        @raise ProtocolError: a frame a client may not send, or whose id
            cannot be read.
        """
        kind = frame[0]
        if kind == CANCEL:
            assert self.dispatcher is not None  # set by connectionMade, before any data
            self.dispatcher.cancel(read_id(frame))
        elif kind == PING:
            if self._pings is None:
                limits = self.server.limits
                self._pings = PingStrikes(self.server.clock, limits.keepalive_min_ping_interval,
                                          limits.keepalive_max_ping_strikes)
            self._pings.ping()  # TooManyPings: a GOAWAY
            out.append(encode_frame([PONG, frame[1] if len(frame) > 1 else None]))
        elif kind == PONG:
            pass
        elif kind == GOAWAY:
            self.transport.loseConnection()
        elif kind in _STREAM_FRAMES:
            if self._streams is not None:
                self._streams.frame_received(frame, out)
            else:
                read_id(frame)  # no stream was ever opened: a good id is ignored
        else:
            raise ProtocolError(f"unexpected {frame_name(kind)} from a client")

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
        if self._closing or self._drain_last is not None:
            return
        dispatcher = self.dispatcher
        running = dispatcher.running if dispatcher is not None else {}
        self._drain_last = max((k for k in running if type(k) is int), default=0)
        if self.throttle is not None:
            self.throttle.held = None
        if self._streams is not None:
            self._streams.flush()
        self.transport.write(encode_frame([GOAWAY, self._drain_last, int(Code.OK), message]))
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
        if self._goaway_sent:
            return
        dispatcher = self.dispatcher
        out = [_error_frame(k, Code.UNAVAILABLE, message)
               for k in (dispatcher.running if dispatcher is not None else ())
               if type(k) is int]
        if self._streams is not None:
            self._streams.flush()
        self._closing = self._goaway_sent = True
        if self.throttle is not None:
            self.throttle.held = None
        if out:
            self.transport.write(b"".join(out))
        self.transport.loseConnection()
        if dispatcher is not None:
            for d in list(dispatcher.running.values()):
                d.cancel()

    def _refuse_calls(self, frames: list[list[Any]], out: list[bytes]) -> list[list[Any]]:
        """
        After a graceful GOAWAY: answer each new CALL with UNAVAILABLE
        (not run), keep the other frames.
        """
        kept = []
        for frame in frames:
            if frame[0] == CALL:
                call_id = read_id(frame)
                out.append(_error_frame(call_id, Code.UNAVAILABLE,
                                        f"call {call_id} was not run: the server is going away "
                                        f"(GOAWAY sent with last_id {self._drain_last}); "
                                        "retry it on a new connection"))
            else:
                kept.append(frame)
        return kept

    def _goaway(self, code: int, message: str) -> None:
        self._closing = self._goaway_sent = True
        if self.throttle is not None:
            self.throttle.held = None
        log.info("closing connection from {peer}: {why}", peer=self.session.peer, why=message)
        if self._streams is not None:
            self._streams.flush()
        self.transport.write(encode_frame([GOAWAY, 0, int(code), message]))
        self.transport.loseConnection()

    def _protocol_error(self, error: ProtocolError) -> None:
        if isinstance(error, TooManyPings):
            self._goaway(Code.RESOURCE_EXHAUSTED, str(error))
            return
        self._goaway(Code.INVALID_ARGUMENT, f"protocol error: {error}")

    def send_ping(self, opaque: int) -> None:
        """
        Send a PING (L{rpcd.keepalive.KeepAlive}, on a quiet connection).

        @param opaque: echoed by the peer's PONG.
        """
        if not self._goaway_sent:
            self.transport.write(encode_frame([PING, opaque]))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reader.clear()
        if self.dispatcher is not None:
            self.dispatcher.close()
        if self._streams is not None:
            self._streams.connection_lost()


def _error_frame(call_id: int, code: int, message: str, details: Any = None) -> bytes:
    try:
        return encode_frame([ERROR, call_id, int(code), message, details])
    except Exception:
        return encode_frame([ERROR, call_id, int(code), message, None])
