"""
Type hints to argument and result converters.

A method's type hints (int, str, float, bool, bytes, list, tuple, dict,
Optional, dataclasses) say what it accepts and returns.  This module compiles
each hint once into a small function that checks and converts a decoded wire
value, so that the per-call cost is a few attribute lookups.  A mismatch raises
L{InvalidArgument} naming the field, e.g. C{args.B: expected int, got str}.

Struct fields match case-insensitively, as Go's JSON decoding does, and a
field that is missing takes its zero value (Go's gob leaves zero fields out of
the wire entirely).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import inspect
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any, Callable

from rpcd.errors import InvalidArgument

Converter = Callable[[Any], Any]


class Mismatch(Exception):
    """A value did not fit a hint; carries the path to it, innermost last."""

    def __init__(self, expected: str, got: Any) -> None:
        self.path: list[str] = []
        self.expected = expected
        self.got = got

    def describe(self, root: str) -> str:
        where = root + "".join(self.path)
        return f"{where}: expected {self.expected}, got {_type_name(self.got)}"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return type(value).__name__


def _identity(value: Any) -> Any:
    return value


def _to_int(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if type(value) is float and value.is_integer():
        return int(value)
    raise Mismatch("int", value)


def _to_float(value: Any) -> float:
    if type(value) is float:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise Mismatch("float", value)


def _to_str(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, str):
        return str(value)
    raise Mismatch("str", value)


def _to_bool(value: Any) -> bool:
    if type(value) is bool:
        return value
    raise Mismatch("bool", value)


def _to_bytes(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        # Go's encoding/json carries []byte as base64 text.
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise Mismatch("bytes (or base64 text)", value) from None
    raise Mismatch("bytes", value)


_SCALARS: dict[Any, Converter] = {
    int: _to_int,
    float: _to_float,
    str: _to_str,
    bool: _to_bool,
    bytes: _to_bytes,
    Any: _identity,
    object: _identity,
}

_ZERO: dict[Any, Callable[[], Any]] = {
    int: int, float: float, str: str, bool: bool, bytes: bytes,
}


def _list_of(item: Converter, name: str) -> Converter:
    def convert(value: Any) -> list:
        if not isinstance(value, (list, tuple)):
            raise Mismatch(name, value)
        out = []
        for index, element in enumerate(value):
            try:
                out.append(item(element))
            except Mismatch as e:
                e.path.insert(0, f"[{index}]")
                raise
        return out
    return convert


def _tuple_of(items: tuple[Converter, ...], name: str) -> Converter:
    def convert(value: Any) -> tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise Mismatch(name, value)
        out = []
        for index, (element, item) in enumerate(zip(value, items)):
            try:
                out.append(item(element))
            except Mismatch as e:
                e.path.insert(0, f"[{index}]")
                raise
        return tuple(out)
    return convert


def _dict_of(key: Converter, item: Converter, name: str) -> Converter:
    def convert(value: Any) -> dict:
        if not isinstance(value, Mapping):
            raise Mismatch(name, value)
        out = {}
        for k, v in value.items():
            try:
                out[key(k)] = item(v)
            except Mismatch as e:
                e.path.insert(0, f"[{k!r}]")
                raise
        return out
    return convert


def _optional(inner: Converter) -> Converter:
    def convert(value: Any) -> Any:
        if value is None:
            return None
        return inner(value)
    return convert


def _dataclass(cls: type) -> Converter:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    by_name: dict[str, tuple[str, Converter]] = {}
    zeros: list[tuple[str, Callable[[], Any]]] = []
    for f in fields:
        entry = (f.name, argument_converter(hints.get(f.name, Any)))
        by_name[f.name] = entry
        by_name.setdefault(f.name.lower(), entry)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            zeros.append((f.name, zero_factory(hints.get(f.name, Any))))
    expected = cls.__name__

    def convert(value: Any) -> Any:
        if type(value) is cls:
            return value
        if not isinstance(value, Mapping):
            raise Mismatch(f"{expected} (an object with fields "
                            f"{', '.join(f.name for f in fields)})", value)
        kwargs = {}
        for key, element in value.items():
            entry = by_name.get(key)
            if entry is None:
                if type(key) is not str:
                    continue
                entry = by_name.get(key.lower())
                if entry is None:
                    continue  # unknown fields are ignored, as Go does
            name, conv = entry
            try:
                kwargs[name] = conv(element)
            except Mismatch as e:
                e.path.insert(0, f".{name}")
                raise
        if len(kwargs) != len(fields):
            for name, zero in zeros:
                if name not in kwargs:
                    kwargs[name] = zero()
        return cls(**kwargs)
    return _exact_fast_path(cls, fields, hints, convert) or convert


_EXACT_SCALARS = (int, float, str, bool, bytes)


def _exact_fast_path(cls: type, fields: list[dataclasses.Field], hints: dict[str, Any],
                     general: Converter) -> Converter | None:
    """
    A faster converter for the common case of a dataclass of scalars.

    When every field is hinted with a scalar type that converts to itself
    (C{int}, C{float}, C{str}, C{bool}, C{bytes}), a dict that has exactly
    the field names, each with a value of exactly its field's type, needs no
    conversion: the instance is built straight from it.  Anything else goes
    to the general converter.  The check is compiled for the class (as
    L{dataclasses} compiles C{__init__}) because a generic loop over the
    fields costs more than the rest of a small call.

    @param cls: the dataclass.
    @param fields: its fields that C{__init__} takes.
    @param hints: its resolved type hints.
    @param general: the converter for every other value.
    @return: the converter, or None when some field is of another kind.
    """
    if not fields or any(hints.get(f.name) not in _EXACT_SCALARS for f in fields):
        return None
    names = [f.name for f in fields]
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = ([p.name for p in params] == names
                  and all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params))
    shape = _ExactShape(cls, tuple(names), tuple(hints[n] for n in names), positional, general)
    fast = shape.compile("convert", "value", ["return general(value)"], "cls({args})",
                         ["return general(value)"], {})
    fast.__qualname__ = f"_dataclass.<{cls.__qualname__}>.convert"
    fast._rpcd_exact = shape  # type: ignore[attr-defined]
    return fast


@dataclasses.dataclass(frozen=True)
class _ExactShape:
    """
    A dataclass of exact scalars, as L{_exact_fast_path} found it: enough to
    compile its fast check into another function (L{calling}).
    """

    cls: type
    names: tuple[str, ...]
    types: tuple[type, ...]
    positional: bool
    general: Converter

    def compile(self, name: str, params: str, on_missing: list[str], build: str,
                otherwise: list[str], env: dict[str, Any]) -> Callable[..., Any]:
        """
        Compile a function whose first parameter is C{value}: when C{value}
        is a dict with exactly the field names, each holding a value of
        exactly its field's type, it returns C{build} (C{{args}} is the
        argument list for the class); else it runs C{otherwise}.

        @param name: the function's name.
        @param params: its parameter list, C{value} first.
        @param on_missing: the lines run when a field name is missing.
        @param build: the expression returned on a match.
        @param otherwise: the lines run when the value does not match.
        @param env: more names the lines use.
        @return: the function.
        """
        env = {**env, "cls": self.cls, "general": self.general}
        fetch, check, args = [], [], []
        for i, (field, hint) in enumerate(zip(self.names, self.types)):
            env[f"t{i}"] = hint
            fetch.append(f"            v{i} = value[{field!r}]")
            check.append(f"type(v{i}) is t{i}")
            args.append(f"v{i}" if self.positional else f"{field}=v{i}")
        source = "\n".join([
            f"def {name}({params}):",
            f"    if type(value) is dict and len(value) == {len(self.names)}:",
            "        try:",
            *fetch,
            "        except KeyError:",
            *("            " + line for line in on_missing),
            "        else:",
            f"            if {' and '.join(check)}:",
            "                return " + build.format(args=", ".join(args)),
            *("    " + line for line in otherwise),
        ])
        exec(source, env)  # noqa: S102 - names are the dataclass's own identifiers
        return env[name]


def calling(conv: Converter, function: Callable[[Any], Any],
            name: str) -> Callable[[Any, Any], Any]:
    """
    One function that converts a wire value and calls a method with it, for
    a method's single parameter (see C{rpcd.core.service}).

    For a dataclass of exact scalars, the converter's fast check is compiled
    into the same function, so that a well-formed call costs one Python call
    less than converting and then calling.

    @param conv: the parameter's converter, from L{argument_converter}.
    @param function: the method, called with the converted value.
    @param name: the parameter's name, the root of the path in a mismatch.
    @return: C{invoke(value, context)} returning what C{function} returns
        (C{context} is not used); a mismatch raises L{InvalidArgument} naming
        the field, as L{convert_argument} does.
    """
    shape = getattr(conv, "_rpcd_exact", None)
    if shape is None:
        def invoke(value: Any, context: Any) -> Any:
            try:
                arg = conv(value)
            except Mismatch as e:
                raise InvalidArgument(e.describe(name)) from None
            return function(arg)
        return invoke
    # A mismatch is raised only by the general converter: the method itself
    # is called outside the try, as above.
    otherwise = [
        "try:",
        "    arg = general(value)",
        "except Mismatch as e:",
        "    raise InvalidArgument(e.describe(name)) from None",
        "return function(arg)",
    ]
    return shape.compile("invoke", "value, context", ["pass"], "function(cls({args}))",
                         otherwise, {"function": function, "name": name, "Mismatch": Mismatch,
                                     "InvalidArgument": InvalidArgument})


def zero_factory(hint: Any) -> Callable[[], Any]:
    """
    The zero value of a hinted type, as Go would fill a missing field.

    @param hint: a type hint.
    @return: a function returning a fresh zero value (None when unknown).
    """
    if hint in _ZERO:
        return _ZERO[hint]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        dataclass_hint: type = hint
        return lambda: _dataclass(dataclass_hint)({})
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        return list if origin is list else tuple
    if origin is dict:
        return dict
    return lambda: None


_cache: dict[Any, Converter] = {}


def argument_converter(hint: Any) -> Converter:
    """
    Compile a type hint into a function that checks and converts a wire value.

    @param hint: a resolved type hint (use C{typing.get_type_hints}).
    @return: a one-argument function returning the converted value and
        raising C{Mismatch} (caught by L{convert_argument}) on a mismatch.
    @raise TypeError: the hint is of a kind rpcd cannot check.
    """
    try:
        return _cache[hint]
    except (KeyError, TypeError):
        pass
    conv = _compile(hint)
    try:
        _cache[hint] = conv
    except TypeError:
        pass
    return conv


def _compile(hint: Any) -> Converter:
    if hint in _SCALARS:
        return _SCALARS[hint]
    if hint is None or hint is type(None):
        return _optional(lambda v: (_ for _ in ()).throw(Mismatch("null", v)))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _dataclass(hint)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return argument_converter(args[0])
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return _optional(argument_converter(rest[0]))
        return _identity  # general unions are not checked
    if origin is list or hint is list:
        return _list_of(argument_converter(args[0]) if args else _identity, _hint_name(hint))
    if origin is tuple or hint is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = argument_converter(args[0])
            as_list = _list_of(item, _hint_name(hint))
            return lambda v: tuple(as_list(v))
        if args:
            return _tuple_of(tuple(argument_converter(a) for a in args), _hint_name(hint))
        return _list_of(_identity, "tuple")
    if origin is dict or hint is dict:
        key, item = (args if args else (Any, Any))
        return _dict_of(argument_converter(key), argument_converter(item), _hint_name(hint))
    if is_protobuf_message(hint):
        from rpcd.core.protomessages import message_converter
        return message_converter(hint)
    if typing.is_typeddict(hint):
        return _typed_dict(hint)
    if isinstance(hint, type):
        # A class rpcd has no rule for: accept instances of it unchanged.
        def convert(value: Any) -> Any:
            if isinstance(value, hint):
                return value
            raise Mismatch(hint.__name__, value)
        return convert
    raise TypeError(f"rpcd cannot check arguments of type {hint!r}")


def _typed_dict(cls: Any) -> Converter:
    """
    The converter of a C{TypedDict}: a mapping whose known keys are
    converted by their hints; unknown keys are dropped and missing keys take
    their zero value, as for dataclasses.
    """
    hints = typing.get_type_hints(cls)
    items = [(key, argument_converter(hint), zero_factory(hint)) for key, hint in hints.items()]
    required = frozenset(cls.__required_keys__)
    expected = f"{cls.__name__} (an object with keys {', '.join(hints)})"

    def convert(value: Any) -> dict:
        if not isinstance(value, Mapping):
            raise _Mismatch(expected, value)
        out = {}
        for key, conv, zero in items:
            if key in value:
                try:
                    out[key] = conv(value[key])
                except _Mismatch as e:
                    e.path.insert(0, f".{key}")
                    raise
            elif key in required:
                out[key] = zero()
        return out
    return convert


def _hint_name(hint: Any) -> str:
    if typing.get_args(hint):
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def convert_argument(conv: Converter, value: Any, name: str) -> Any:
    """
    Run a compiled converter, turning a mismatch into L{InvalidArgument}.

    @param conv: from L{argument_converter}.
    @param value: the decoded wire value.
    @param name: the parameter's name, the root of the path in the message.
    @return: the converted value.
    @raise InvalidArgument: naming the field that did not fit.
    """
    try:
        return conv(value)
    except Mismatch as e:
        raise InvalidArgument(e.describe(name)) from None


def to_wire(value: Any) -> Any:
    """
    Turn a result into plain data (dicts, lists, scalars) for a codec.

    Dataclass instances become dicts keyed by their field names; everything
    else is returned unchanged when it is already plain.  A value that
    carries its Go type (a struct decoded from gob, whose class has a
    C{gotype}) keeps its class, so that echoing it sends the same Go type.

    @param value: what a method returned.
    @return: plain data.
    """
    kind = type(value)
    if kind in _PLAIN:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if kind is list or kind is tuple:
        return [to_wire(v) for v in value]
    if isinstance(value, Mapping):
        items = {k: to_wire(v) for k, v in value.items()}
        if kind is not dict and getattr(kind, "gotype", None) is not None:
            return kind(items)
        return items
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if is_protobuf_message(kind):
        from rpcd.core.protomessages import message_to_dict
        return message_to_dict(value)
    return value


def is_protobuf_message(hint: Any) -> bool:
    """
    Whether a hint is a protobuf message class (see L{rpcd.core.protos}); asked
    without importing protobuf, which is loaded if any message class exists.
    """
    module = sys.modules.get("google.protobuf.message")
    return module is not None and isinstance(hint, type) and issubclass(hint, module.Message)


_PLAIN: frozenset[type] = frozenset({int, str, float, bool, bytes, type(None)})


def result_passthrough(hint: Any, converter: Converter | None = None) -> frozenset[type]:
    """
    The types of result that the result converter of a hint returns
    unchanged, so that a caller may skip calling it for them.

    @param hint: the resolved return annotation (C{Any} when there is none).
    @param converter: the converter in use for that hint, if known; when it
        is not the one L{result_converter} makes, nothing is passed through.
    @return: e.g. C{{int}} for C{int}; the plain scalar types (and None) for
        C{Any}; empty when every result must go through the converter.
    """
    plain: frozenset[type]
    if hint in (Any, object, None, type(None)):
        plain = _PLAIN
    elif hint in _EXACT_SCALARS:
        plain = frozenset({typing.cast(type, hint)})
    else:
        return frozenset()
    if converter is not None and converter is not result_converter(hint):
        return frozenset()
    return plain


def result_converter(hint: Any) -> Converter:
    """
    Compile a return-type hint into a function that checks a result and
    turns it into plain data.

    @param hint: the resolved return annotation (C{Any} when there is none).
    @return: a one-argument function; a mismatch raises C{Mismatch}.
    """
    if hint in (Any, object, None, type(None)):
        return to_wire
    check = argument_converter(hint)

    def convert(value: Any) -> Any:
        return to_wire(check(value))
    if hint in _SCALARS:
        return check
    return convert

_Mismatch = Mismatch  # the old name, for code written before it was public
