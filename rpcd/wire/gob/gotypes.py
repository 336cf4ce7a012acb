"""
The type model: L{GoType} and its kinds (the basic singletons, L{Slice},
L{Array}, L{Map}, L{Struct}, L{Opaque}), and the Python values that remember
their Go type (L{GoStruct}, L{OpaqueValue}).
"""

from __future__ import annotations

import typing
from typing import Any, Callable, Iterable, Sequence

from rpcd.wire.gob.errors import GobEncodeError


class GoType:
    """
    A Go type as gob sees it.  Types compare by identity; L{type_from_hint}
    and L{guess_type} return the same object for the same hint or shape.
    """

    __slots__ = ("_enc", "_derived")
    _enc: Callable[[bytearray, Any], None] | None
    _derived: dict[Any, GoType]
    """Composite types built from this one ([]T, [n]T, map[K]T), kept here so
    that they live exactly as long as this type (see L{rpcd.wire.gob.hints})."""

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


class GoStruct(dict):
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


def _need(t: GoType | None) -> GoType:
    if t is None:
        raise GobEncodeError("gob: incomplete type (element not set)")
    return t
