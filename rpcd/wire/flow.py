"""
Stream flow control in the native protocol: credit windows counted in
messages, the same rules on both sides.

A receiver grants its peer credit: the number of MESSAGE frames the peer may
send on one stream.  The server's window for its replies comes from the
C{"window"} option of the CALL that opened the stream (L{DEFAULT_WINDOW} when
absent); the client's window for its messages is granted by the server with
a first C{CREDIT} frame when the handler takes messages.  A receiver hands
credit back in batches: once the application has consumed half a window, it
sends C{[6, id, n]} for the n messages consumed.  So at most one window of
messages is ever queued at a receiver.  A MESSAGE beyond the granted credit is
a protocol error (the connection is closed).
"""

from __future__ import annotations

from typing import Any

from rpcd.errors import ProtocolError

DEFAULT_WINDOW = 512
"""Messages a receiver lets its peer send before it grants more."""

MAX_WINDOW = 1 << 20
"""The largest window or single credit grant accepted."""


def check_window(value: Any) -> int:
    """
    Check a window size read from the wire.

    @param value: the C{"window"} option (None for the default).
    @return: the window, in messages.
    @raise ValueError: not an integer between 1 and L{MAX_WINDOW}.
    """
    if value is None:
        return DEFAULT_WINDOW
    if type(value) is not int or not 1 <= value <= MAX_WINDOW:
        raise ValueError(f"the stream window must be an integer from 1 to {MAX_WINDOW}, "
                         f"got {value!r}")
    return value


def check_credit(n: Any) -> int:
    """
    Check the grant of a CREDIT frame C{[6, id, n]}.

    @param n: the grant (None when the frame has none).
    @return: it.
    @raise ValueError: not an integer from 1 to L{MAX_WINDOW}.
    """
    if type(n) is not int or not 1 <= n <= MAX_WINDOW:
        raise ValueError(f"n must be an integer from 1 to {MAX_WINDOW}, got {n!r:.60}")
    return n


class ReceiveWindow:
    """
    The receiving side of one stream's credit.

    @ivar size: the window, in messages.
    @ivar available: messages the peer may still send.
    """

    __slots__ = ("size", "available", "_consumed", "_batch")

    def __init__(self, size: int, granted: int) -> None:
        """
        @param size: the window, in messages.
        @param granted: the credit already given to the peer.
        """
        self.size = size
        self.available = granted
        self._consumed = 0
        self._batch = max(1, size // 2)

    def received(self, call_id: Any) -> None:
        """
        Count one MESSAGE from the peer.

        @param call_id: the stream, for the error message.
        @raise ProtocolError: the peer had no credit left.
        """
        if self.available <= 0:
            raise ProtocolError(f"stream {call_id}: MESSAGE beyond the granted credit "
                                f"(window {self.size})")
        self.available -= 1

    def consumed(self) -> int:
        """
        Count one message the application took.

        @return: the credit to grant the peer now (0 until half a window has
            been consumed).
        """
        self._consumed += 1
        if self._consumed < self._batch:
            return 0
        n, self._consumed = self._consumed, 0
        self.available += n
        return n
