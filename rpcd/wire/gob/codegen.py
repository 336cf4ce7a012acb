"""
Generated struct codecs: the source of a function per struct type, with
basic fields encoded or decoded inline, compiled with C{exec}.  Only
integers and fixed names go into the source; field names, operations and
helpers are bound through an explicit namespace, never module globals.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

from rpcd.wire.gob.errors import GobEncodeError, GobError
from rpcd.wire.gob.gotypes import Slice, Struct, _Basic
from rpcd.wire.gob.primitives import _BASIC_DEC, _DecOp, _EncOp
from rpcd.wire.gob.sentinels import _MUTABLE, _UNSET
from rpcd.wire.gob.varint import _SMALL_INTS, _uint_bytes, _uint_tail


_GEN_MAX_FIELDS = 64  # larger structs use the (slower) loop-based codecs


_INLINE_ENC = {
    2: (
        "u = V << 1 if V >= 0 else (~V << 1) | 1",
        "if u < 128:",
        "    out.append(u)",
        "else:",
        "    out += _uint_bytes(u)",
    ),
    3: (
        "if 0 <= V < 128:",
        "    out.append(V)",
        "else:",
        "    out += _uint_bytes(V)",
    ),
    6: (
        "b = V.encode('utf-8', 'surrogateescape')",
        "n = len(b)",
        "if n < 128:",
        "    out.append(n)",
        "else:",
        "    out += _uint_bytes(n)",
        "out += b",
    ),
}


def _gen_struct_enc(t: Struct, ops: list[_EncOp]) -> _EncOp:
    """
    Generate a struct encoder with basic fields encoded inline (at most
    L{_GEN_MAX_FIELDS} fields, so every field delta fits one byte).  Field
    names are bound through the namespace, never put in the source.
    """
    n = len(t.fields)
    ns: dict[str, Any] = {"_uint_bytes": _uint_bytes, "GobEncodeError": GobEncodeError,
                          "WRONG_LENGTH": f"gob: struct {t.name} needs {n} values"}
    ts = "".join(f"t{i}, " for i in range(n))
    src = [
        "def op(out, v):",
        "    if type(v) is tuple:",
        f"        if len(v) != {n}:",
        "            raise GobEncodeError(WRONG_LENGTH)",
        f"        ({ts}) = v",
        "    elif isinstance(v, dict):",
        "        g = v.get",
    ]
    src += [f"        t{i} = g(K{i})" for i in range(n)]
    src += ["        pass", "    elif v is None:", "        out.append(0)", "        return"]
    src += ["    else:", f"        ({ts}) = AG(v)" if n != 1 else "        t0 = AG(v)"]
    if n == 0:
        src[-1] = "        pass"
    src.append("    last = -1")
    for i, (f, op) in enumerate(zip(t.fields, ops)):
        ns[f"K{i}"] = f.name
        ns[f"OP{i}"] = op
        falsy = isinstance(f.type, (_Basic, Slice))
        src.append(f"    if t{i}:" if falsy else f"    if t{i} is not None:")
        src.append(f"        out.append({i} - last)")
        inline = _INLINE_ENC.get(f.type.type_id) if isinstance(f.type, _Basic) else None
        if inline is not None:
            src += ["        " + line.replace("V", f"t{i}") for line in inline]
        else:
            src.append(f"        OP{i}(out, t{i})")
        src.append(f"        last = {i}")
    src.append("    out.append(0)")
    if n:
        ns["AG"] = operator.attrgetter(*t.py_names)
    exec(compile("\n".join(src), "<gob struct encoder>", "exec"), ns)
    return ns["op"]


# Inline decoding of basic fields in generated struct decoders, by type id;
# V is the target variable.
_INLINE_DEC = {
    2: (
        "b = buf[pos]",
        "if b < 128:",
        "    V = SMALL_INTS[b]",
        "    pos += 1",
        "else:",
        "    V, pos = _uint_tail(buf, pos + 1, b)",
        "    V = ~(V >> 1) if V & 1 else V >> 1",
    ),
    3: (
        "b = buf[pos]",
        "if b < 128:",
        "    V = b",
        "    pos += 1",
        "else:",
        "    V, pos = _uint_tail(buf, pos + 1, b)",
    ),
    6: (
        "b = buf[pos]",
        "if b < 128:",
        "    pos += 1",
        "    e = pos + b",
        "else:",
        "    e, pos = _uint_tail(buf, pos + 1, b)",
        "    e += pos",
        "if e > len(buf):",
        "    _overrun()",
        "V = buf[pos:e].decode('utf-8', 'surrogateescape')",
        "pos = e",
    ),
}


def _too_deep() -> None:
    raise GobError("gob: values nested too deeply")


def _field_range() -> None:
    raise GobError("gob: struct field number out of range")


def _overrun() -> None:
    raise GobError("gob: string length exceeds the message")


def _gen_struct_dec(
    wire_plan: list[tuple[int | None, _DecOp, int | None]],
    keys: list[str],
    template: dict[Any, Any],
    fixups: dict[Any, Callable[[], Any]],
    mode: str,
    build: Any,
    max_depth: int,
) -> _DecOp:
    """
    Generate a struct decoder with basic fields decoded inline.

    Only integers and fixed names go into the source; the field names and
    operations are bound through the namespace.

    @param wire_plan: per wire field, C{(target field index or None to skip,
        decode op, wire type id)}.
    @param keys: per target field, its key in the result (dict modes).
    @param template: per target field (by key, or index for C{"tuple"}), the
        value when absent from the wire (L{_MUTABLE}: call C{fixups[key]}).
    @param mode: C{"tuple"}, C{"dict"} (C{build} is the L{GoStruct} class)
        or C{"kwargs"} (C{build} takes the kwargs dict).
    """
    ns: dict[str, Any] = {
        "_uint_tail": _uint_tail,
        "SMALL_INTS": _SMALL_INTS,
        "MUT": _MUTABLE,
        "UNSET": _UNSET,
        "BUILD": build,
        "MAXD": max_depth,
        "_too_deep": _too_deep,
        "_field_range": _field_range,
        "_overrun": _overrun,
    }
    n = len(keys)
    src = ["def op(buf, pos, depth):", "    if depth >= MAXD:", "        _too_deep()"]
    src.append("    d1 = depth + 1")
    for i in range(n):
        k = i if mode == "tuple" else keys[i]
        ns[f"Z{i}"] = template.get(k, _UNSET)
        ns[f"K{i}"] = keys[i]
        src.append(f"    t{i} = Z{i}")
        if k in fixups:
            ns[f"F{i}"] = fixups[k]
    src += [
        "    f = -1",
        "    while True:",
        "        b = buf[pos]",
        "        pos += 1",
        "        if b == 0:",
        "            break",
        "        if b < 128:",
        "            f += b",
        "        else:",
        "            b, pos = _uint_tail(buf, pos, b)",
        "            if b == 0:",
        "                break",
        "            f += b",
    ]
    for j, (ti, op, tid) in enumerate(wire_plan):
        src.append(f"        {'if' if j == 0 else 'elif'} f == {j}:")
        ns[f"OP{j}"] = op
        inline = (
            _INLINE_DEC.get(tid)
            if tid is not None and ti is not None and op is _BASIC_DEC.get(tid)
            else None
        )
        var = "_" if ti is None else f"t{ti}"
        if inline is not None:
            src += ["            " + line.replace("V", var) for line in inline]
        else:
            src.append(f"            {var}, pos = OP{j}(buf, pos, d1)")
    if wire_plan:
        src += ["        else:", "            _field_range()"]
    else:
        src.append("        _field_range()")
    for i in range(n):
        if f"F{i}" in ns:
            src.append(f"    if t{i} is MUT:")
            src.append(f"        t{i} = F{i}()")
    if mode == "tuple":
        src.append(f"    return ({''.join(f't{i}, ' for i in range(n))}), pos")
    elif mode == "dict":
        src.append("    x = BUILD()")
        src += [f"    x[K{i}] = t{i}" for i in range(n)]
        src.append("    return x, pos")
    else:
        src.append("    kw = {}")
        for i in range(n):
            if ns[f"Z{i}"] is _UNSET:
                src.append(f"    if t{i} is not UNSET:")
                src.append(f"        kw[K{i}] = t{i}")
            else:
                src.append(f"    kw[K{i}] = t{i}")
        src.append("    return BUILD(kw), pos")
    exec(compile("\n".join(src), "<gob struct decoder>", "exec"), ns)
    return ns["op"]
