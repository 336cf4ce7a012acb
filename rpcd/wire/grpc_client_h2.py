"""
The client side of gRPC over HTTP/2, sans I/O: bytes in, events and bytes
out.  HTTP/2 framing, HPACK and flow control are C{h2}'s; this layer turns
calls into streams and streams' frames into call events.

    conn = GRPCClientConnection(scheme="http", authority="127.0.0.1:50051")
    conn.initiate(); transport.write(conn.data_to_send())
    stream_id = conn.start_call("/helloworld.HelloWorldService/SayHelloWorld", [], 5.0)
    conn.send(stream_id, encode_message(payload), end_stream=True)
    for event in conn.receive(data): ...   # Ready, CallHeaders, CallMessage, CallClosed, Terminated
    conn.consumed(stream_id, event.size)   # once the application took a message

Memory stays bounded when the application is slow: a stream's window is
only handed back while fewer than C{window} bytes of its messages wait for
the application (L{consumed}), and data to send waits in a per-stream
buffer until the server's window allows it (L{pending}).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from rpcd.errors import Code, ProtocolError
from rpcd.wire.grpc_client_messages import (
    DEFAULT_MAX_MESSAGE_SIZE,
    GRPCWireError,
    MessageReader,
    call_status,
    decode_metadata,
    encode_timeout,
    http_status_code,
)

#: The receive window per stream, and the bytes of received messages that
#: may wait for the application before the window stops being handed back.
DEFAULT_WINDOW = 1 << 20

USER_AGENT = b"rpcd-grpc-client/0.1"

_RESET_CODES: dict[int, int] = {
    ErrorCodes.CANCEL: Code.CANCELLED,
    ErrorCodes.REFUSED_STREAM: Code.UNAVAILABLE,
    ErrorCodes.ENHANCE_YOUR_CALM: Code.RESOURCE_EXHAUSTED,
    ErrorCodes.INADEQUATE_SECURITY: Code.PERMISSION_DENIED,
}


@dataclass
class Ready:
    """The server's first SETTINGS arrived: calls can start."""


@dataclass
class CallHeaders:
    """The response headers of a call, with their metadata."""

    stream_id: int
    metadata: dict[str, Any]


@dataclass
class CallMessage:
    """
    One response message; hand C{size} to L{GRPCClientConnection.consumed}
    once the application took it.
    """

    stream_id: int
    payload: bytes
    size: int


@dataclass
class CallClosed:
    """
    A call ended: C{code} 0 is OK.

    @ivar metadata: the trailing metadata.
    @ivar details: C{grpc-status-details-bin}, decoded from base64.
    """

    stream_id: int
    code: int
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)
    details: bytes | None = None


@dataclass
class Terminated:
    """
    The server sent GOAWAY: calls on streams above C{last_stream_id} were
    closed (UNAVAILABLE); no new call can start.
    """

    error_code: int
    last_stream_id: int


class _Stream:
    def __init__(self, max_message_size: int) -> None:
        self.reader = MessageReader(max_message_size)
        self.headers_seen = False
        self.queued = 0
        self.owed = 0
        self.outbound: deque[bytes] = deque()
        self.outbound_bytes = 0
        self.end_pending = False
        self.end_sent = False


class GRPCClientConnection:
    """
    One HTTP/2 connection's gRPC calls.

    @ivar conn: the C{h2} connection.
    @ivar terminated: whether the server sent GOAWAY (no new calls).
    """

    def __init__(self, *, scheme: str = "http", authority: str = "localhost",
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 window: int = DEFAULT_WINDOW, max_header_list_size: int = 65536) -> None:
        """
        @param scheme: C{http} or C{https}, for the C{:scheme} header.
        @param authority: the C{:authority} header.
        @param max_message_size: the largest response message accepted.
        @param window: the receive window per stream (see the module doc).
        @param max_header_list_size: the largest header block accepted.
        """
        # h2's inbound header validation refuses values with surrounding
        # whitespace (RFC 9113 8.2.1), which gRPC servers send in
        # grpc-message ("failed: " when the text is empty): read headers as
        # they come; what this layer uses of them is checked here.
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=False))
        self.scheme = scheme.encode("ascii")
        self.authority = authority.encode("idna")
        self.max_message_size = max_message_size
        self.window = window
        self.max_header_list_size = max_header_list_size
        self.streams: dict[int, _Stream] = {}
        self.terminated = False
        self._ready = False

    def initiate(self) -> None:
        """
        Queue the connection preface and our settings.
        """
        conn = self.conn
        conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.max_header_list_size,
        })
        conn.initiate_connection()
        conn.increment_flow_control_window(self.window * 4)

    def data_to_send(self) -> bytes:
        """
        @return: the bytes to write to the transport now.
        """
        return self.conn.data_to_send()

    def can_start(self) -> bool:
        """
        @return: whether a call can start now (the server's stream limit
            allows one more, and it has not sent GOAWAY).
        """
        # Our own count of open calls: h2's open_outbound_streams walks
        # every stream it still holds, closed ones included.
        return (not self.terminated
                and len(self.streams) < self.conn.remote_settings.max_concurrent_streams)

    def start_call(self, path: str, metadata: list[tuple[bytes, bytes]],
                   timeout: float | None) -> int:
        """
        Open a stream and send a call's headers.

        @param path: C{/package.Service/Method}.
        @param metadata: header fields from
            L{rpcd.wire.grpc_client_messages.encode_metadata}.
        @param timeout: seconds left, sent as C{grpc-timeout}.
        @return: the stream id.
        @raise ProtocolError: no call can start (check L{can_start}).
        """
        if not self.can_start():
            raise ProtocolError("the connection takes no more calls now (GOAWAY or the "
                                "server's stream limit)")
        stream_id = self.conn.get_next_available_stream_id()
        headers = [(b":method", b"POST"), (b":scheme", self.scheme),
                   (b":path", path.encode("ascii")), (b":authority", self.authority),
                   (b"te", b"trailers"), (b"content-type", b"application/grpc"),
                   (b"user-agent", USER_AGENT), (b"grpc-accept-encoding", b"gzip")]
        if timeout is not None:
            headers.append((b"grpc-timeout", encode_timeout(timeout).encode("ascii")))
        self.conn.send_headers(stream_id, headers + metadata)
        self.streams[stream_id] = _Stream(self.max_message_size)
        return stream_id

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """
        Send bytes on a call's stream, now as far as the server's window
        allows, the rest as it grows.

        @param stream_id: the call's stream.
        @param data: encoded messages (may be empty).
        @param end_stream: half-close after them.
        """
        stream = self.streams.get(stream_id)
        if stream is None or stream.end_pending:
            return
        if data:
            stream.outbound.append(data)
            stream.outbound_bytes += len(data)
        stream.end_pending = end_stream
        self._flush(stream_id, stream)

    def pending(self, stream_id: int) -> int:
        """
        @return: bytes of the stream waiting for the server's window.
        """
        stream = self.streams.get(stream_id)
        return 0 if stream is None else stream.outbound_bytes

    def _flush(self, stream_id: int, stream: _Stream) -> None:
        conn = self.conn
        outbound = stream.outbound
        while outbound:
            room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if room <= 0:
                return
            chunk = outbound[0]
            if len(chunk) > room:
                outbound[0] = chunk[room:]
                chunk = chunk[:room]
            else:
                outbound.popleft()
            stream.outbound_bytes -= len(chunk)
            last = stream.end_pending and not outbound
            stream.end_sent = last
            try:
                conn.send_data(stream_id, chunk, end_stream=last)
            except h2.exceptions.StreamClosedError:
                outbound.clear()
                stream.outbound_bytes = 0
                return
        if stream.end_pending and not stream.end_sent:
            stream.end_sent = True
            try:
                conn.end_stream(stream_id)
            except h2.exceptions.StreamClosedError:
                pass

    def cancel(self, stream_id: int) -> None:
        """
        Give up on a call: RST_STREAM with CANCEL.

        @param stream_id: the call's stream.
        """
        if self.streams.pop(stream_id, None) is None:
            return
        try:
            self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
        except h2.exceptions.StreamClosedError:
            pass

    def consumed(self, stream_id: int, size: int) -> None:
        """
        The application took a message: hand back window held for it.

        @param stream_id: the call's stream.
        @param size: the message's C{CallMessage.size}.
        """
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        stream.queued -= size
        self._ack(stream_id, stream)

    def _ack(self, stream_id: int, stream: _Stream) -> None:
        if stream.owed and stream.queued < self.window:
            owed, stream.owed = stream.owed, 0
            try:
                self.conn.acknowledge_received_data(owed, stream_id)
            except h2.exceptions.StreamClosedError:
                pass

    def receive(self, data: bytes) -> list[Ready | CallHeaders | CallMessage | CallClosed | Terminated]:
        """
        @param data: bytes from the transport.
        @return: what happened.
        @raise ProtocolError: the server broke HTTP/2; close the connection
            after writing L{data_to_send} (a GOAWAY).
        """
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            raise ProtocolError(f"the server broke HTTP/2: {e}") from None
        out: list[Any] = []
        for event in events:
            self._event(event, out)
        return out

    def _event(self, event: Any, out: list[Any]) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._data(event, out)
        elif isinstance(event, h2.events.ResponseReceived):
            self._response(event, out)
        elif isinstance(event, h2.events.TrailersReceived):
            self._close_with_status(event.stream_id, event.headers, out)
        elif isinstance(event, h2.events.StreamEnded):
            if event.stream_id in self.streams:
                stream = self.streams[event.stream_id]
                why = ("the server ended the response in the middle of a message"
                       if stream.reader.partial else "the server ended the call without trailers")
                self._close(event.stream_id, Code.INTERNAL if stream.reader.partial else Code.UNKNOWN,
                            why, out)
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.streams:
                code = _RESET_CODES.get(int(event.error_code or 0), Code.INTERNAL)
                self._close(event.stream_id, code, f"the server reset the stream "
                                                   f"({_error_name(event.error_code)})", out)
        elif isinstance(event, h2.events.WindowUpdated):
            for stream_id, stream in list(self.streams.items()):
                if stream.outbound or stream.end_pending:
                    self._flush(stream_id, stream)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if not self._ready:
                self._ready = True
                out.append(Ready())
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for stream_id in sorted(self.streams):
                if stream_id > last:
                    self._close(stream_id, Code.UNAVAILABLE,
                                f"the server went away (GOAWAY {_error_name(event.error_code)}) "
                                "before taking the call", out)
            out.append(Terminated(int(event.error_code or 0), last))

    def _response(self, event: Any, out: list[Any]) -> None:
        stream_id = event.stream_id
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        headers = dict(event.headers)
        status = headers.get(b":status", b"")
        if status != b"200":
            try:
                http = int(status)
            except ValueError:
                http = 0
            self._fail(stream_id, http_status_code(http),
                       f"the server answered HTTP {status.decode('ascii', 'replace')}, not gRPC", out)
            return
        content_type = headers.get(b"content-type", b"")
        if not content_type.startswith(b"application/grpc"):
            self._fail(stream_id, Code.UNKNOWN, f"the server answered with content-type "
                                                f"{content_type.decode('ascii', 'replace')!r}, not gRPC",
                       out)
            return
        if b"grpc-status" in headers:  # trailers-only
            self._close_with_status(stream_id, event.headers, out)
            return
        encoding = headers.get(b"grpc-encoding", b"identity").decode("ascii", "replace")
        stream.reader.encoding = encoding
        stream.headers_seen = True
        out.append(CallHeaders(stream_id, decode_metadata(event.headers)))

    def _data(self, event: Any, out: list[Any]) -> None:
        stream_id = event.stream_id
        stream = self.streams.get(stream_id)
        if stream is None:
            self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            return
        stream.owed += event.flow_controlled_length
        try:
            messages = stream.reader.feed(event.data)
        except GRPCWireError as e:
            self._fail(stream_id, e.code, str(e), out)
            return
        for payload in messages:
            size = len(payload) + 5
            stream.queued += size
            out.append(CallMessage(stream_id, payload, size))
        self._ack(stream_id, stream)

    def _close_with_status(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                           out: list[Any]) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        code, message, details = call_status(dict(headers))
        if code == Code.OK and stream.reader.partial:
            code, message = Code.INTERNAL, "the server ended the response in the middle of a message"
        self._close(stream_id, code, message, out, decode_metadata(headers), details)

    def _fail(self, stream_id: int, code: int, message: str, out: list[Any]) -> None:
        self._close(stream_id, code, message, out)
        try:
            self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
        except h2.exceptions.StreamClosedError:
            pass

    def _close(self, stream_id: int, code: int, message: str, out: list[Any],
               metadata: dict[str, Any] | None = None, details: bytes | None = None) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if not stream.end_sent:
            # The server is done before our side: stop sending, and close
            # the stream here too (so that it counts as closed).
            try:
                self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            except h2.exceptions.StreamClosedError:
                pass
        if stream.owed:
            try:
                self.conn.acknowledge_received_data(stream.owed, stream_id)
            except h2.exceptions.StreamClosedError:
                pass
        out.append(CallClosed(stream_id, code, message, metadata or {}, details))


def _error_name(code: Any) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)
