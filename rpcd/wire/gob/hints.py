"""
Go types from Python: L{type_from_hint} for type hints (dataclasses become
structs), L{guess_type} for bare values.  Equal hints and shapes give the
same (interned) L{GoType} object.
"""

from __future__ import annotations

import dataclasses
import types as _types
import typing
from typing import Any, Callable, Iterable, Sequence

from rpcd.wire.gob.errors import GobEncodeError
from rpcd.wire.gob.gotypes import (
    Array,
    Bool,
    Bytes,
    Complex,
    Field,
    Float,
    GoStruct,
    GoType,
    Int,
    Map,
    OpaqueValue,
    Slice,
    String,
    Struct,
)


# Interning, so that equal hints and guesses give the same GoType object.
# A composite type is kept on its element type (its _derived slot), never in
# a global table: types decoded from one connection are garbage once that
# connection and its values are gone, and so is everything built from them.


def derived(elem: GoType, key: Any, build: Callable[[], GoType]) -> GoType:
    """
    The composite type C{key} made from C{elem}, built once.

    @param elem: the element type.
    @param key: what the composite is (e.g. C{("slice",)}).
    @param build: makes it the first time.
    @return: the same object for the same C{elem} and C{key}.
    """
    try:
        cache = elem._derived
    except AttributeError:
        cache = elem._derived = {}
    t = cache.get(key)
    if t is None:
        t = cache[key] = build()
    return t


def slice_of(elem: GoType) -> GoType:
    """
    @return: the interned C{[]elem}.
    """
    return derived(elem, "slice", lambda: Slice(elem))


def array_of(elem: GoType, length: int, as_tuple: bool = True) -> GoType:
    """
    @return: the interned C{[length]elem}.
    """
    return derived(elem, ("array", length, as_tuple), lambda: Array(elem, length, as_tuple=as_tuple))


def map_of(key_t: GoType, elem: GoType) -> GoType:
    """
    @return: the interned C{map[key_t]elem} (kept on C{elem}; it holds
        C{key_t}).
    """
    return derived(elem, ("map", key_t), lambda: Map(key_t, elem))


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
        return slice_of(type_from_hint(args[0]))
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return slice_of(type_from_hint(args[0]))
        elems = [type_from_hint(a) for a in args]
        if all(e is elems[0] for e in elems):
            return array_of(elems[0], len(elems))
        raise GobEncodeError(f"gob: cannot express the mixed tuple {hint!r}")
    if origin in (dict, typing.Dict, typing.Mapping) and len(args) == 2:
        return map_of(type_from_hint(args[0]), type_from_hint(args[1]))
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
            raise GobEncodeError("gob: cannot guess the element type of an empty list "
                                 "(send a non-empty one, or give the Go type with "
                                 "rpcd.client.gobclient.typed(value, gotype))")
        return slice_of(_same(v, "list"))
    if isinstance(v, dict):
        if not v:
            raise GobEncodeError("gob: cannot guess the types of an empty dict")
        return map_of(_same(v.keys(), "dict key"), _same(v.values(), "dict value"))
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
