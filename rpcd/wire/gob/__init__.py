"""
Go's C{encoding/gob} wire format, sans-io: bytes in, values out; values in,
bytes out.  No sockets and no reactor here; L{rpcd.wire.gobrpc} builds the
C{net/rpc} message codecs on top.

Go types are described by L{GoType} objects: the basic singletons L{Bool},
L{Int}, L{Uint}, L{Float}, L{Complex}, L{String}, L{Bytes}, and the composite
L{Slice}, L{Array}, L{Map}, L{Struct} (plus L{Opaque} for values that Go sends
through C{GobEncoder}/C{BinaryMarshaler}/C{TextMarshaler}, e.g. C{time.Time}).
Pointers are flattened as gob flattens them.  Interface values are not
supported.

Python values:
  - C{bool}, C{int} (for both Go int and uint kinds), C{float}, C{complex},
    C{str} (invalid UTF-8 survives a round trip via C{surrogateescape}),
    C{bytes} for C{[]byte}, C{list} for slices and arrays, C{dict} for maps.
  - A struct decodes to a L{GoStruct}: a C{dict} from Go field name to value
    whose class remembers the L{Struct} (C{value.gotype}), so re-encoding it
    sends the same Go type.  Fields missing on the wire come back as their Go
    zero value: C{0}, C{""}, C{b""}, C{[]} for a slice, and C{None} for a nil
    map, a nil (pointer to) struct or array, since Go always sends non-pointer
    struct and array fields and non-nil maps.
  - When encoding a struct field, C{None} and (for basic types, strings,
    bytes and slices) any zero value is omitted, as Go omits it; an empty
    C{dict} is sent (Go's empty, non-nil map).  A top-level C{None} encodes
    the zero value of its type.
  - A C{dataclass} maps to a struct through L{type_from_hint}; decoding into
    that L{Struct} returns an instance of the dataclass.  Fields missing on the
    wire take the dataclass default if there is one, else the zero value as
    above, except that a nil map is C{{}} unless the hint is C{Optional}.

Every malformed input raises L{GobError}.  After a L{GobError} other than
L{GobTypeMismatch} the stream cannot be resynchronised: close the connection.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import struct as _struct
import types as _types
import typing
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "Array",
    "Bool",
    "Bytes",
    "Complex",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_TYPE_BYTES",
    "DEFAULT_MAX_TYPES",
    "DISCARD",
    "Decoder",
    "Encoder",
    "Field",
    "Float",
    "GoStruct",
    "GoType",
    "GobEncodeError",
    "GobError",
    "GobTypeMismatch",
    "Int",
    "Map",
    "NEED_MORE",
    "Opaque",
    "OpaqueValue",
    "Slice",
    "String",
    "Struct",
    "Uint",
    "guess_type",
    "type_from_hint",
    "uint",
]

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_DEPTH = 100
DEFAULT_MAX_TYPES = 1024
DEFAULT_MAX_TYPE_BYTES = 1024 * 1024

# Go's decoder refuses definitions of ids below 64; its encoder starts at 65.
_FIRST_WIRE_ID = 64
_FIRST_OWN_ID = 65


class GobError(ValueError):
    """
    A malformed gob stream, or one that breaks this decoder's limits.  The
    message starts with C{"gob: "} and names what was wrong.
    """


class GobTypeMismatch(GobError):
    """
    A well-formed value whose wire type does not fit the requested L{GoType}.
    The whole message was consumed, so the stream is still usable.
    """


class GobEncodeError(GobError, TypeError):
    """
    A Python value that cannot be encoded as the given Go type (or whose Go
    type cannot be guessed).  Nothing was encoded and the L{Encoder} is
    unchanged.
    """


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_MORE: Any = _Sentinel("NEED_MORE")
"""Returned by L{Decoder.next_value} when no complete value is buffered."""

DISCARD: Any = _Sentinel("DISCARD")
"""Pass as C{into} to L{Decoder.next_value} to skip a value (result C{None})."""


# Type model


class GoType:
    """
    A Go type as gob sees it.  Types compare by identity; L{type_from_hint}
    and L{guess_type} return the same object for the same hint or shape.
    """

    __slots__ = ("_enc",)
    _enc: Callable[[bytearray, Any], None] | None

    def zero(self) -> Any:
        """
        @return: a fresh Python value for this type's Go zero value.
        """
        raise NotImplementedError

    def __str__(self) -> str:
        return _describe(self, set())

    def __repr__(self) -> str:
        return f"<GoType {self}>"


class _Basic(GoType):
    __slots__ = ("name", "type_id", "_zero")

    def __init__(self, name: str, type_id: int, zero: Any) -> None:
        self._enc = None
        self.name = name
        self.type_id = type_id
        self._zero = zero

    def zero(self) -> Any:
        return self._zero


Bool = _Basic("bool", 1, False)
Int = _Basic("int", 2, 0)
Uint = _Basic("uint", 3, 0)
Float = _Basic("float64", 4, 0.0)
Bytes = _Basic("[]byte", 5, b"")
String = _Basic("string", 6, "")
Complex = _Basic("complex128", 7, 0j)
_BASIC_BY_ID = {t.type_id: t for t in (Bool, Int, Uint, Float, Bytes, String, Complex)}

uint = typing.Annotated[int, Uint]
"""The type hint for a Go C{uint}: C{def f(self, n: gob.uint) -> gob.uint}."""


class Slice(GoType):
    """
    C{[]elem}.  C{Slice(gob.Int)}; the elem may be assigned later for
    recursive types.
    """

    __slots__ = ("elem", "name")

    def __init__(self, elem: GoType | None, name: str = "") -> None:
        self._enc = None
        self.elem = elem
        self.name = name

    def zero(self) -> list[Any]:
        return []


class Array(GoType):
    """
    C{[length]elem}; encoded from a C{list} or C{tuple} of that length,
    decoded to a C{list}, or to a C{tuple} when C{as_tuple} (as for arrays
    from fixed C{tuple[...]} hints).
    """

    __slots__ = ("elem", "length", "name", "as_tuple")

    def __init__(
        self, elem: GoType | None, length: int, name: str = "", as_tuple: bool = False
    ) -> None:
        self._enc = None
        self.elem = elem
        self.length = length
        self.name = name
        self.as_tuple = as_tuple

    def zero(self) -> list[Any]:
        assert self.elem is not None
        return [self.elem.zero() for _ in range(self.length)]


class Map(GoType):
    """C{map[key]elem}; keys must decode to hashable values (no structs)."""

    __slots__ = ("key", "elem", "name")

    def __init__(
        self, key: GoType | None, elem: GoType | None, name: str = ""
    ) -> None:
        self._enc = None
        self.key = key
        self.elem = elem
        self.name = name

    def zero(self) -> dict[Any, Any]:
        return {}


class Field(typing.NamedTuple):
    """One struct field: its exported Go name and its L{GoType}."""

    name: str
    type: GoType


class Struct(GoType):
    """
    A named Go struct.  C{Struct("Args", [Field("A", Int), Field("B", Int)])};
    for recursive types create it without fields and call L{define} later.

    A struct value to encode may be a C{dict} (a L{GoStruct}) keyed by Go
    field name, a plain C{tuple} of all field values in Go order, or any
    object with the fields as attributes named by C{py_names}.

    @ivar py_class: what decoding into this struct makes: C{None} for a
        L{GoStruct}, a dataclass (called with keyword arguments), or
        C{tuple} for a plain tuple of the field values in Go order (the
        fastest).
    @ivar py_names: the Python attribute name of each field (same order).
    """

    __slots__ = (
        "name",
        "fields",
        "py_class",
        "py_names",
        "_py_defaults",
        "_py_optional",
        "_cls",
    )

    def __init__(
        self,
        name: str,
        fields: Iterable[Field | tuple[str, GoType]] | None = None,
        *,
        py_class: type | None = None,
        py_names: Sequence[str] | None = None,
    ) -> None:
        self._enc = None
        self._cls: type[GoStruct] | None = None
        self.name = name
        self.fields: tuple[Field, ...] = ()
        self.py_class = py_class
        self.py_names: tuple[str, ...] = ()
        self._py_defaults: frozenset[str] = frozenset()
        self._py_optional: frozenset[str] = frozenset()
        if fields is not None:
            self.define(fields, py_names)

    def define(
        self,
        fields: Iterable[Field | tuple[str, GoType]],
        py_names: Sequence[str] | None = None,
    ) -> None:
        """
        Set the fields (once, before the type is used).

        @param fields: L{Field}s or C{(name, type)} pairs, in Go order.
        @param py_names: Python attribute names; defaults to the Go names.
        """
        self.fields = tuple(Field(*f) for f in fields)
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise GobEncodeError(f"gob: struct {self.name} has duplicate fields")
        self.py_names = tuple(py_names) if py_names is not None else tuple(names)

    @property
    def value_class(self) -> type[GoStruct]:
        """The L{GoStruct} subclass whose instances carry this type."""
        cls = self._cls
        if cls is None:
            cls = self._cls = type(
                self.name if self.name.isidentifier() else "GoStruct",
                (GoStruct,),
                {"__slots__": (), "gotype": self},
            )
        return cls

    def new(self, **values: Any) -> GoStruct:
        """
        @param values: field values by Go name; the others are zero.
        @return: a L{GoStruct} of this type.
        @raise GobEncodeError: an unknown field name.
        """
        out = self.value_class()
        for f in self.fields:
            out[f.name] = values.pop(f.name, None)
            if out[f.name] is None:
                out[f.name] = _missing_value(f.type)
        if values:
            raise GobEncodeError(f"gob: struct {self.name} has no field {sorted(values)}")
        return out

    def zero(self) -> Any:
        return self.new()


class Opaque(GoType):
    """
    A type Go marshals itself (C{GobEncoder}, C{BinaryMarshaler},
    C{TextMarshaler}), e.g. C{time.Time}: the value is its marshalled bytes,
    decoded as an L{OpaqueValue}.

    @ivar kind: C{"GobEncoder"}, C{"BinaryMarshaler"} or C{"TextMarshaler"}.
    """

    __slots__ = ("name", "kind", "_cls")

    KINDS = ("GobEncoder", "BinaryMarshaler", "TextMarshaler")

    def __init__(self, name: str, kind: str = "GobEncoder") -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown marshaler kind {kind!r}")
        self._enc = None
        self._cls: type[OpaqueValue] | None = None
        self.name = name
        self.kind = kind

    @property
    def value_class(self) -> type[OpaqueValue]:
        """The L{OpaqueValue} subclass whose instances carry this type."""
        cls = self._cls
        if cls is None:
            cls = self._cls = type(
                "OpaqueValue", (OpaqueValue,), {"__slots__": (), "gotype": self}
            )
        return cls

    def zero(self) -> Any:
        return self.value_class()


class GoStruct(dict):  # type: ignore[type-arg]
    """
    A decoded Go struct: a C{dict} from Go field name to value.  Instances
    are of a subclass per L{Struct} (see L{Struct.value_class}), whose
    C{gotype} class attribute is that L{Struct}.
    """

    __slots__ = ()
    gotype: Struct | None = None

    def __repr__(self) -> str:
        t = self.gotype
        return f"{t.name if t is not None else 'GoStruct'}({dict.__repr__(self)})"


class OpaqueValue(bytes):
    """The marshalled bytes of an L{Opaque} value; C{gotype} is that type."""

    __slots__ = ()
    gotype: Opaque | None = None


def _describe(t: GoType | None, seen: set[int]) -> str:
    if t is None:
        return "<undefined>"
    if isinstance(t, (_Basic, Struct, Opaque)):
        return t.name or "struct {...}"
    name = getattr(t, "name", "")
    if id(t) in seen:
        return name or "<recursive>"
    seen.add(id(t))
    if isinstance(t, Slice):
        return f"[]{_describe(t.elem, seen)}"
    if isinstance(t, Array):
        return f"[{t.length}]{_describe(t.elem, seen)}"
    if isinstance(t, Map):
        return f"map[{_describe(t.key, seen)}]{_describe(t.elem, seen)}"
    return type(t).__name__


def _missing_value(t: GoType) -> Any:
    """The value of a struct field of type C{t} that was not on the wire."""
    if isinstance(t, _Basic):
        return t._zero
    if isinstance(t, Slice):
        return []
    return None


# Interning, so that equal hints and guesses give the same GoType object.

_INTERN: dict[tuple[Any, ...], GoType] = {}


def _slice_of(elem: GoType) -> GoType:
    key = ("slice", id(elem))
    t = _INTERN.get(key)
    if t is None:
        t = _INTERN[key] = Slice(elem)
        _KEEP.append(elem)
    return t


def _array_of(elem: GoType, length: int) -> GoType:
    key = ("array", id(elem), length)
    t = _INTERN.get(key)
    if t is None:
        t = _INTERN[key] = Array(elem, length, as_tuple=True)
        _KEEP.append(elem)
    return t


def _map_of(key_t: GoType, elem: GoType) -> GoType:
    key = ("map", id(key_t), id(elem))
    t = _INTERN.get(key)
    if t is None:
        t = _INTERN[key] = Map(key_t, elem)
        _KEEP.extend((key_t, elem))
    return t


_KEEP: list[GoType] = []  # keeps interned components alive so ids stay unique

_HINT_CACHE: dict[Any, GoType] = {
    int: Int,
    float: Float,
    bool: Bool,
    str: String,
    bytes: Bytes,
    complex: Complex,
}


def type_from_hint(hint: Any) -> GoType:
    """
    The Go type for a Python type hint.

    C{int} is Go C{int} (signed); L{uint} (C{Annotated[int, gob.Uint]}) is Go
    C{uint}; any C{Annotated[X, <GoType>]} means that GoType.  C{float} is
    C{float64}, C{bool}, C{str}, C{bytes} is C{[]byte}, C{complex} is
    C{complex128}; C{list[T]} and C{tuple[T, ...]} are C{[]T}; a fixed
    C{tuple[T, T, T]} is C{[3]T}; C{dict[K, V]} is C{map[K]V}; C{Optional[T]}
    is C{T} (gob flattens pointers).  A dataclass is a struct named after the
    class whose Go field names are the Python names in CamelCase
    (C{service_method} -> C{ServiceMethod}, C{a} -> C{A}), unless the field's
    metadata says C{{"gob_name": "Name"}}; init=False fields are not sent.
    Recursive dataclasses work (via C{Optional} or C{list} fields).  A
    L{GoType} is returned unchanged.

    @raise GobEncodeError: a hint gob cannot express.
    """
    if isinstance(hint, GoType):
        return hint
    try:
        cached = _HINT_CACHE.get(hint)
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    t = _from_hint(hint)
    try:
        _HINT_CACHE[hint] = t
    except TypeError:
        pass
    return t


def _from_hint(hint: Any) -> GoType:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        for meta in hint.__metadata__:
            if isinstance(meta, GoType):
                return meta
        return type_from_hint(args[0])
    if origin is typing.Union or origin is _types.UnionType:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return type_from_hint(rest[0])
        raise GobEncodeError(f"gob: cannot express the union {hint!r}")
    if origin in (list, Sequence, typing.List) and len(args) == 1:
        return _slice_of(type_from_hint(args[0]))
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return _slice_of(type_from_hint(args[0]))
        elems = [type_from_hint(a) for a in args]
        if all(e is elems[0] for e in elems):
            return _array_of(elems[0], len(elems))
        raise GobEncodeError(f"gob: cannot express the mixed tuple {hint!r}")
    if origin in (dict, typing.Dict, typing.Mapping) and len(args) == 2:
        return _map_of(type_from_hint(args[0]), type_from_hint(args[1]))
    if isinstance(hint, type):
        if issubclass(hint, GoStruct) and hint.gotype is not None:
            return hint.gotype
        if dataclasses.is_dataclass(hint):
            return _struct_from_dataclass(hint)
        for base, t in ((bool, Bool), (int, Int), (float, Float), (str, String)):
            if issubclass(hint, base):
                return t
    raise GobEncodeError(f"gob: cannot express the type hint {hint!r}")


def _export_name(name: str) -> str:
    go = "".join(p[:1].upper() + p[1:] for p in name.split("_") if p)
    if not go or not go[0].isupper():
        raise GobEncodeError(
            f"gob: field {name!r} has no exported Go name; "
            'set metadata={"gob_name": ...}'
        )
    return go


def _struct_from_dataclass(cls: type) -> Struct:
    st = Struct(cls.__name__)
    _HINT_CACHE[cls] = st  # before the fields, for recursive dataclasses
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
        fields, py_names, defaults, optional = [], [], set(), set()
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if type(None) in typing.get_args(hints[f.name]):
                optional.add(f.name)
            go_name = f.metadata.get("gob_name") or _export_name(f.name)
            fields.append(Field(go_name, type_from_hint(hints[f.name])))
            py_names.append(f.name)
            if (
                f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING
            ):
                defaults.add(f.name)
        st.define(fields, py_names)
        st.py_class = cls
        st._py_defaults = frozenset(defaults)
        st._py_optional = frozenset(optional)
    except BaseException:
        del _HINT_CACHE[cls]
        raise
    return st


_GUESS = {
    bool: Bool,
    int: Int,
    float: Float,
    complex: Complex,
    str: String,
    bytes: Bytes,
    bytearray: Bytes,
}


def guess_type(value: Any) -> GoType:
    """
    A Go type for a Python value that comes without a hint: C{int} -> C{int},
    C{str} -> C{string}, a L{GoStruct} or L{OpaqueValue} -> its own type, a
    dataclass instance -> its struct, a non-empty C{list}/C{tuple} whose
    elements all have the same type -> a slice of it, likewise a C{dict} -> a
    map.

    @raise GobEncodeError: C{None}, an empty container, mixed element types,
        or a value gob cannot express.
    """
    try:
        return _guess(value)
    except RecursionError:
        raise GobEncodeError("gob: value is nested too deeply (or cyclic)") from None


def _guess(v: Any) -> GoType:
    t = _GUESS.get(type(v))
    if t is not None:
        return t
    gotype = getattr(type(v), "gotype", None)
    if isinstance(gotype, GoType) and isinstance(v, (GoStruct, OpaqueValue)):
        return gotype
    if isinstance(v, (list, tuple)):
        if not v:
            raise GobEncodeError("gob: cannot guess the element type of an empty list")
        return _slice_of(_same(v, "list"))
    if isinstance(v, dict):
        if not v:
            raise GobEncodeError("gob: cannot guess the types of an empty dict")
        return _map_of(_same(v.keys(), "dict key"), _same(v.values(), "dict value"))
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return type_from_hint(type(v))
    for base in (bool, int, float, str, bytes):
        if isinstance(v, base):
            return _GUESS[base]
    raise GobEncodeError(f"gob: cannot express a value of type {type(v).__name__}")


def _same(items: Iterable[Any], what: str) -> GoType:
    """The one type of all items; empty lists and dicts fit any slice or map."""
    found: GoType | None = None
    empties: set[type] = set()
    for x in items:
        if not x and isinstance(x, (list, tuple, dict)):
            empties.add(Map if isinstance(x, dict) else Slice)
            continue
        t = _guess(x)
        if found is None:
            found = t
        elif t is not found:
            raise GobEncodeError(f"gob: {what}s of mixed types; pass a GoType")
    if found is None:
        raise GobEncodeError(f"gob: cannot guess the type of {what}s that are all empty")
    if any(not isinstance(found, e) for e in empties):
        raise GobEncodeError(f"gob: {what}s of mixed types; pass a GoType")
    return found


# Encoding

_UINT1 = [bytes((i,)) for i in range(128)]
_GEN_MAX_FIELDS = 64  # larger structs use the (slower) loop-based codecs
_pack_le_d = _struct.Struct("<d").pack
_unpack_le_d = _struct.Struct("<d").unpack


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
for _t in _BASIC_BY_ID.values():
    _t._enc = _BASIC_ENC[_t.type_id]

_EncOp = Callable[[bytearray, Any], None]


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


def _need(t: GoType | None) -> GoType:
    if t is None:
        raise GobEncodeError("gob: incomplete type (element not set)")
    return t


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
    ns: dict[str, Any] = {"_uint_bytes": _uint_bytes, "GobEncodeError": GobEncodeError}
    ts = "".join(f"t{i}, " for i in range(n))
    src = [
        "def op(out, v):",
        "    if type(v) is tuple:",
        f"        if len(v) != {n}:",
        f"            raise GobEncodeError('gob: struct needs {n} values')",
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
    return ns["op"]  # type: ignore[no-any-return]


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
        # Go names unnamed composite types by their Go syntax ("[]int"), but
        # sends "" for an anonymous struct.
        name = t.name if isinstance(t, (Struct, Opaque)) else str(t)
        if isinstance(t, Slice):
            body = _wire_struct(1, [_common(name, tid), _int_bytes(self._define(_need(t.elem), chunks))])
        elif isinstance(t, Array):
            elem = self._define(_need(t.elem), chunks)
            body = _wire_struct(
                0,
                [
                    _common(name, tid),
                    _int_bytes(elem),
                    _int_bytes(t.length) if t.length else None,
                ],
            )
        elif isinstance(t, Map):
            key = self._define(_need(t.key), chunks)
            elem = self._define(_need(t.elem), chunks)
            body = _wire_struct(3, [_common(name, tid), _int_bytes(key), _int_bytes(elem)])
        elif isinstance(t, Struct):
            fields = [
                _fields_struct([_str_bytes(f.name), _int_bytes(self._define(f.type, chunks))])
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
        chunks[slot] = _uint_bytes(len(msg)) + msg
        return tid


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


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


# Decoding

_DecOp = Callable[[bytes, int, int], tuple[Any, int]]

_SMALL_INTS = [(~(b >> 1)) if b & 1 else b >> 1 for b in range(128)]
_ZEROS = [b"\0" * i for i in range(9)]
_SMALL_FLOATS = [_unpack_le_d(b"\0" * 7 + bytes((b,)))[0] for b in range(128)]


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


def _missing(t: GoType) -> tuple[Any, Callable[[], Any] | None]:
    """A field's value when absent from the wire, or a factory for it."""
    if isinstance(t, Slice):
        return _MUTABLE, list
    return _missing_value(t), None


_MUTABLE: Any = _Sentinel("_MUTABLE")


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
                raise self._mismatch(tid, target)
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


_UNSET: Any = _Sentinel("_UNSET")

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
    tkeys = list(template)
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
    del tkeys
    exec(compile("\n".join(src), "<gob struct decoder>", "exec"), ns)
    return ns["op"]  # type: ignore[no-any-return]


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
