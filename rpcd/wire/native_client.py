"""
The client side of rpcd's native protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import INegotiated
from twisted.logger import Logger
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from rpcd.errors import ProtocolError, Unavailable, error_from_wire
from rpcd.wire.channel import ClientChannel
from rpcd.wire.frames import (
    CALL,
    CANCEL,
    ERROR,
    GOAWAY,
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
                options["timeout"] = float(timeout)
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
        try:
            for frame in self.reader.feed(data):
                kind = frame[0]
                if kind == RESULT:
                    self.resolve(frame[1], frame[2])
                elif kind == ERROR:
                    self.reject(frame[1], error_from_wire(frame[2], frame[3],
                                                          frame[4] if len(frame) > 4 else None))
                elif kind == PING:
                    self.transport.write(encode_frame([PONG, frame[1] if len(frame) > 1 else None]))
                elif kind == GOAWAY:
                    message = frame[3] if len(frame) > 3 else "server closed the connection"
                    self.fail_all(Unavailable(f"{self.peer_name}: {message}"))
                    self.transport.loseConnection()
                    return
                elif self.streams is not None:
                    self.streams.frame_received(frame)
        except (ProtocolError, IndexError, TypeError) as e:
            self._broken(f"bad frame from {self.peer_name}: {e}")

    def _broken(self, why: str) -> None:
        log.error("{why}", why=why)
        self.fail_all(Unavailable(why))
        self.transport.loseConnection()

    def describe_loss(self, reason: Failure | None) -> str:
        why = super().describe_loss(reason)
        if self._preface == b"" and not INegotiated.providedBy(self.transport):
            return (f"the server closed the connection without a word ({why}): "
                    "it may expect TLS on this port (use a tls: endpoint), or not be an rpcd server")
        return why

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.streams is not None:
            self.streams.connection_lost(reason)


__all__ = ["NativeClientProtocol"]
