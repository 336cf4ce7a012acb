"""
L{Encoder}: one direction of a gob stream, values in, bytes out; it sends
each type's definition before the first value that needs it.
"""

from __future__ import annotations

import struct as _struct
from typing import Any, Iterable

from rpcd.wire.gob.encops import _enc_ops
from rpcd.wire.gob.errors import GobEncodeError
from rpcd.wire.gob.gotypes import GoType, Struct, _Basic
from rpcd.wire.gob.hints import guess_type, type_from_hint
from rpcd.wire.gob.primitives import _EncOp
from rpcd.wire.gob.varint import _UINT1, _int_bytes, _uint_bytes
from rpcd.wire.gob.wiretypes import _FIRST_OWN_ID, _definition


class Encoder:
    """
    One direction of a gob stream: call L{encode} for each value in the
    order it is to be sent, and send the returned bytes in that order.

    Not thread-safe; one Encoder per connection direction.
    """

    def __init__(self) -> None:
        self._next_id = _FIRST_OWN_ID
        # id(GoType) -> (GoType, wire id), in order of assignment
        self._ids: dict[int, tuple[GoType, int]] = {}
        # id(GoType or hint) -> (it, message head, op, type if not a struct),
        # in order of first use
        self._top: dict[int, tuple[Any, bytes, _EncOp, GoType | None]] = {}

    def encode(self, value: Any, gotype: Any = None) -> bytes:
        """
        Encode one top-level value.

        @param value: the Python value (see the module docstring).
        @param gotype: its L{GoType} (or a type hint, see L{type_from_hint});
            L{guess_type}C{(value)} when C{None}.
        @return: the type definitions this stream has not sent yet, then the
            value, each as a length-prefixed message.
        @raise GobEncodeError: the value does not fit the type; the Encoder is
            left unchanged.
        """
        return self.encode_all(((value, gotype),))

    def encode_all(self, items: Iterable[tuple[Any, Any]]) -> bytes:
        """
        Encode several values atomically (e.g. a header and a body).

        @param items: C{(value, GoType or type hint or None)} pairs.
        @return: the concatenated messages.
        @raise GobEncodeError: one value does not fit; nothing is encoded
            and the Encoder is left unchanged.
        """
        chunks: list[bytes | bytearray] = []
        saved = None
        value: Any = None
        gotype: Any = None
        try:
            for value, gotype in items:
                if gotype is None:
                    gotype = guess_type(value)
                top = self._top.get(id(gotype))
                if top is None:
                    if saved is None:
                        saved = (self._next_id, len(self._ids), len(self._top))
                    top = self._prepare(gotype, chunks)
                out = bytearray(top[1])
                if value is None and top[3] is not None:
                    value = top[3].zero()
                top[2](out, value)
                n = len(out)
                chunks.append(_UINT1[n] if n < 128 else _uint_bytes(n))
                chunks.append(out)
        except BaseException as e:
            if saved is not None:
                self._next_id = saved[0]
                while len(self._ids) > saved[1]:
                    self._ids.popitem()
                while len(self._top) > saved[2]:
                    self._top.popitem()
            if isinstance(
                e,
                (TypeError, ValueError, AttributeError, OverflowError, _struct.error, RecursionError),
            ) and not isinstance(e, GobEncodeError):
                raise GobEncodeError(
                    f"gob: cannot encode {_short(value)} as {gotype}: {e}"
                ) from None
            raise
        return b"".join(chunks)

    def _prepare(
        self, hint: Any, chunks: list[bytes | bytearray]
    ) -> tuple[Any, bytes, _EncOp, GoType | None]:
        """
        Define a top-level type and cache C{(hint, head, op, zero type)}
        under C{id(hint)}; the zero type is None for structs, whose op
        encodes None as the zero value itself.
        """
        gotype = type_from_hint(hint)
        wire_id = self._define(gotype, chunks)
        op = _enc_ops(gotype)
        head = _int_bytes(wire_id)
        if not isinstance(gotype, Struct):
            head += b"\x00"  # a singleton is sent as field 0 of a struct
        top = (hint, head, op, None if isinstance(gotype, Struct) else gotype)
        self._top[id(hint)] = top
        return top

    def _define(self, t: GoType, chunks: list[bytes | bytearray]) -> int:
        """Assign a wire id to C{t} and queue its definition (pre-order)."""
        if isinstance(t, _Basic):
            return t.type_id
        known = self._ids.get(id(t))
        if known is not None:
            return known[1]
        tid = self._next_id
        self._next_id += 1
        self._ids[id(t)] = (t, tid)
        slot = len(chunks)
        chunks.append(b"")
        chunks[slot] = _definition(t, tid, lambda inner: self._define(inner, chunks))
        return tid


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."
