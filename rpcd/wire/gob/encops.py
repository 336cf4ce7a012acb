"""
Compile a L{GoType} into its encode operation C{op(out, value)}, cached on
the type: generated code for structs of up to L{_GEN_MAX_FIELDS} fields,
closures for the rest.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Sequence

from rpcd.wire.gob.codegen import _GEN_MAX_FIELDS, _gen_struct_enc
from rpcd.wire.gob.errors import GobEncodeError
from rpcd.wire.gob.gotypes import (
    _BASIC_BY_ID,
    Array,
    GoType,
    Map,
    Opaque,
    Slice,
    Struct,
    _Basic,
    _need,
)
from rpcd.wire.gob.primitives import _BASIC_ENC, _enc_bytes, _EncOp
from rpcd.wire.gob.varint import _uint_bytes


# The basic types' operations are fixed; the others are compiled on first use.
for _t in _BASIC_BY_ID.values():
    _t._enc = _BASIC_ENC[_t.type_id]


def _enc_ops(t: GoType) -> _EncOp:
    """
    The encode function of a type, compiled once and cached on the type:
    C{op(out, value)} appends the value's encoding (without field tag) to
    C{out}.  The cache is only written when the whole compile succeeds.
    """
    op = t._enc
    if op is not None:
        return op
    done: dict[int, tuple[GoType, _EncOp]] = {}
    op = _enc_op(t, {}, done)
    for inner, inner_op in done.values():
        inner._enc = inner_op
    return op


def _enc_op(
    t: GoType,
    compiling: dict[int, list[_EncOp]],
    done: dict[int, tuple[GoType, _EncOp]],
) -> _EncOp:
    op = t._enc
    if op is not None:
        return op
    hit = done.get(id(t))
    if hit is not None:
        return hit[1]
    cell = compiling.get(id(t))
    if cell is not None:  # recursive type: late-bound through the cell
        late = cell

        def tramp(out: bytearray, v: Any) -> None:
            late[0](out, v)

        return tramp
    cell = compiling[id(t)] = []

    def sub(inner: GoType | None) -> _EncOp:
        return _enc_op(_need(inner), compiling, done)

    if isinstance(t, Slice):
        op = _slice_enc(sub(t.elem))
    elif isinstance(t, Array):
        op = _array_enc(sub(t.elem), t.length)
    elif isinstance(t, Map):
        op = _map_enc(sub(t.key), sub(t.elem))
    elif isinstance(t, Struct):
        ops = [sub(f.type) for f in t.fields]
        if len(ops) <= _GEN_MAX_FIELDS:
            op = _gen_struct_enc(t, ops)
        else:
            op = _struct_enc(t, ops)
    elif isinstance(t, Opaque):
        op = _enc_bytes
    else:
        raise GobEncodeError(f"gob: cannot encode type {t!r}")
    cell.append(op)
    del compiling[id(t)]
    done[id(t)] = (t, op)
    return op


def _slice_enc(eop: _EncOp) -> _EncOp:
    def op(out: bytearray, v: Any) -> None:
        if type(v) is not list and not isinstance(v, (list, tuple)):
            raise GobEncodeError(f"gob: {type(v).__name__} is not a list")
        n = len(v)
        if n < 128:
            out.append(n)
        else:
            out += _uint_bytes(n)
        for x in v:
            eop(out, x)

    return op


def _array_enc(eop: _EncOp, length: int) -> _EncOp:
    def op(out: bytearray, v: Any) -> None:
        if not isinstance(v, (list, tuple)) or len(v) != length:
            raise GobEncodeError(f"gob: array needs a list of {length} elements")
        out += _uint_bytes(length)
        for x in v:
            eop(out, x)

    return op


def _map_enc(kop: _EncOp, eop: _EncOp) -> _EncOp:
    def op(out: bytearray, v: Any) -> None:
        items = v.items()
        out += _uint_bytes(len(items))
        for k, x in items:
            kop(out, k)
            eop(out, x)

    return op


def _struct_enc(t: Struct, ops: list[_EncOp]) -> _EncOp:
    names = tuple(f.name for f in t.fields)
    n = len(names)
    # Go omits zero basic values, empty strings and empty slices, but only
    # nil maps and pointers (None): struct and array fields are always sent.
    plan = tuple(zip(ops, [isinstance(f.type, (_Basic, Slice)) for f in t.fields]))
    if n == 0:
        get_attrs: Callable[[Any], Sequence[Any]] = lambda v: ()  # noqa: E731
    elif n == 1:
        one = operator.attrgetter(t.py_names[0])
        get_attrs = lambda v: (one(v),)  # noqa: E731
    else:
        get_attrs = operator.attrgetter(*t.py_names)

    def op(out: bytearray, v: Any) -> None:
        if type(v) is tuple:
            if len(v) != n:
                raise GobEncodeError(f"gob: struct {t.name} needs {n} values")
            vals: Sequence[Any] = v
        elif isinstance(v, dict):
            get = v.get
            vals = [get(k) for k in names]
        elif v is None:
            out.append(0)
            return
        else:
            vals = get_attrs(v)
        last = -1
        i = -1
        for fv, (fop, falsy) in zip(vals, plan):
            i += 1
            if fv is None or (falsy and not fv):
                continue
            delta = i - last
            if delta < 128:
                out.append(delta)
            else:
                out += _uint_bytes(delta)
            fop(out, fv)
            last = i
        out.append(0)

    return op
