"""
The client side of rpcd's native protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import INegotiated
from twisted.logger import Logger
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from rpcd.errors import Code, Internal, ProtocolError, RPCError, Unavailable, error_from_wire
from rpcd.client.channel import ClientChannel
from rpcd.wire.fields import check_fields, frame_name, read_id, short
from rpcd.wire.frames import (
    CALL,
    CANCEL,
    CREDIT,
    ERROR,
    GOAWAY,
    MESSAGE,
    PING,
    PONG,
    PREFACE,
    PREFACE_SIZE,
    RESULT,
    DEFAULT_MAX_FRAME,
    FrameReader,
    check_preface,
    encode_frame,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

log = Logger()


class NativeClientProtocol(ClientChannel):
    """
    Calls over the native protocol: many in flight, answered in any order.
    """

    codec_name = "native"
    ready_on_connect = False  # ready once the server's preface arrives (after any TLS handshake)

    def __init__(self, clock: IReactorTime, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        super().__init__(clock)
        self.reader = FrameReader(max_frame)
        self._preface: bytes | None = b""
        self.streams: Any = None
        self._closing = False

    def connectionMade(self) -> None:
        self.transport.write(PREFACE)
        super().connectionMade()

    def send_call(self, call_id: int, method: str, value: Any, timeout: float | None,
                  metadata: dict[str, Any] | None) -> None:
        if timeout is None and not metadata:
            body = [CALL, call_id, method, value]
        else:
            options: dict[str, Any] = {}
            if timeout is not None:
                options["timeout"] = timeout  # checked by ClientChannel.call
            if metadata:
                options["metadata"] = metadata
            body = [CALL, call_id, method, value, options]
        self.transport.write(encode_frame(body))

    def send_cancel(self, call_id: int) -> None:
        if self.transport is not None and self.lost_reason is None:
            self.transport.write(encode_frame([CANCEL, call_id]))

    def send_frame(self, body: list[Any]) -> None:
        """
        Write any frame (used by streams).

        @param body: the frame's fields.
        """
        self.transport.write(encode_frame(body))

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # after a GOAWAY either way, nothing more is read
        if self._preface is not None:
            data = self._preface + data
            if len(data) < PREFACE_SIZE:
                self._preface = data
                return
            try:
                check_preface(data)
            except ProtocolError as e:
                self._broken(f"{self.peer_name} does not speak rpcd's native protocol ({e})")
                return
            self._preface = None
            self.ready()
            data = data[PREFACE_SIZE:]
        frames, error = self.reader.split(data)
        try:
            for frame in frames:
                # The common reply is checked and resolved here; the rest, and
                # any reply with a bad field, goes through _frame_received.
                # (call_id >> 63 is nonzero for ids out of 0..2^63-1.)
                if len(frame) == 3 and frame[0] == RESULT:
                    _, call_id, value = frame
                    if type(call_id) is int and not call_id >> 63:
                        d = self.pending.pop(call_id, None)
                        if d is not None:
                            d.callback(value)
                        continue
                if self._frame_received(frame):
                    return
        except ProtocolError as e:
            error = e
        if error is not None:
            self._broken(f"bad frame from {self.peer_name}: {error}")

    def _frame_received(self, frame: list[Any]) -> bool:
        """
        Handle one frame from the server other than a plain RESULT.

        A frame for a pending call with a bad field fails that call with
        L{Internal}, naming the field; a frame whose id cannot be read, or
        one a server may not send, is a protocol error.

        @param frame: the frame body.
        @return: whether the connection is closing (a GOAWAY).
        @raise ProtocolError: the connection must close.
        """
        kind = frame[0]
        if kind == RESULT or kind == ERROR:
            call_id = read_id(frame)
            if call_id not in self.pending:
                return False  # answered already (timed out, cancelled): ignored
            try:
                if kind == RESULT:
                    check_fields(frame, "[1, id, value]")
                    self.resolve(call_id, frame[2])
                else:
                    self.reject(call_id, _remote_error(frame))
            except (TypeError, ValueError) as e:
                self.reject(call_id, Internal(f"bad {frame_name(kind)} frame from "
                                              f"{self.peer_name} for call {call_id}: {e}"))
        elif kind == PING:
            self.transport.write(encode_frame([PONG, frame[1] if len(frame) > 1 else None]))
        elif kind == PONG:
            pass
        elif kind == GOAWAY:
            message = frame[3] if len(frame) > 3 else None
            if type(message) is not str:
                message = f"server closed the connection (GOAWAY {short(frame[1:])})"
            last_id = frame[1] if len(frame) > 1 else None
            code = frame[2] if len(frame) > 2 else None
            if code == Code.OK and type(code) is int and type(last_id) is int and last_id >= 0:
                # Graceful: the calls up to last_id are answered, then the
                # server closes; the others were not run.
                self.go_away(last_id, message)
                return False
            self._closing = True
            self.fail_all(Unavailable(f"{self.peer_name}: {message}"))
            self.transport.loseConnection()
            return True
        elif kind == MESSAGE or kind == CREDIT:
            if self.streams is not None:
                self.streams.frame_received(frame)
            else:
                read_id(frame)  # no stream was opened: a good id is ignored
        else:
            raise ProtocolError(f"unexpected {frame_name(kind)} from a server")
        return False

    def _broken(self, why: str) -> None:
        """
        The server broke the protocol: say why in a GOAWAY and close.
        """
        log.error("{why}", why=why)
        self._closing = True
        self.fail_all(Unavailable(why))
        self.transport.write(encode_frame([GOAWAY, 0, int(Code.INVALID_ARGUMENT),
                                           f"protocol error: {why}"]))
        self.transport.loseConnection()

    def describe_loss(self, reason: Failure | None) -> str:
        why = super().describe_loss(reason)
        if self._preface == b"" and not INegotiated.providedBy(self.transport):
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
        seconds = self.clock.seconds
        self._last_read = seconds()
        received = self.dataReceived

        def relay(data: bytes) -> None:
            self._last_read = seconds()
            received(data)
        self.dataReceived = relay  # type: ignore[method-assign]
        self._keepalive = KeepAlive(self.clock, interval, timeout, lambda: self._last_read,
                                    self._ping, self._keepalive_expired)
        self._keepalive.start()

    def _ping(self, opaque: int) -> None:
        if not self._closing and self.lost_reason is None:
            self.transport.write(encode_frame([PING, opaque]))

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
        if self.streams is not None:
            self.streams.connection_lost(reason)


def _remote_error(frame: list[Any]) -> RPCError:
    """
    The error an ERROR frame C{[2, id, code, message, details]} reports.

    @raise TypeError: the code is not an integer or the message not a
        string.
    @raise ValueError: too few fields.
    """
    check_fields(frame, "[2, id, code, message]")
    code, message = frame[2], frame[3]
    if type(code) is not int:
        raise TypeError(f"code must be an integer, got {short(code)}")
    if type(message) is not str:
        raise TypeError(f"message must be a string, got {short(message)}")
    return error_from_wire(code, message, frame[4] if len(frame) > 4 else None)


__all__ = ["NativeClientProtocol"]
