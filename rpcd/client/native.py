"""
The client side of rpcd's native protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import INegotiated
from twisted.logger import Logger
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from rpcd.errors import Code, Internal, Unavailable, error_from_wire
from rpcd.client.channel import ClientChannel, PendingCall
from rpcd.wire.connection import (
    BAD_FRAME,
    CONNECTION_ERROR,
    CREDIT,
    ERROR,
    GOAWAY,
    MESSAGE,
    PING,
    PREFACE_RECEIVED,
    RESULT,
    NativeConnection,
    PrefaceError,
)
from rpcd.wire.fields import frame_name
from rpcd.wire.frames import DEFAULT_MAX_FRAME, encode_frame

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

log = Logger()


class NativeClientProtocol(ClientChannel):
    """
    Calls over the native protocol: many in flight, answered in any order.
    The IO, timers and Deferreds around a L{NativeConnection}, which holds
    every frame rule.

    @ivar conn: the connection's protocol state (sans-IO).
    """

    codec_name = "native"
    ready_on_connect = False  # ready once the server's preface arrives (after any TLS handshake)

    def __init__(self, clock: IReactorTime, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        super().__init__(clock)
        self.conn = NativeConnection(client_side=True, max_frame=max_frame)
        self.reader = self.conn  # buffered() and clear(), as the server's
        self._heard = False  # any byte from the server yet
        self.in_read = False  # in dataReceived: writes (and stream wakes) wait for its end
        self.streams: Any = None
        self._closing = False
        self._read_clock: Callable[[], float] | None = None  # set by start_keepalive
        self._last_read = 0.0

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())
        super().connectionMade()

    def call(self, method: str, value: Any = None, timeout: float | None = None,
             metadata: dict[str, Any] | None = None) -> Deferred[Any]:
        """
        L{ClientChannel.call}, with its common case (a method name, no
        timeout, no metadata, a connection in use) inline down to the frame.
        """
        if (timeout is not None or metadata is not None or type(method) is not str
                or self.lost_reason is not None or self.going_away is not None):
            return super().call(method, value, timeout, metadata)
        call_id = next(self._ids)
        conn = self.conn
        try:
            conn.send_call(call_id, method, value)
        except Exception:
            return super().call(method, value)  # it names the error
        d = PendingCall(self._cancel_call)
        d.call_id = call_id
        d.request = (method, value, None, None)
        self.pending[call_id] = d
        if not self.in_read:
            self.transport.write(conn.data_to_send())
        return d

    def send_call(self, call_id: int, method: str, value: Any, timeout: float | None,
                  metadata: dict[str, Any] | None) -> None:
        conn = self.conn
        conn.send_call(call_id, method, value, timeout, metadata)  # checked by ClientChannel.call
        if not self.in_read:
            self.transport.write(conn.data_to_send())
        # else the calls made by the callbacks of one read (a caller that
        # calls again as each answer comes) go out in one write at its end.

    def send_cancel(self, call_id: int) -> None:
        if self.transport is not None and self.lost_reason is None:
            self.conn.send_cancel(call_id)
            self.flush()

    def send_frame(self, body: list[Any]) -> None:
        """
        Write any frame, outside the connection's rules (kept for callers
        of old; streams use L{conn} and L{flush}).

        @param body: the frame's fields.
        """
        self.transport.write(encode_frame(body))

    def flush(self) -> None:
        """
        Write what the connection has queued.
        """
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # after a GOAWAY either way, nothing more is read
        read_clock = self._read_clock
        if read_clock is not None:
            self._last_read = read_clock()  # for the keepalive
        self._heard = True
        self.in_read = True
        try:
            self._events_received(self.conn.receive_data(data))
        finally:
            self.in_read = False
        streams = self.streams
        if streams is not None and streams.waking:
            streams.wake()  # iterations waiting for the messages of this read
        self.flush()  # new calls, PONGs, credit

    def _events_received(self, events: list[Any]) -> None:
        pending = self.pending
        for event in events:
            # The common reply is resolved here; the rest goes through
            # _event_received.
            if len(event) == 3 and event[0] == RESULT:
                d = pending.pop(event[1], None)
                if d is not None:
                    d.callback(event[2])
                continue
            if self._event_received(event):
                return

    def _event_received(self, event: Any) -> bool:
        """
        Handle one event of the connection other than a plain RESULT.

        A reply for a pending call with a bad field fails that call with
        L{Internal}, naming the field.

        @param event: the event.
        @return: whether the connection is closing (a GOAWAY, a protocol
            error).
        """
        kind = event[0]
        if kind == RESULT:
            self.resolve(event[1], event[2])
        elif kind == ERROR:
            _, call_id, code, message, details = event
            if call_id in self.pending:
                self.reject(call_id, error_from_wire(code, message, details))
        elif kind == BAD_FRAME:
            _, call_id, bad, why = event
            if bad == MESSAGE or bad == CREDIT:
                if self.streams is not None:
                    self.streams.event_received(event)
            elif call_id in self.pending:
                self.reject(call_id, Internal(f"bad {frame_name(bad)} frame from "
                                              f"{self.peer_name} for call {call_id}: {why}"))
        elif kind == MESSAGE or kind == CREDIT:
            if self.streams is not None:
                self.streams.event_received(event)
        elif kind == PING:
            self.conn.send_pong(event[1])
        elif kind == PREFACE_RECEIVED:
            self.ready()
        elif kind == GOAWAY:
            _, last_id, _, message, graceful = event
            if graceful:
                # The calls up to last_id are answered, then the server
                # closes; the others were not run.
                self.go_away(last_id, message)
                return False
            self._closing = True
            self.fail_all(Unavailable(f"{self.peer_name}: {message}"))
            self.transport.loseConnection()
            return True
        elif kind == CONNECTION_ERROR:
            error = event[1]
            if isinstance(error, PrefaceError):
                self._broken(f"{self.peer_name} does not speak rpcd's native protocol ({error})")
            else:
                self._broken(f"bad frame from {self.peer_name}: {error}")
            return True
        # PONG needs nothing.
        return False

    def _broken(self, why: str) -> None:
        """
        The server broke the protocol: say why in a GOAWAY and close.
        """
        log.error("{why}", why=why)
        self._closing = True
        self.fail_all(Unavailable(why))
        conn = self.conn
        conn.close(int(Code.INVALID_ARGUMENT), f"protocol error: {why}")
        self.transport.write(conn.data_to_send())
        self.transport.loseConnection()

    def describe_loss(self, reason: Failure | None) -> str:
        why = super().describe_loss(reason)
        if not self._heard and not INegotiated.providedBy(self.transport):
            return (f"the server closed the connection without a word ({why}): "
                    "it may expect TLS on this port (use a tls: endpoint), or not be an rpcd server")
        return why

    def start_keepalive(self, interval: float, timeout: float) -> None:
        """
        Ping the server when the connection has been quiet for C{interval}
        seconds; when nothing comes back within C{timeout}, fail every call
        with L{Unavailable} and drop the connection (a half-open link).
        The time of each read is noted only from now on, so a client without
        keepalive reads as fast as before.

        @param interval: seconds of quiet before a PING (the server must
            allow it: its C{limits.keepalive_min_ping_interval}).
        @param timeout: seconds to wait for an answer.
        """
        from rpcd.core.keepalive import KeepAlive
        self._read_clock = self.clock.seconds
        self._last_read = self._read_clock()
        self._keepalive = KeepAlive(self.clock, interval, timeout, lambda: self._last_read,
                                    self._ping, self._keepalive_expired)
        self._keepalive.start()

    def _ping(self, opaque: int) -> None:
        if not self._closing and self.lost_reason is None:
            self.conn.send_ping(opaque)
            self.flush()

    def _keepalive_expired(self, why: str) -> None:
        log.warn("dropping the connection to {peer}: {why}", peer=self.peer_name, why=why)
        self._closing = True
        self.fail_all(Unavailable(f"{self.peer_name}: {why}"))
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        keepalive = getattr(self, "_keepalive", None)
        if keepalive is not None:
            keepalive.stop()
        super().connectionLost(reason)
        self.conn.clear()
        if self.streams is not None:
            self.streams.connection_lost(reason)



__all__ = ["NativeClientProtocol"]
