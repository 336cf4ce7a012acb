"""
The encode, decode and skip operations of the seven basic types (bool, int,
uint, float64, []byte, string, complex128), by wire type id, and the
signatures of all encode and decode operations.
"""

from __future__ import annotations

import struct as _struct
from typing import Any, Callable

from rpcd.wire.gob.errors import GobEncodeError, GobError
from rpcd.wire.gob.varint import _SMALL_INTS, _read_uint, _uint_bytes, _uint_tail


_EncOp = Callable[[bytearray, Any], None]
_DecOp = Callable[[bytes, int, int], tuple[Any, int]]
_pack_le_d = _struct.Struct("<d").pack
_unpack_le_d = _struct.Struct("<d").unpack
_ZEROS = [b"\0" * i for i in range(9)]
_SMALL_FLOATS = [_unpack_le_d(b"\0" * 7 + bytes((b,)))[0] for b in range(128)]


def _enc_uint(out: bytearray, v: int) -> None:
    if 0 <= v < 128:
        out.append(v)
    else:
        out += _uint_bytes(v)


def _enc_int(out: bytearray, v: int) -> None:
    u = v << 1 if v >= 0 else (~v << 1) | 1
    if u < 128:
        out.append(u)
    else:
        n = (u.bit_length() + 7) >> 3
        if n > 8:
            raise GobEncodeError(f"gob: integer {v} does not fit 64 bits")
        out.append(256 - n)
        out += u.to_bytes(n, "big")


def _enc_bool(out: bytearray, v: bool) -> None:
    if v is True or v is False:
        out.append(v)
    else:
        raise GobEncodeError(f"gob: {type(v).__name__} is not a bool")


def _enc_float(out: bytearray, v: float) -> None:
    # Go sends the float64 bits byte-reversed as a uint: the little-endian
    # packing is that uint's big-endian form, so strip its leading zeros.
    raw = _pack_le_d(v).lstrip(b"\0")
    n = len(raw)
    if n == 0:
        out.append(0)
    elif n == 1 and raw[0] < 128:
        out += raw
    else:
        out.append(256 - n)
        out += raw


def _enc_complex(out: bytearray, v: complex) -> None:
    _enc_float(out, v.real)
    _enc_float(out, v.imag)


def _enc_string(out: bytearray, v: str) -> None:
    b = v.encode("utf-8", "surrogateescape")
    n = len(b)
    if n < 128:
        out.append(n)
    else:
        out += _uint_bytes(n)
    out += b


def _enc_bytes(out: bytearray, v: bytes) -> None:
    if not isinstance(v, (bytes, bytearray)):
        raise GobEncodeError(f"gob: {type(v).__name__} is not bytes")
    n = len(v)
    if n < 128:
        out.append(n)
    else:
        out += _uint_bytes(n)
    out += v


_BASIC_ENC: dict[int, Callable[[bytearray, Any], None]] = {
    1: _enc_bool,
    2: _enc_int,
    3: _enc_uint,
    4: _enc_float,
    5: _enc_bytes,
    6: _enc_string,
    7: _enc_complex,
}


def _dec_uint(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    b = buf[pos]
    if b < 128:
        return b, pos + 1
    return _uint_tail(buf, pos + 1, b)


def _dec_int(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    b = buf[pos]
    if b < 128:
        return _SMALL_INTS[b], pos + 1
    u, pos = _uint_tail(buf, pos + 1, b)
    return (~(u >> 1) if u & 1 else u >> 1), pos


def _dec_bool(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    b = buf[pos]
    if b < 128:
        return b != 0, pos + 1
    u, pos = _uint_tail(buf, pos + 1, b)
    return u != 0, pos


def _dec_float(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    b = buf[pos]
    if b < 128:
        return _SMALL_FLOATS[b], pos + 1
    n = 256 - b
    end = pos + 1 + n
    if n > 8 or end > len(buf):
        raise GobError("gob: bad float encoding")
    return _unpack_le_d(_ZEROS[8 - n] + buf[pos + 1 : end])[0], end


def _dec_complex(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    re, pos = _dec_float(buf, pos, depth)
    im, pos = _dec_float(buf, pos, depth)
    return complex(re, im), pos


def _dec_string(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    b = buf[pos]
    if b < 128:
        pos += 1
        end = pos + b
    else:
        n, pos = _uint_tail(buf, pos + 1, b)
        end = pos + n
    if end > len(buf):
        raise GobError("gob: string length exceeds the message")
    return buf[pos:end].decode("utf-8", "surrogateescape"), end


def _dec_bytes(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    b = buf[pos]
    if b < 128:
        pos += 1
        end = pos + b
    else:
        n, pos = _uint_tail(buf, pos + 1, b)
        end = pos + n
    if end > len(buf):
        raise GobError("gob: byte slice length exceeds the message")
    return buf[pos:end], end


def _skip_uint(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    b = buf[pos]
    if b < 128:
        return None, pos + 1
    return None, _uint_tail(buf, pos + 1, b)[1]


def _skip_two(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    return _skip_uint(buf, _skip_uint(buf, pos, depth)[1], depth)


def _skip_counted(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    n, pos = _read_uint(buf, pos)
    if n > len(buf) - pos:
        raise GobError("gob: length exceeds the message")
    return None, pos + n


_BASIC_DEC: dict[int, _DecOp] = {
    1: _dec_bool,
    2: _dec_int,
    3: _dec_uint,
    4: _dec_float,
    5: _dec_bytes,
    6: _dec_string,
    7: _dec_complex,
}
_BASIC_SKIP: dict[int, _DecOp] = {
    1: _skip_uint,
    2: _skip_uint,
    3: _skip_uint,
    4: _skip_uint,
    5: _skip_counted,
    6: _skip_counted,
    7: _skip_two,
}
