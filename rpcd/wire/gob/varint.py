"""
Gob's integers: an unsigned integer below 128 is one byte, a larger one is a
byte holding minus its length then its big-endian bytes; a signed integer is
sent as an unsigned one with the sign in the low bit.
"""

from __future__ import annotations

from rpcd.wire.gob.errors import GobEncodeError, GobError


_UINT1 = [bytes((i,)) for i in range(128)]


def _uint_bytes(u: int) -> bytes:
    if u < 128:
        if u < 0:
            raise GobEncodeError(f"gob: negative value {u} for an unsigned integer")
        return _UINT1[u]
    n = (u.bit_length() + 7) >> 3
    if n > 8:
        raise GobEncodeError(f"gob: integer {u} does not fit 64 bits")
    return bytes((256 - n,)) + u.to_bytes(n, "big")


def _int_bytes(i: int) -> bytes:
    return _uint_bytes(i << 1 if i >= 0 else (~i << 1) | 1)


_SMALL_INTS = [(~(b >> 1)) if b & 1 else b >> 1 for b in range(128)]


def _uint_tail(buf: bytes, pos: int, b: int) -> tuple[int, int]:
    """The rest of a multi-byte uint whose first byte C{b} was before C{pos}."""
    n = 256 - b
    end = pos + n
    if n > 8:
        raise GobError(f"gob: invalid unsigned integer length byte {b:#x}")
    if end > len(buf):
        raise GobError("gob: unsigned integer runs past the end of the message")
    return int.from_bytes(buf[pos:end], "big"), end


def _read_uint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 128:
        return b, pos + 1
    return _uint_tail(buf, pos + 1, b)


def _read_int(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 128:
        return _SMALL_INTS[b], pos + 1
    u, pos = _uint_tail(buf, pos + 1, b)
    return (~(u >> 1) if u & 1 else u >> 1), pos
