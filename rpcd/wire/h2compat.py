"""
The one place rpcd's gRPC server relies on an internal of C{h2}: the
connection's C{incoming_buffer} (an C{h2.frame_buffer.FrameBuffer}).

C{h2} checks a frame's length against SETTINGS_MAX_FRAME_SIZE only once the
whole frame has arrived, so a peer announcing a 16 MiB frame is buffered up
to 16 MiB first.  L{EarlyFrameBuffer} does the same check (raising the same
C{FrameTooLargeError}, so the connection ends with GOAWAY
FRAME_SIZE_ERROR) as soon as the frame's 9-byte header is in the buffer.

L{works} checks that C{FrameBuffer} still keeps its bytes in C{_data} with
the next frame at its start; when it does not, L{install} leaves h2's own
buffer (a correct connection, with h2's later check).
"""

from __future__ import annotations

from typing import Any

from h2.exceptions import FrameTooLargeError
from h2.frame_buffer import FrameBuffer

DEFAULT_MAX_FRAME_SIZE = 16384
"""SETTINGS_MAX_FRAME_SIZE's initial value (RFC 9113 6.5.2)."""


class EarlyFrameBuffer(FrameBuffer):
    """
    C{h2}'s frame buffer, refusing an overlong frame on its header.

    After C{h2} has iterated the buffer, what is left is at most one
    incomplete frame at the start of C{_data}, so checking the header at
    the start on each C{add_data} checks every frame before more than one
    read's worth of its payload is held.
    """

    def add_data(self, data: Any) -> None:
        super().add_data(data)
        buffered = self._data
        if len(buffered) >= 9:
            length = int.from_bytes(buffered[:3], "big")
            limit = self.max_frame_size or DEFAULT_MAX_FRAME_SIZE
            if length > limit:
                raise FrameTooLargeError(
                    f"Received overlong frame: length {length}, max {limit}")


def works() -> bool:
    """
    Whether L{EarlyFrameBuffer} sees C{FrameBuffer}'s bytes as it expects.
    """
    try:
        buffer = EarlyFrameBuffer(server=False)
        buffer.max_frame_size = DEFAULT_MAX_FRAME_SIZE
        buffer.add_data(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")  # SETTINGS ACK
        if list(buffer) == [] or bytes(buffer._data):
            return False
        try:
            buffer.add_data(b"\x00\x50\x00\x00\x00\x00\x00\x00\x01")  # DATA of 20480
        except FrameTooLargeError:
            return True
        return False
    except Exception:  # noqa: BLE001 - any surprise means: keep h2's buffer
        return False


_WORKS: bool | None = None


def install(conn: Any) -> bool:
    """
    Give a fresh C{H2Connection} (before any data) an L{EarlyFrameBuffer},
    when L{works}.

    @return: whether it is in place (else h2's own buffer is).
    """
    global _WORKS
    if _WORKS is None:
        _WORKS = works()
    old = conn.incoming_buffer
    if not _WORKS or type(old) is not FrameBuffer or old._data:
        return False
    conn.incoming_buffer = EarlyFrameBuffer(server=not conn.config.client_side)
    return True
