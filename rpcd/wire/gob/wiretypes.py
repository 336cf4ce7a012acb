"""
Type definitions on the wire: Go's C{wireType} messages that introduce each
non-basic type id, built for the types we send (L{_definition}) and parsed
from the peer's (L{_parse_wire_type} into a L{_Wire}).
"""

from __future__ import annotations

from typing import Callable

from rpcd.wire.gob.errors import GobEncodeError, GobError
from rpcd.wire.gob.gotypes import Array, GoType, Map, Opaque, Slice, Struct, _need
from rpcd.wire.gob.primitives import _dec_string
from rpcd.wire.gob.varint import _int_bytes, _read_int, _read_uint, _uint_bytes


# Go's decoder refuses definitions of ids below 64; its encoder starts at 65.
_FIRST_WIRE_ID = 64
_FIRST_OWN_ID = 65


def _definition(t: GoType, tid: int, define: Callable[[GoType], int]) -> bytes:
    """
    The length-prefixed message that defines C{t} as wire type C{tid}.

    @param define: called for each inner type, in order, for its wire id
        (it queues the inner type's own definition if that is new).
    """
    # Go names unnamed composite types by their Go syntax ("[]int"), but
    # sends "" for an anonymous struct.
    name = t.name if isinstance(t, (Struct, Opaque)) else str(t)
    if isinstance(t, Slice):
        body = _wire_struct(1, [_common(name, tid), _int_bytes(define(_need(t.elem)))])
    elif isinstance(t, Array):
        elem = define(_need(t.elem))
        body = _wire_struct(
            0,
            [
                _common(name, tid),
                _int_bytes(elem),
                _int_bytes(t.length) if t.length else None,
            ],
        )
    elif isinstance(t, Map):
        key = define(_need(t.key))
        elem = define(_need(t.elem))
        body = _wire_struct(3, [_common(name, tid), _int_bytes(key), _int_bytes(elem)])
    elif isinstance(t, Struct):
        fields = [
            _fields_struct([_str_bytes(f.name), _int_bytes(define(f.type))])
            for f in t.fields
        ]
        field_slice = (
            _uint_bytes(len(fields)) + b"".join(fields) if fields else None
        )
        body = _wire_struct(2, [_common(name, tid), field_slice])
    elif isinstance(t, Opaque):
        body = _wire_struct(4 + Opaque.KINDS.index(t.kind), [_common(name, tid)])
    else:
        raise GobEncodeError(f"gob: cannot encode type {t!r}")
    msg = _int_bytes(-tid) + body
    return _uint_bytes(len(msg)) + msg


def _str_bytes(s: str) -> bytes | None:
    if not s:
        return None
    b = s.encode("utf-8", "surrogateescape")
    return _uint_bytes(len(b)) + b


def _fields_struct(values: list[bytes | None]) -> bytes:
    """A struct body from encoded field values (None: omitted), terminated."""
    out = bytearray()
    last = -1
    for i, v in enumerate(values):
        if v is not None:
            out += _uint_bytes(i - last)
            out += v
            last = i
    out.append(0)
    return bytes(out)


def _common(name: str, tid: int) -> bytes:
    return _fields_struct([_str_bytes(name), _int_bytes(tid)])


def _wire_struct(kind_field: int, values: list[bytes | None]) -> bytes:
    """A wireType whose field C{kind_field} holds the given struct."""
    return _uint_bytes(kind_field + 1) + _fields_struct(values) + b"\x00"


class _Wire:
    """A type definition received from the peer."""

    __slots__ = ("kind", "name", "elem", "key", "length", "fields")

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        self.elem = 0
        self.key = 0
        self.length = 0
        self.fields: list[tuple[str, int]] = []


_WIRE_KINDS = ("array", "slice", "struct", "map") + Opaque.KINDS
# Which field of each wireType kind's struct holds what.
_WIRE_LAYOUT = {
    "array": ("common", "elem", "length"),
    "slice": ("common", "elem"),
    "struct": ("common", "fields"),
    "map": ("common", "key", "elem"),
}


def _parse_wire_type(msg: bytes, pos: int) -> tuple[_Wire, int]:
    """Parse a wireType struct value (the body of a type definition)."""
    wire: _Wire | None = None
    fnum = -1
    while True:
        delta, pos = _read_uint(msg, pos)
        if delta == 0:
            break
        fnum += delta
        if fnum >= len(_WIRE_KINDS):
            raise GobError(f"gob: unknown wireType field {fnum}")
        if wire is not None:
            raise GobError("gob: type definition with more than one kind")
        kind = _WIRE_KINDS[fnum]
        wire = _Wire(kind, "")
        pos = _parse_wire_body(msg, pos, wire, _WIRE_LAYOUT.get(kind, ("common",)))
    if wire is None:
        raise GobError("gob: empty type definition")
    return wire, pos


def _parse_wire_body(msg: bytes, pos: int, wire: _Wire, layout: tuple[str, ...]) -> int:
    fnum = -1
    while True:
        delta, pos = _read_uint(msg, pos)
        if delta == 0:
            return pos
        fnum += delta
        if fnum >= len(layout):
            raise GobError(f"gob: unknown field {fnum} in a {wire.kind} type definition")
        what = layout[fnum]
        if what == "common":
            wire.name, _, pos = _parse_name_id(msg, pos)
        elif what == "fields":
            n, pos = _read_uint(msg, pos)
            if n > len(msg) - pos:
                raise GobError("gob: struct field count exceeds the message")
            for _ in range(n):
                name, fid, pos = _parse_name_id(msg, pos)
                wire.fields.append((name, fid))
        else:
            value, pos = _read_int(msg, pos)
            if what == "length":
                if value < 0:
                    raise GobError(f"gob: negative array length {value}")
                wire.length = value
            elif value <= 0:
                raise GobError(f"gob: invalid type id {value} in a type definition")
            else:
                setattr(wire, what, value)


def _parse_name_id(msg: bytes, pos: int) -> tuple[str, int, int]:
    """Parse a CommonType or fieldType struct: C{(name, id, pos)}."""
    name = ""
    tid = 0
    fnum = -1
    while True:
        delta, pos = _read_uint(msg, pos)
        if delta == 0:
            return name, tid, pos
        fnum += delta
        if fnum == 0:
            name, pos = _dec_string(msg, pos, 0)
        elif fnum == 1:
            tid, pos = _read_int(msg, pos)
        else:
            raise GobError(f"gob: unknown field {fnum} in a type definition")
