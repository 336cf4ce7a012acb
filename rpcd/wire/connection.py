"""
One connection of rpcd's native protocol as a sans-IO state machine, for
either role (C{docs/protocol.md} is the wire spec).

The model is h2's C{H2Connection}: bytes in, events out; method calls in,
bytes out.  Nothing here does IO, keeps time or knows about Twisted: the
Twisted protocols (L{rpcd.server.native}, L{rpcd.client.native}) and any
other event loop drive it::

    conn = NativeConnection(client_side=True)
    conn.initiate_connection()
    conn.send_call(1, "Arith.Multiply", {"A": 7, "B": 8})
    sock.sendall(conn.data_to_send())
    for event in conn.receive_data(sock.recv(65536)):
        if event[0] == RESULT:
            _, call_id, value = event[:3]
        ...

Every frame rule lives here, once for both roles: the preface, the length
of a frame checked before any of it is buffered (L{FrameReader}), the type
and range of every id and field, which frame types each role may receive,
stream credit (L{rpcd.wire.credit.StreamCredit}), MESSAGE after END, PING's
optional opaque, GOAWAY's fields, and after a graceful GOAWAY the refusal
of new calls.

B{Events} are sequences (lists or tuples: no object per frame), their
first element one of the constants below; frames may carry fields after
the ones listed (room for later versions), so read them by index.  A
server connection emits:

  - C{[CALL, id, method, value]}: a unary call without options (the frame
    as decoded, fields checked);
  - C{[CALL, id, method, value, options]}: a call with options, an
    L{rpcd.wire.fields.CallOptions}; when C{options.stream} is true the
    stream is open in the connection (credit: C{options.window}, default
    512) until a RESULT or ERROR is sent for it;
  - C{[CANCEL, id]}, C{[MESSAGE, id, value]} (credit already counted),
    C{(END, id)}, C{(CREDIT, id, n)} (credit already added);
  - C{(PING, opaque)}: answer it with L{NativeConnection.send_pong} (the
    caller may first apply its own ping policy); C{(PONG, opaque)};
  - C{(GOAWAY, last_id, code, message, graceful)}: C{message} is always a
    string, C{graceful} whether it is a code-0 GOAWAY with a usable
    C{last_id}; after a fatal one nothing more is read.

A client connection emits C{[RESULT, id, value]}, C{(ERROR, id, code,
message, details)}, C{[MESSAGE, id, value]}, C{(CREDIT, id, n)}, PING, PONG
and GOAWAY as above.  Either role also emits:

  - C{(PREFACE_RECEIVED, version)} once, when the peer's preface is read;
  - C{(BAD_FRAME, id, kind, why)}: a frame for call or stream C{id} with a
    bad field (a MESSAGE or RESULT without its value, a CREDIT whose C{n}
    is out of range, an ERROR whose code is not an integer): only that
    call fails; C{why} names the field.  For a running stream, the server
    ends it with ERROR code 3, the client cancels it;
  - C{(CONNECTION_ERROR, error, code, message)}, always the last event:
    the peer broke the protocol (C{error} a L{ProtocolError}, a
    L{PrefaceError} for a bad preface).  Nothing more is read; send the
    replies of the events before it, then L{NativeConnection.close} with
    C{code} and C{message} (the GOAWAY the spec asks for), and close.

L{NativeConnection.receive_data} raises nothing else for anything a peer
sends (C{tests/test_connection.py} fuzzes it).

A server connection answers some CALLs itself, in the bytes of
L{NativeConnection.data_to_send}: a CALL with a bad field other than its id
(ERROR 3 naming the field), a stream CALL reusing the id of an open stream
(ERROR 3), and every CALL after L{NativeConnection.drain} (ERROR 14).
Unary call ids are not tracked here: the caller knows which calls run.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from rpcd.wire.credit import StreamCredit
from rpcd.wire.fields import (
    CallOptions,
    check_fields,
    check_method,
    frame_name,
    parse_options,
    read_id,
    short,
)
from rpcd.wire.flow import DEFAULT_WINDOW, ReceiveWindow, check_credit
from rpcd.wire.frames import (
    CALL,
    CANCEL,
    CREDIT,
    DEFAULT_MAX_FRAME,
    END,
    ERROR,
    GOAWAY,
    MAGIC,
    MESSAGE,
    PING,
    PONG,
    PREFACE,
    PREFACE_SIZE,
    RESULT,
    VERSION,
    FrameReader,
    ProtocolError,
)

PREFACE_RECEIVED = 10
"""Event C{(PREFACE_RECEIVED, version)}: the peer's preface was read."""

BAD_FRAME = 11
"""Event C{(BAD_FRAME, id, kind, why)}: a bad field fails call C{id} only."""

CONNECTION_ERROR = 12
"""Event C{(CONNECTION_ERROR, error, code, message)}: the peer broke the
protocol; the last event."""

# The status codes the connection itself puts on the wire (the gRPC
# numbers, as rpcd.errors.Code; repeated so that wire imports nothing above it).
OK = 0
INVALID_ARGUMENT = 3
UNIMPLEMENTED = 12
UNAVAILABLE = 14

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_length = struct.Struct(">I").pack
_PREFIXES = [_length(size) for size in range(256)]


class PrefaceError(ProtocolError):
    """The peer's first 8 bytes are not an rpcd native preface."""


class NoCredit(ValueError):
    """A MESSAGE was sent on a stream the peer has granted no credit for."""


_NO_STREAMS: dict[int, StreamCredit] = {}
"""A connection's streams until it opens one: shared by every connection,
never written (an idle connection holds no table of its own)."""


class NativeConnection:
    """
    The native protocol's state for one connection, either role.

    @ivar client_side: whether this end is the client.
    @ivar closed: whether a fatal GOAWAY was sent (or L{close} called):
        nothing more is sent or read.
    @ivar drain_last: the C{last_id} of the graceful GOAWAY sent, or None.
    @ivar plain: how many of the events the last L{receive_data} returned,
        from the first, are plain frames: on a client a unary RESULT
        C{[RESULT, id, value]} (exactly three fields, no stream open under
        its id), on a server a CALL without options; the caller may unpack
        them without looking at their kind or length.
    """

    __slots__ = ("client_side", "closed", "drain_last", "_reader", "_preface", "_reading", "_out",
                 "_append", "_streams", "_peer", "plain")

    def __init__(self, client_side: bool, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        """
        @param client_side: True for the client's end, False for the server's.
        @param max_frame: the largest frame body accepted, in bytes.
        """
        self.client_side = client_side
        self.closed = False
        self.drain_last: int | None = None
        self.plain = 0
        self._reader = FrameReader(max_frame)
        self._preface: bytes | None = b""  # the peer's preface so far; None once read
        self._reading = True
        self._out: list[bytes] = []  # emptied, never replaced: _append stays bound to it
        self._append = self._out.append
        self._streams: dict[int, StreamCredit] = _NO_STREAMS  # a dict of its own once written
        self._peer = "server" if client_side else "client"

    # Receiving.

    def receive_data(self, data: bytes) -> list[Any]:
        """
        Read bytes from the peer.

        @param data: any number of bytes, split anywhere.
        @return: the events of every frame now complete (see the module's
            docstring), in order; a C{CONNECTION_ERROR} event, if any, is
            last.  Empty after a fatal GOAWAY either way.
        """
        self.plain = 0
        if not self._reading:
            return []
        if self._preface is not None:
            data = self._preface + data
            if len(data) < PREFACE_SIZE:
                self._preface = data
                return []
            self._preface = None
            if data[:len(MAGIC)] != MAGIC:
                return self._broken([], PrefaceError(
                    f"not an rpcd native preface: {bytes(data[:PREFACE_SIZE])!r}"))
            version = data[len(MAGIC)]
            events: list[Any] = [(PREFACE_RECEIVED, version)]
            if version != VERSION and not self.client_side:
                self._reading = False
                events.append((CONNECTION_ERROR,
                               ProtocolError(f"unsupported protocol version {version}"),
                               UNIMPLEMENTED,
                               f"protocol version {version} is not supported; "
                               f"this server speaks version {VERSION}"))
                return events
            data = data[PREFACE_SIZE:]
            if not data:
                return events
            events.extend(self.receive_data(data))
            self.plain = 0
            return events
        frames, error = self._reader.split(data)
        streams = self._streams
        # The common frame (a plain CALL on a server, a plain RESULT on a
        # client, with a good id and no stream open under it) needs no
        # event of its own: the decoded frame is the event.  When a whole
        # read is of them, the list of frames is the list of events.
        good = 0
        if self.client_side:
            for frame in frames:
                if len(frame) == 3 and frame[0] == RESULT:
                    call_id = frame[1]
                    if type(call_id) is int and not call_id >> 63 and (
                            not streams or call_id not in streams):
                        good += 1
                        continue
                break
        elif self.drain_last is None:
            for frame in frames:
                # call_id >> 63: nonzero for ids out of 0..2^63-1, in one step.
                if len(frame) == 4 and frame[0] == CALL:
                    call_id = frame[1]
                    if type(call_id) is int and type(frame[2]) is str and not call_id >> 63 and (
                            not streams or call_id not in streams):
                        good += 1
                        continue
                break
        self.plain = good
        if good == len(frames) and error is None:
            return frames
        events = frames[:good]
        frame_received = self._client_frame if self.client_side else self._server_frame
        try:
            for i in range(good, len(frames)):
                frame_received(frames[i], events)
                if not self._reading:
                    return events  # a fatal GOAWAY: the peer's last frame
        except ProtocolError as e:
            error = e
        if error is not None:
            return self._broken(events, error)
        return events

    def _broken(self, events: list[Any], error: ProtocolError) -> list[Any]:
        self._reading = False
        self._reader.clear()
        events.append((CONNECTION_ERROR, error, INVALID_ARGUMENT, f"protocol error: {error}"))
        return events

    def _server_frame(self, frame: list[Any], events: list[Any]) -> None:
        """
        Check one frame a client sent, and add its event (if any).

        @raise ProtocolError: the connection must close.
        """
        kind = frame[0]
        if kind == CALL:
            self._call_received(frame, events)
        elif kind == CANCEL:
            read_id(frame)
            events.append(frame)
        elif kind == MESSAGE or kind == CREDIT or kind == END:
            self._stream_frame(kind, frame, events)
        else:
            self._common_frame(kind, frame, events)

    def _call_received(self, frame: list[Any], events: list[Any]) -> None:
        call_id = read_id(frame)
        if self.drain_last is not None:
            self._refuse(call_id, UNAVAILABLE,
                         f"call {call_id} was not run: the server is going away "
                         f"(GOAWAY sent with last_id {self.drain_last}); "
                         "retry it on a new connection")
            return
        try:
            check_fields(frame, "[0, id, method, argument]")
            method = check_method(frame[2])
            options = parse_options(frame[4]) if len(frame) > 4 else None
        except (TypeError, ValueError) as e:
            self._refuse(call_id, INVALID_ARGUMENT, f"CALL {call_id}: {e}")
            return
        streams = self._streams
        if call_id in streams:
            self._refuse(call_id, INVALID_ARGUMENT,
                         f"call id {call_id} is already in use on this connection")
            return
        if options is None:
            events.append(frame if len(frame) == 4 else frame[:4])
            return
        if options.stream:
            window = DEFAULT_WINDOW if options.window is None else options.window
            if streams is _NO_STREAMS:
                streams = self._streams = {}
            streams[call_id] = StreamCredit(window, None)
        events.append([CALL, call_id, method, frame[3], options])

    def _client_frame(self, frame: list[Any], events: list[Any]) -> None:
        """
        Check one frame a server sent, and add its event (if any).

        @raise ProtocolError: the connection must close.
        """
        kind = frame[0]
        if kind == RESULT:
            call_id = read_id(frame)
            self._streams.pop(call_id, None)
            if len(frame) < 3:
                events.append((BAD_FRAME, call_id, RESULT,
                               f"needs [1, id, value], got {len(frame)} fields"))
            else:
                events.append(frame)
        elif kind == ERROR:
            call_id = read_id(frame)
            self._streams.pop(call_id, None)
            if len(frame) < 4:
                why = f"needs [2, id, code, message], got {len(frame)} fields"
            elif type(frame[2]) is not int:
                why = f"code must be an integer, got {short(frame[2])}"
            elif type(frame[3]) is not str:
                why = f"message must be a string, got {short(frame[3])}"
            else:
                events.append((ERROR, call_id, frame[2], frame[3],
                               frame[4] if len(frame) > 4 else None))
                return
            events.append((BAD_FRAME, call_id, ERROR, why))
        elif kind == MESSAGE or kind == CREDIT:
            self._stream_frame(kind, frame, events)
        else:
            self._common_frame(kind, frame, events)

    def _stream_frame(self, kind: int, frame: list[Any], events: list[Any]) -> None:
        """
        A MESSAGE, CREDIT or END frame: ignored unless its stream is open
        (it crossed the stream's end on the wire), but its id must be
        readable.
        """
        call_id = read_id(frame)
        stream = self._streams.get(call_id)
        if stream is None:
            return
        if kind == MESSAGE:
            if len(frame) < 3:
                events.append((BAD_FRAME, call_id, MESSAGE,
                               f"needs [4, id, value], got {len(frame)} fields"))
                return
            stream.received(call_id)
            events.append(frame)
        elif kind == CREDIT:
            try:
                n = check_credit(frame[2] if len(frame) > 2 else None)
            except ValueError as e:
                events.append((BAD_FRAME, call_id, CREDIT, str(e)))
                return
            stream.granted(call_id, n)
            events.append((CREDIT, call_id, n))
        else:
            stream.peer_ended = True
            events.append((END, call_id))

    def _common_frame(self, kind: int, frame: list[Any], events: list[Any]) -> None:
        """
        PING, PONG and GOAWAY, which both roles take.

        @raise ProtocolError: any other frame type.
        """
        if kind == PING or kind == PONG:
            events.append((kind, frame[1] if len(frame) > 1 else None))
        elif kind == GOAWAY:
            last_id = frame[1] if len(frame) > 1 else None
            code = frame[2] if len(frame) > 2 else None
            message = frame[3] if len(frame) > 3 else None
            if type(message) is not str:
                message = f"{self._peer} closed the connection (GOAWAY {short(frame[1:])})"
            graceful = (type(code) is int and code == OK and type(last_id) is int
                        and last_id >= 0)
            events.append((GOAWAY, last_id, code, message, graceful))
            if not graceful:
                self._reading = False
                self._reader.clear()
        else:
            raise ProtocolError(f"unexpected {frame_name(kind)} from a {self._peer}")

    def buffered(self) -> int:
        """
        @return: the bytes held for an unfinished preface or frame.
        """
        preface = self._preface
        return len(preface) if preface is not None else self._reader.buffered()

    # Sending, both roles.

    def initiate_connection(self) -> None:
        """
        Queue this end's preface (each side sends it first, at once).
        """
        self._out.append(PREFACE)

    def data_to_send(self) -> bytes:
        """
        @return: every byte queued since the last call (C{b""} for none).
        """
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def _queue(self, body: list[Any]) -> int:
        """
        Encode a frame and queue it (nothing after a fatal GOAWAY).

        @return: the frame body's size in bytes.
        @raise Exception: a value msgpack cannot encode; nothing is queued.
        """
        if self.closed:
            return 0
        data = _packb(body)
        size = len(data)
        if size < 256:
            self._out.append(_PREFIXES[size] + data)
        else:
            self._out.append(_length(size))  # not joined: a large body is copied once
            self._out.append(data)
        return size

    def send_ping(self, opaque: Any) -> None:
        """
        Queue a PING.

        @param opaque: any msgpack value; the peer's PONG echoes it.
        """
        self._queue([PING, opaque])

    def send_pong(self, opaque: Any) -> None:
        """
        Answer a PING event.

        @param opaque: the PING's opaque value.
        """
        self._queue([PONG, opaque])

    def send_message(self, call_id: int, value: Any) -> int:
        """
        Queue one MESSAGE on an open stream, spending one credit.

        @param call_id: the stream.
        @param value: the message.
        @return: the frame body's size in bytes (0 after L{close}).
        @raise NoCredit: the stream is not open, or the peer granted no
            credit (check L{credit} first).
        @raise Exception: a value msgpack cannot encode; nothing is sent.
        """
        stream = self._streams.get(call_id)
        if stream is None or stream.send <= 0:
            raise NoCredit(f"stream {call_id}: no credit to send a MESSAGE")
        size = self._queue([MESSAGE, call_id, value])
        stream.send -= 1
        return size

    def credit(self, call_id: int) -> int:
        """
        @return: the MESSAGE frames stream C{call_id} may send now (0 when
            it is not open).
        """
        stream = self._streams.get(call_id)
        return 0 if stream is None else stream.send

    def stream_open(self, call_id: int) -> bool:
        """
        @return: whether stream C{call_id} is open.
        """
        return call_id in self._streams

    def message_consumed(self, call_id: int) -> int:
        """
        The application took one MESSAGE of stream C{call_id}: once half
        a window is taken, queue a CREDIT for it (unless the peer has
        ended its half, or the stream is over).

        @return: the credit granted now (0 for none).
        """
        stream = self._streams.get(call_id)
        if stream is None or stream.receive is None:
            return 0
        n = stream.receive.consumed()
        if n and not stream.peer_ended:
            self._queue([CREDIT, call_id, n])
            return n
        return 0

    def close(self, code: int | None = INVALID_ARGUMENT, message: str = "") -> None:
        """
        Send a fatal GOAWAY C{[9, 0, code, message]}, the last frame: nothing
        more is sent or read.

        @param code: the GOAWAY's code; None to stop without one.
        @param message: the reason, for people.
        """
        if self.closed:
            return
        if code is not None:
            self._queue([GOAWAY, 0, code, message])
        self.closed = True
        self._reading = False
        self._reader.clear()

    def clear(self) -> None:
        """
        The connection is gone: drop every byte held or queued and every
        stream's state.
        """
        self._reading = False
        self._reader.clear()
        self._out.clear()
        if self._streams:
            self._streams.clear()

    # Sending, server role.

    def send_result(self, call_id: int, value: Any) -> int:
        """
        Queue a RESULT (ending the stream, for a stream).

        @param call_id: the call.
        @param value: its result.
        @return: the frame body's size in bytes (0 after L{close}).
        @raise Exception: a value msgpack cannot encode; nothing is queued
            (answer with L{send_error} instead).
        """
        if self.closed:
            return 0
        data = _packb([RESULT, call_id, value])
        size = len(data)
        # (Loaded, then called: calling a slot's callable straight off self
        # takes CPython 3.11's slow method lookup.)
        append = self._append
        if size < 256:
            append(_PREFIXES[size] + data)
        else:
            append(_length(size))  # not joined: a large body is copied once
            append(data)
        if self._streams:
            self._streams.pop(call_id, None)
        return size

    def send_error(self, call_id: int, code: int, message: str, details: Any = None) -> int:
        """
        Queue an ERROR (ending the stream, for a stream); details msgpack
        cannot encode are left out.

        @return: the frame body's size in bytes (0 after L{close}).
        """
        streams = self._streams
        if streams:
            streams.pop(call_id, None)
        return self._refuse(call_id, code, message, details)

    def _refuse(self, call_id: int, code: int, message: str, details: Any = None) -> int:
        try:
            return self._queue([ERROR, call_id, int(code), message, details])
        except Exception:
            return self._queue([ERROR, call_id, int(code), message, None])

    def grant_window(self, call_id: int, window: int) -> None:
        """
        Give the client its first credit on stream C{call_id} (a method
        that takes messages): until then, any MESSAGE on it is a protocol
        error.

        @param window: the messages it may send, 1 to 2^20.
        """
        stream = self._streams.get(call_id)
        if stream is None:
            return
        stream.receive = ReceiveWindow(window, window)
        self._queue([CREDIT, call_id, window])

    def drain(self, last_id: int, message: str) -> None:
        """
        Go away gracefully: queue C{[9, last_id, 0, message]}; every CALL
        read from now on is answered with ERROR 14 (not run).  The calls
        and streams up to C{last_id} go on.

        @param last_id: the highest id running (0 for none).
        @param message: the reason.
        """
        if self.drain_last is not None or self.closed:
            return
        self.drain_last = last_id
        self._queue([GOAWAY, last_id, OK, message])

    # Sending, client role.

    def send_call(self, call_id: int, method: str, value: Any, timeout: float | None = None,
                  metadata: dict[str, Any] | None = None) -> None:
        """
        Queue a unary CALL.  The caller picks ids (increasing, never two
        pending alike) and checks its own arguments (L{rpcd.wire.fields}).

        @param timeout: seconds, or None.
        @param metadata: a map of string keys, or None.
        @raise Exception: a value msgpack cannot encode; nothing is queued.
        """
        if timeout is None and not metadata:
            if self.closed:
                return
            # The client's hot path: _queue inline.
            data = _packb([CALL, call_id, method, value])
            size = len(data)
            append = self._append  # (see send_result)
            append(_PREFIXES[size] + data if size < 256 else _length(size) + data)
            return
        options: dict[str, Any] = {}
        if timeout is not None:
            options["timeout"] = timeout
        if metadata:
            options["metadata"] = metadata
        self._queue([CALL, call_id, method, value, options])

    def open_stream(self, call_id: int, method: str, value: Any, window: int = DEFAULT_WINDOW,
                    timeout: float | None = None,
                    metadata: dict[str, Any] | None = None) -> None:
        """
        Queue a CALL that opens a stream; the stream is open until its
        RESULT or ERROR arrives or L{send_cancel}.  The server grants credit
        for our messages with its first CREDIT event.

        @param window: the server's credit for its messages (1 to 2^20).
        @raise Exception: a value msgpack cannot encode; nothing is queued.
        """
        options: dict[str, Any] = {"stream": True, "window": window}
        if timeout is not None:
            options["timeout"] = timeout
        if metadata:
            options["metadata"] = metadata
        self._queue([CALL, call_id, method, value, options])
        if self._streams is _NO_STREAMS:
            self._streams = {}
        self._streams[call_id] = StreamCredit(0, ReceiveWindow(window, window))

    def send_cancel(self, call_id: int) -> None:
        """
        Queue a CANCEL; frames of the call that cross it are ignored.
        """
        self._streams.pop(call_id, None)
        self._queue([CANCEL, call_id])

    def send_end(self, call_id: int) -> None:
        """
        Half-close stream C{call_id}: no MESSAGE follows.
        """
        self._queue([END, call_id])


__all__ = ["NativeConnection", "PrefaceError", "NoCredit", "CallOptions", "PREFACE_RECEIVED",
           "BAD_FRAME", "CONNECTION_ERROR", "CALL", "RESULT", "ERROR", "CANCEL", "MESSAGE",
           "END", "CREDIT", "PING", "PONG", "GOAWAY", "OK", "INVALID_ARGUMENT",
           "UNIMPLEMENTED", "UNAVAILABLE"]
