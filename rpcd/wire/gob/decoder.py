"""
L{Decoder}: one direction of a gob stream, bytes in, values out.  It frames
messages, keeps the peer's type definitions, compiles and caches a decode
operation per C{(wire type, target)}, and enforces the limits.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from rpcd.wire.gob.codegen import _GEN_MAX_FIELDS, _gen_struct_dec
from rpcd.wire.gob.decops import (
    _array_dec,
    _kwargs_builder,
    _map_dec,
    _missing,
    _none,
    _opaque_dec,
    _slice_dec,
    _struct_dec,
)
from rpcd.wire.gob.errors import GobEncodeError, GobError, GobTypeMismatch
from rpcd.wire.gob.gotypes import (
    _BASIC_BY_ID,
    Array,
    Bytes,
    Field,
    GoType,
    Int,
    Map,
    Opaque,
    Slice,
    Struct,
    Uint,
    _Basic,
    _need,
)
from rpcd.wire.gob.hints import type_from_hint
from rpcd.wire.gob.primitives import _BASIC_DEC, _BASIC_SKIP, _DecOp, _skip_counted
from rpcd.wire.gob.sentinels import _MUTABLE, DISCARD, NEED_MORE
from rpcd.wire.gob.varint import _read_int
from rpcd.wire.gob.wiretypes import _FIRST_WIRE_ID, _parse_wire_type, _Wire


DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_DEPTH = 100
DEFAULT_MAX_TYPES = 1024
DEFAULT_MAX_TYPE_BYTES = 1024 * 1024



#: What to write instead when Go's integer and Python's hint differ in sign
#: (Go's uint64 field meets a field hinted C{int}, the usual case).
_SIGN_HINTS = {
    (Uint.type_id, Int.type_id): "Go sends an unsigned integer: hint the field "
                                 "rpcd.wire.gob.uint instead of int (docs/gob.md, Types)",
    (Int.type_id, Uint.type_id): "Go sends a signed integer: hint the field int "
                                 "instead of rpcd.wire.gob.uint (docs/gob.md, Types)",
}

class Decoder:
    """
    One direction of a gob stream: L{feed} it bytes as they arrive, then call
    L{next_value} until it returns L{NEED_MORE}.  Messages may be split
    across feeds at any byte.

    Not thread-safe; one Decoder per connection direction.  After a
    L{GobError} other than L{GobTypeMismatch} every later call raises
    L{GobError}: close the connection.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_types: int = DEFAULT_MAX_TYPES,
        max_type_bytes: int = DEFAULT_MAX_TYPE_BYTES,
    ) -> None:
        """
        @param max_message_size: the longest message accepted; checked as soon
            as its length prefix arrives.
        @param max_depth: the deepest nesting of types and of values.
        @param max_types: how many type definitions the peer may send.
        @param max_type_bytes: the total size of the peer's type definitions.
        """
        if max_message_size < 128:
            raise ValueError("max_message_size must be at least 128")
        self.max_message_size = max_message_size
        self.max_depth = max_depth
        self.max_types = max_types
        self.max_type_bytes = max_type_bytes
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._chunks_len = 0
        self._failed: GobError | None = None
        self._type_bytes = 0
        self._wires: dict[int, _Wire] = {}
        self._natural: dict[int, GoType] = {}
        self._ops: dict[tuple[int, int], tuple[GoType, _DecOp]] = {}
        self._skips: dict[int, _DecOp] = {}
        self._top: dict[Any, dict[int, _DecOp]] = {}
        self._compiling: dict[Any, list[_DecOp]] = {}

    @property
    def buffered(self) -> int:
        """How many fed bytes are not yet consumed."""
        return len(self._buf) - self._pos + self._chunks_len

    def feed(self, data: bytes) -> None:
        """
        Add received bytes.  Call L{next_value} until L{NEED_MORE} after each
        feed, so that an over-long message is refused before it is buffered.
        """
        if not data:
            return
        if self._pos >= len(self._buf) and not self._chunks:
            self._buf = bytes(data)
            self._pos = 0
        else:
            self._chunks.append(bytes(data))
            self._chunks_len += len(data)

    def _contiguous(self, n: int) -> bool:
        """Make C{n} bytes from the read position contiguous, if buffered."""
        have = len(self._buf) - self._pos
        if have >= n:
            return True
        if have + self._chunks_len < n:
            return False
        self._buf = b"".join([self._buf[self._pos :], *self._chunks])
        self._pos = 0
        self._chunks = []
        self._chunks_len = 0
        return True

    def _next_message(self) -> bytes | None:
        if not self._contiguous(1):
            return None
        buf = self._buf
        pos = self._pos
        b = buf[pos]
        if b < 128:
            n = b
            head = 1
        else:
            k = 256 - b
            if k > 8:
                raise GobError(f"gob: invalid message length byte {b:#x}")
            if not self._contiguous(1 + k):
                return None
            buf = self._buf
            pos = self._pos
            n = int.from_bytes(buf[pos + 1 : pos + 1 + k], "big")
            head = 1 + k
        if n > self.max_message_size:
            raise GobError(
                f"gob: message length {n} exceeds the limit of {self.max_message_size}"
            )
        if n == 0:
            raise GobError("gob: empty message")
        if not self._contiguous(head + n):
            return None
        buf = self._buf
        start = self._pos + head
        end = start + n
        self._pos = end
        if start == 0 and end == len(buf):
            return buf
        return buf[start:end]

    def next_value(self, into: Any = None) -> Any:
        """
        Decode the next top-level value, first taking in any type definitions.

        @param into: C{None} to decode by the wire type (structs become
            L{GoStruct}s); a L{GoType} to decode into (a L{Struct} from
            L{type_from_hint} gives its dataclass; fields are matched by name,
            extra ones skipped); or L{DISCARD} to skip the value.  Decoders
            are compiled once per C{(wire type, into)} and cached by C{into}
            (which must be hashable), so reuse the same objects.
        @return: the value, C{None} for L{DISCARD}, or L{NEED_MORE}.
        @raise GobTypeMismatch: the value does not fit C{into}; it was
            consumed and the stream stays usable.
        @raise GobError: malformed input or a broken limit; the stream is dead.
        """
        try:
            # Fast path: a short value message wholly in the buffer, whose
            # type id has one or two bytes and whose decoder is compiled.
            buf = self._buf
            pos = self._pos
            if pos < len(buf) and self._failed is None:
                n = buf[pos]
                end = pos + 1 + n
                if 1 < n < 128 and end <= len(buf):
                    b = buf[pos + 1]
                    if b < 128:
                        tid = b >> 1 if not b & 1 else -1
                        head = 1
                    elif b == 0xFF:
                        b = buf[pos + 2]
                        tid = b >> 1 if not b & 1 else -1
                        head = 2
                    else:
                        tid = -1
                    ops = self._top.get(into) if tid > 0 else None
                    op = ops.get(tid) if ops is not None else None
                    if op is not None:
                        self._pos = end
                        value, pos = op(buf[pos + 1 : end], head, 0)
                        if pos != n:
                            raise GobError(
                                f"gob: {n - pos} bytes left over after a value"
                            )
                        return value
            return self._next_value(into)
        except GobTypeMismatch:
            raise
        except GobError as e:
            self._failed = e
            raise
        except (IndexError, RecursionError) as e:
            err = GobError(
                "gob: message truncated"
                if isinstance(e, IndexError)
                else "gob: nesting too deep"
            )
            self._failed = err
            raise err from None

    def _next_value(self, into: Any) -> Any:
        if self._failed is not None:
            raise GobError(f"gob: stream already failed: {self._failed}")
        while True:
            msg = self._next_message()
            if msg is None:
                return NEED_MORE
            tid, pos = _read_int(msg, 0)
            if tid < 0:
                self._define(-tid, msg, pos)
                continue
            ops = self._top.get(into)
            op = ops.get(tid) if ops is not None else None
            if op is None:
                op = self._compile_top(tid, into)
            value, pos = op(msg, pos, 0)
            if pos != len(msg):
                raise GobError(f"gob: {len(msg) - pos} bytes left over after a value")
            return value

    def _compile_top(self, tid: int, into: Any) -> _DecOp:
        op = self._compile_top_op(tid, into)
        self._top.setdefault(into, {})[tid] = op
        return op

    def _compile_top_op(self, tid: int, into: Any) -> _DecOp:
        if tid not in _BASIC_BY_ID and tid not in self._wires:
            raise GobError(f"gob: value of unknown type id {tid}")
        if into is DISCARD:
            op = self._skip_op(tid, 0)
        else:
            if into is None:
                target = self._natural_type(tid, 0)
            elif isinstance(into, GoType):
                target = into
            else:
                target = type_from_hint(into)
            op = self._dec_op(tid, target, 0)
        wire = self._wires.get(tid)
        if wire is not None and wire.kind == "struct":
            return op

        def single(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
            if buf[pos] != 0:
                raise GobError("gob: non-zero field delta for a singleton value")
            return op(buf, pos + 1, depth)

        return single

    # type definitions

    def _define(self, tid: int, msg: bytes, pos: int) -> None:
        if tid < _FIRST_WIRE_ID:
            raise GobError(f"gob: definition of reserved type id {tid}")
        if tid in self._wires:
            raise GobError(f"gob: duplicate definition of type id {tid}")
        if len(self._wires) >= self.max_types:
            raise GobError(f"gob: more than {self.max_types} type definitions")
        self._type_bytes += len(msg)
        if self._type_bytes > self.max_type_bytes:
            raise GobError(
                f"gob: type definitions exceed {self.max_type_bytes} bytes"
            )
        wire, pos = _parse_wire_type(msg, pos)
        if pos != len(msg):
            raise GobError("gob: extra data after a type definition")
        self._wires[tid] = wire

    def _wire(self, tid: int) -> _Wire | None:
        w = self._wires.get(tid)
        if w is None and tid not in _BASIC_BY_ID:
            if tid == 8:
                raise GobError("gob: interface values are not supported")
            raise GobError(f"gob: reference to undefined type id {tid}")
        return w

    def _natural_type(self, tid: int, depth: int) -> GoType:
        """The GoType of a wire type id, built once per stream."""
        t = self._natural.get(tid) or _BASIC_BY_ID.get(tid)
        if t is not None:
            return t
        if depth > self.max_depth:
            raise GobError(f"gob: types nested deeper than {self.max_depth}")
        w = self._wire(tid)
        assert w is not None
        d = depth + 1
        if w.kind == "slice":
            st = self._natural[tid] = Slice(None, w.name)
            st.elem = self._natural_type(w.elem, d)
        elif w.kind == "array":
            at = self._natural[tid] = Array(None, w.length, w.name)
            at.elem = self._natural_type(w.elem, d)
        elif w.kind == "map":
            mt = self._natural[tid] = Map(None, None, w.name)
            mt.key = self._natural_type(w.key, d)
            mt.elem = self._natural_type(w.elem, d)
        elif w.kind == "struct":
            s = self._natural[tid] = Struct(w.name)
            fields = [Field(n, self._natural_type(fid, d)) for n, fid in w.fields]
            try:
                s.define(fields)
            except GobEncodeError:
                raise GobError(f"gob: struct {w.name!r} has duplicate field names") from None
        else:
            self._natural[tid] = Opaque(w.name, w.kind)
        return self._natural[tid]

    def _describe(self, tid: int) -> str:
        try:
            return str(self._natural_type(tid, 0))
        except GobError:
            return f"type id {tid}"

    # compiling decoders

    def _mismatch(self, tid: int, target: GoType, why: str = "") -> GobTypeMismatch:
        return GobTypeMismatch(
            f"gob: type mismatch: cannot decode {self._describe(tid)} into {target}"
            + (f" ({why})" if why else "")
        )

    def _dec_op(self, tid: int, target: GoType, depth: int) -> _DecOp:
        key = (tid, id(target))
        hit = self._ops.get(key)
        if hit is not None:
            return hit[1]
        cell = self._compiling.get(key)
        if cell is not None:  # recursive type: late-bound through the cell
            late = cell

            def tramp(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
                return late[0](buf, pos, depth)

            return tramp
        if depth > self.max_depth:
            raise GobError(f"gob: types nested deeper than {self.max_depth}")
        cell = self._compiling[key] = []
        try:
            op = self._build_op(tid, target, depth + 1)
        finally:
            del self._compiling[key]
        cell.append(op)
        self._ops[key] = (target, op)
        return op

    def _build_op(self, tid: int, target: GoType, d: int) -> _DecOp:
        w = self._wire(tid)
        maxd = self.max_depth
        if isinstance(target, _Basic):
            if tid != target.type_id:
                raise self._mismatch(tid, target, _SIGN_HINTS.get((tid, target.type_id), ""))
            return _BASIC_DEC[tid]
        if isinstance(target, Slice):
            if w is None or w.kind != "slice":
                raise self._mismatch(tid, target)
            return _slice_dec(self._dec_op(w.elem, _need(target.elem), d), maxd)
        if isinstance(target, Array):
            if w is None or w.kind != "array" or w.length != target.length:
                raise self._mismatch(tid, target)
            return _array_dec(
                self._dec_op(w.elem, _need(target.elem), d),
                target.length,
                maxd,
                target.as_tuple,
            )
        if isinstance(target, Map):
            if w is None or w.kind != "map":
                raise self._mismatch(tid, target)
            key_t = _need(target.key)
            if not isinstance(key_t, (_Basic, Opaque)) or key_t is Bytes:
                raise GobError(f"gob: map keys of type {key_t} are not supported")
            return _map_dec(
                self._dec_op(w.key, key_t, d),
                self._dec_op(w.elem, _need(target.elem), d),
                maxd,
            )
        if isinstance(target, Opaque):
            if w is None or w.kind != target.kind:
                raise self._mismatch(tid, target)
            return _opaque_dec(target.value_class)
        if isinstance(target, Struct):
            if w is None or w.kind != "struct":
                raise self._mismatch(tid, target)
            return self._struct_op(w, tid, target, d)
        raise GobError(f"gob: cannot decode into {target!r}")

    def _struct_op(self, w: _Wire, tid: int, target: Struct, d: int) -> _DecOp:
        cls: Any = target.py_class
        positional = cls is tuple
        keyed = cls is not None and not positional
        index = {f.name: i for i, f in enumerate(target.fields)}
        plan: list[tuple[Any, _DecOp]] = []
        matched = 0
        for name, fid in w.fields:
            i = index.get(name)
            if i is None:
                plan.append((None, self._skip_op(fid, d)))
                continue
            matched += 1
            f = target.fields[i]
            key = i if positional else target.py_names[i] if keyed else f.name
            plan.append((key, self._dec_op(fid, f.type, d)))
        if matched == 0 and target.fields and w.fields:
            raise self._mismatch(tid, target, "no fields in common")
        template: dict[Any, Any] = {}
        fixups: list[tuple[Any, Callable[[], Any]]] = []
        for i, (f, pn) in enumerate(zip(target.fields, target.py_names)):
            if keyed and pn in target._py_defaults:
                continue  # the dataclass default applies
            value, factory = _missing(f.type)
            if keyed and isinstance(f.type, Map) and pn not in target._py_optional:
                value, factory = _MUTABLE, dict  # a nil map is {} unless Optional
            key = i if positional else pn if keyed else f.name
            template[key] = value
            if factory is not None:
                fixups.append((key, factory))
        if len(plan) <= _GEN_MAX_FIELDS:
            mode = "tuple" if positional else "kwargs" if keyed else "dict"
            build = (
                _kwargs_builder(cls) if keyed else None if positional else target.value_class
            )
            wire_plan = [
                (
                    None if key is None else index[w.fields[j][0]],
                    op,
                    w.fields[j][1] if key is not None else None,
                )
                for j, (key, op) in enumerate(plan)
            ]
            keys = [pn if keyed else f.name for f, pn in zip(target.fields, target.py_names)]
            return _gen_struct_dec(
                wire_plan, keys, template, dict(fixups), mode, build, self.max_depth
            )
        new: Callable[[], Any]
        finish: Callable[[Any], Any] | None
        if positional:
            new, finish = list(template.values()).copy, tuple
        elif keyed:
            new, finish = template.copy, _kwargs_builder(cls)
        else:
            new, finish = functools.partial(target.value_class, template), None
        return _struct_dec(tuple(plan), new, tuple(fixups), finish, self.max_depth)

    def _skip_op(self, tid: int, depth: int) -> _DecOp:
        op = self._skips.get(tid) or _BASIC_SKIP.get(tid)
        if op is not None:
            return op
        cell = self._compiling.get(tid)
        if cell is not None:  # recursive type: late-bound through the cell
            late = cell

            def tramp(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
                return late[0](buf, pos, depth)

            return tramp
        if depth > self.max_depth:
            raise GobError(f"gob: types nested deeper than {self.max_depth}")
        w = self._wire(tid)
        assert w is not None
        d = depth + 1
        maxd = self.max_depth
        cell = self._compiling[tid] = []
        try:
            if w.kind == "slice":
                op = _slice_dec(self._skip_op(w.elem, d), maxd)
            elif w.kind == "array":
                op = _array_dec(self._skip_op(w.elem, d), w.length, maxd)
            elif w.kind == "map":
                op = _map_dec(self._skip_op(w.key, d), self._skip_op(w.elem, d), maxd, skip=True)
            elif w.kind == "struct":
                plan = tuple((None, self._skip_op(fid, d)) for _, fid in w.fields)
                op = _struct_dec(plan, dict, (), _none, maxd)
            else:
                op = _skip_counted
        finally:
            del self._compiling[tid]
        cell.append(op)
        self._skips[tid] = op
        return op
