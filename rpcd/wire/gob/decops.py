"""
The loop-based decode operations: slices, arrays, maps, opaque values and
structs too large for generated code (and skipping any of them), plus what
an absent struct field decodes to.
"""

from __future__ import annotations

from typing import Any, Callable

from rpcd.wire.gob.errors import GobError, GobTypeMismatch
from rpcd.wire.gob.gotypes import GoType, OpaqueValue, Slice, _missing_value
from rpcd.wire.gob.primitives import _dec_bytes, _DecOp
from rpcd.wire.gob.sentinels import _MUTABLE
from rpcd.wire.gob.varint import _read_uint, _uint_tail


def _missing(t: GoType) -> tuple[Any, Callable[[], Any] | None]:
    """A field's value when absent from the wire, or a factory for it."""
    if isinstance(t, Slice):
        return _MUTABLE, list
    return _missing_value(t), None


def _none(vals: Any) -> None:
    return None


def _kwargs_builder(cls: Callable[..., Any]) -> Callable[[dict[str, Any]], Any]:
    def build(vals: dict[str, Any]) -> Any:
        try:
            return cls(**vals)
        except Exception as e:
            raise GobTypeMismatch(
                f"gob: cannot build {getattr(cls, '__name__', cls)}: {e}"
            ) from None

    return build


def _struct_dec(
    plan: tuple[tuple[Any, _DecOp], ...],
    new: Callable[[], Any],
    fixups: tuple[tuple[Any, Callable[[], Any]], ...],
    finish: Callable[[Any], Any] | None,
    max_depth: int,
) -> _DecOp:
    """
    A struct decoder: C{new()} makes the container of field values (a
    L{GoStruct}, a kwargs dict or a list), C{plan[field number]} says where
    each wire field goes (key None: skipped) and how to decode it, and
    C{finish} turns the container into the result.
    """
    nf = len(plan)

    def op(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
        if depth >= max_depth:
            raise GobError(f"gob: values nested deeper than {max_depth}")
        vals = new()
        f = -1
        d1 = depth + 1
        while True:
            b = buf[pos]
            pos += 1
            if b == 0:
                break
            if b < 128:
                f += b
            else:
                delta, pos = _uint_tail(buf, pos, b)
                if delta == 0:
                    break
                f += delta
            if f >= nf:
                raise GobError("gob: struct field number out of range")
            key, fop = plan[f]
            v, pos = fop(buf, pos, d1)
            if key is not None:
                vals[key] = v
        for k, factory in fixups:
            if vals[k] is _MUTABLE:
                vals[k] = factory()
        if finish is None:
            return vals, pos
        return finish(vals), pos

    return op


def _slice_dec(eop: _DecOp, max_depth: int) -> _DecOp:
    def op(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
        b = buf[pos]
        if b < 128:
            n = b
            pos += 1
        else:
            n, pos = _uint_tail(buf, pos + 1, b)
        if n > len(buf) - pos:
            raise GobError(f"gob: slice length {n} exceeds the message")
        if depth >= max_depth:
            raise GobError(f"gob: values nested deeper than {max_depth}")
        d1 = depth + 1
        out: list[Any] = []
        append = out.append
        for _ in range(n):
            v, pos = eop(buf, pos, d1)
            append(v)
        return out, pos

    return op


def _array_dec(
    eop: _DecOp, length: int, max_depth: int, as_tuple: bool = False
) -> _DecOp:
    slice_op = _slice_dec(eop, max_depth)

    def op(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
        n, _ = _read_uint(buf, pos)
        if n != length:
            raise GobError(f"gob: array length {n} where {length} was declared")
        if as_tuple:
            value, pos = slice_op(buf, pos, depth)
            return tuple(value), pos
        return slice_op(buf, pos, depth)

    return op


def _map_dec(kop: _DecOp, eop: _DecOp, max_depth: int, skip: bool = False) -> _DecOp:
    def op(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
        n, pos = _read_uint(buf, pos)
        if 2 * n > len(buf) - pos:
            raise GobError(f"gob: map length {n} exceeds the message")
        if depth >= max_depth:
            raise GobError(f"gob: values nested deeper than {max_depth}")
        d1 = depth + 1
        out = {}
        for _ in range(n):
            k, pos = kop(buf, pos, d1)
            v, pos = eop(buf, pos, d1)
            if not skip:
                out[k] = v
        return (None if skip else out), pos

    return op


def _opaque_dec(cls: type[OpaqueValue]) -> _DecOp:
    def op(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
        data, pos = _dec_bytes(buf, pos, depth)
        return cls(data), pos

    return op
