"""
The credit of one native-protocol stream, both directions, as
L{rpcd.wire.connection.NativeConnection} keeps it (sans-IO; the rules are
those of L{rpcd.wire.flow} and C{docs/protocol.md}, "Flow control").
"""

from __future__ import annotations

from rpcd.wire.flow import MAX_WINDOW, ReceiveWindow
from rpcd.wire.frames import ProtocolError


class StreamCredit:
    """
    What one open stream may send and receive.

    @ivar send: MESSAGE frames we may send now (granted by the peer).
    @ivar receive: the window of the peer's MESSAGE frames, or None while
        we have granted none (a server stream whose method takes no
        messages: any MESSAGE is a protocol error).
    @ivar peer_ended: the peer sent END (no MESSAGE may follow).
    """

    __slots__ = ("send", "receive", "peer_ended")

    def __init__(self, send: int, receive: ReceiveWindow | None) -> None:
        """
        @param send: the credit the peer gave us with the stream.
        @param receive: the window we gave the peer, or None.
        """
        self.send = send
        self.receive = receive
        self.peer_ended = False

    def received(self, call_id: int) -> None:
        """
        Count one MESSAGE from the peer.

        @param call_id: the stream, for the error message.
        @raise ProtocolError: after the peer's END, before any grant, or
            beyond the credit granted.
        """
        if self.peer_ended:
            raise ProtocolError(f"stream {call_id}: MESSAGE after END")
        window = self.receive
        if window is None:
            raise ProtocolError(f"stream {call_id}: MESSAGE beyond the granted credit "
                                "(this method takes no messages)")
        window.received(call_id)

    def granted(self, call_id: int, n: int) -> None:
        """
        Add a checked grant of a CREDIT frame from the peer.

        @param call_id: the stream, for the error message.
        @param n: the grant, 1 to L{MAX_WINDOW}.
        @raise ProtocolError: the credit now exceeds L{MAX_WINDOW}.
        """
        self.send += n
        if self.send > MAX_WINDOW:
            raise ProtocolError(f"stream {call_id}: credit over {MAX_WINDOW} messages")


__all__ = ["StreamCredit"]
