"""
The native protocol's framing: the preface, frame types, and a reader that
checks every length before buffering for it.

Byte layout (see C{docs/protocol.md})::

    preface  = 00 'R' 'P' 'C' 'D' version:u8 flags:u16be      (8 bytes, each side once)
    frame    = length:u32be body                               (length = len(body))
    body     = msgpack array [type, ...]

The frame types are the C{FrameType} members below.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Iterator

import msgpack

from rpcd.errors import ProtocolError

MAGIC = b"\x00RPCD"
VERSION = 1
PREFACE = MAGIC + bytes([VERSION]) + b"\x00\x00"
PREFACE_SIZE = len(PREFACE)
DEFAULT_MAX_FRAME = 4 * 1024 * 1024

_COPY_BELOW = 4096

_KEEP_WHOLE_ABOVE = 60 * 1024
"""Bytes kept for an unfinished frame are copied to an object of their own
size unless the read that brought them was about this large: a socket read
allocates its whole buffer (64 KiB in Twisted) and shrinks it in place, and
the freed tail cannot hold the next read's buffer, so a peer that keeps many
frames unfinished would otherwise cost up to 64 KiB of memory per read
however few bytes each read brought (about 1.4x what the input budget
counts, measured with 150 connections each trickling a 4 MiB frame)."""


def _own(data: bytes) -> bytes:
    """
    @return: C{data}, or a copy of it the size of its bytes (see
        L{_KEEP_WHOLE_ABOVE}).
    """
    if len(data) >= _KEEP_WHOLE_ABOVE:
        return data
    return bytes(memoryview(data))

_length = struct.Struct(">I")
pack_length = _length.pack
unpack_length = _length.unpack_from


class FrameType(enum.IntEnum):
    """The first element of every frame body."""

    CALL = 0
    """C{[0, id, method, argument, options?]}: start a call."""
    RESULT = 1
    """C{[1, id, value]}: the call succeeded (for a stream: it ended well)."""
    ERROR = 2
    """C{[2, id, code, message, details]}: the call failed."""
    CANCEL = 3
    """C{[3, id]}: the caller gives up on the call."""
    MESSAGE = 4
    """C{[4, id, value]}: one stream message."""
    END = 5
    """C{[5, id]}: the sender's half of a stream is done (half-close)."""
    CREDIT = 6
    """C{[6, id, n]}: the receiver can take C{n} more stream messages."""
    PING = 7
    """C{[7, opaque]}: liveness check; answered with PONG."""
    PONG = 8
    """C{[8, opaque]}: the answer to PING, echoing its opaque value."""
    GOAWAY = 9
    """C{[9, last_id, code, message]}: no new calls; the connection closes."""


CALL, RESULT, ERROR, CANCEL, MESSAGE, END, CREDIT, PING, PONG, GOAWAY = (int(t) for t in FrameType)

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def encode_frame(body: list[Any]) -> bytes:
    """
    Encode one frame.

    @param body: the frame's fields, type first.
    @return: the length-prefixed bytes.
    @raise TypeError: a value msgpack cannot encode.
    """
    data = _packb(body)
    return pack_length(len(data)) + data


def check_preface(data: bytes) -> int:
    """
    Check a peer's preface.

    @param data: at least L{PREFACE_SIZE} bytes.
    @return: the peer's protocol version.
    @raise ProtocolError: the bytes are not an rpcd preface.
    """
    if data[:len(MAGIC)] != MAGIC:
        raise ProtocolError(f"not an rpcd native preface: {bytes(data[:PREFACE_SIZE])!r}")
    return data[len(MAGIC)]


class FrameReader:
    """
    Splits a byte stream into decoded frame bodies.

    A frame longer than the limit is refused as soon as its length prefix
    arrives, before any of it is buffered.  The bytes of an unfinished frame
    are kept as the reads brought them and joined once, when the frame is
    complete (a large frame costs one copy, not one per read).
    """

    __slots__ = ("max_frame", "_chunks", "_held", "_need")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        """
        @param max_frame: the largest frame body accepted, in bytes.
        """
        self.max_frame = max_frame
        # The unfinished frame's bytes (the shared empty tuple when there is
        # none: an idle connection holds no list), their total, and how
        # many bytes it needs in all before it can be split (its length
        # prefix, or the whole frame once the prefix is known).
        self._chunks: list[bytes] | tuple[()] = ()
        self._held = 0
        self._need = 0

    def feed(self, data: bytes) -> Iterator[list[Any]]:
        """
        Add bytes and yield every frame body now complete.

        @param data: bytes from the transport.
        @return: an iterator of frame bodies (lists, type first).
        @raise ProtocolError: a frame is too long, not msgpack, or not a
            non-empty array starting with an integer type; raised after the
            good frames before it have been yielded.
        """
        bodies, error = self.split(data)
        yield from bodies
        if error is not None:
            raise error

    def split(self, data: bytes) -> tuple[list[list[Any]], ProtocolError | None]:
        """
        Add bytes and return every frame body now complete, at once.

        The same as L{feed} without a generator, for the server's hot path.

        @param data: bytes from the transport.
        @return: C{(bodies, error)}: the frame bodies (lists, type first) and
            None, or, when the stream turned out broken (a frame too long, not
            msgpack, or not a non-empty array starting with an integer type),
            the good frames before it and the L{ProtocolError}.
        """
        chunks = self._chunks
        if chunks:
            held = self._held + len(data)
            if held < self._need:
                chunks.append(_own(data))
                self._held = held
                return [], None
            chunks.append(data)
            buf = b"".join(chunks)
            self._chunks = ()
            self._held = 0
        else:
            buf = data
        offset = 0
        end_of_data = len(buf)
        limit = self.max_frame
        unpackb = msgpack.unpackb
        bodies: list[list[Any]] = []
        append = bodies.append
        error = None
        view = memoryview(buf)
        need = 4
        while end_of_data - offset >= 4:
            (size,) = unpack_length(buf, offset)
            if size > limit:
                error = ProtocolError(f"frame of {size} bytes is over the {limit}-byte limit")
                break
            end = offset + 4 + size
            if end > end_of_data:
                need = 4 + size
                break
            try:
                # unpackb's defaults are the protocol's (raw=False: str is
                # text); passing them as keywords would cost more than the
                # decoding of a small frame.  A small frame is cheaper to
                # copy out than to view; a large one is not copied.
                if size < _COPY_BELOW:
                    body = unpackb(buf[offset + 4:end])
                else:
                    body = unpackb(view[offset + 4:end])
            except Exception as e:
                error = ProtocolError(f"frame is not valid msgpack: {e}")
                break
            offset = end
            if type(body) is not list or not body or type(body[0]) is not int:
                error = ProtocolError(f"frame body must be an array starting with its type, "
                                      f"got {_short(body)}")
                break
            append(body)
        view.release()
        if offset < end_of_data and error is None:
            rest = buf[offset:] if offset else _own(buf)
            self._chunks = [rest]
            self._held = len(rest)
            self._need = need
        return bodies, error

    def buffered(self) -> int:
        """
        @return: bytes held for an incomplete frame.
        """
        return self._held

    def clear(self) -> None:
        """
        Drop the bytes held for an incomplete frame (the connection is
        gone: free them now, not when its objects are collected).
        """
        self._chunks = ()
        self._held = self._need = 0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
