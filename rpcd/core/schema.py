"""
Type hints to JSON Schema, and a daemon's methods to an OpenRPC document.

The document is what C{rpc.discover} answers (L{rpcd.daemon.builtin.Discovery}),
C{GET /openrpc.json} serves and C{rpcd schema} prints: OpenRPC 1.3.2, each
method C{Service.Method} with its parameters and result as JSON Schema
(draft 7), and each dataclass, C{TypedDict} or protobuf message once under
C{components.schemas}.  It lists what C{rpcd list} lists for the same
caller: the services the caller's session may call.

rpcd adds a few C{x-} fields (OpenRPC's specification extensions):

    x-rpcd-kind     on a method: unary, server_stream, client_stream or
                    bidi_stream; streams are called over rpcd's native
                    protocol and gRPC, not JSON-RPC.
    x-rpcd-send     on a client or bidirectional stream: the schema of each
                    message the caller sends (the result is each message it
                    receives, or a client stream's one answer).
    x-rpcd-type     "bytes" on a string that carries bytes (base64 in JSON,
                    raw bytes on rpcd's native protocol).
    x-rpcd-key      on a map whose keys are not strings: their schema.
    x-go-type       the Go type where JSON Schema cannot say it (uint, int64).
    x-go-name       a struct field's Go name when it is not the property
                    name with its first letter capitalised.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Iterable

from twisted.logger import Logger

from rpcd.core.service import Kind, MethodSpec, ServiceSpec

log = Logger()

#: The version of the OpenRPC specification the documents follow.
OPENRPC_VERSION = "1.3.2"

#: The service whose method C{discover} answers the document (OpenRPC's
#: C{rpc.discover}); it is left out of the document itself.
DISCOVER_SERVICE = "rpc"

#: Component names: OpenRPC requires this pattern of every key under
#: C{components}.
COMPONENT_NAME = re.compile(r"^[a-zA-Z0-9.\-_]+$")

_SCALARS: dict[Any, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bytes: {"type": "string", "contentEncoding": "base64", "x-rpcd-type": "bytes"},
    bytearray: {"type": "string", "contentEncoding": "base64", "x-rpcd-type": "bytes"},
}
_SEQUENCES = (list, collections.abc.Sequence, collections.abc.MutableSequence,
              collections.abc.Iterable, collections.abc.Collection, set, frozenset,
              collections.abc.Set)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_JSON_LITERALS = (bool, int, float, str, type(None))


class SchemaBuilder:
    """
    Turns type hints into JSON Schema, collecting each named type (a
    dataclass, a C{TypedDict}, a protobuf message) once as a component that
    the schemas refer to with C{$ref}.

    @ivar components: component name to schema, in the order first met.
    """

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}
        self._names: dict[Any, str] = {}

    def schema(self, hint: Any) -> dict[str, Any]:
        """
        The JSON Schema of a type hint.

        @param hint: a resolved type hint (C{typing.get_type_hints(...,
            include_extras=True)}).
        @return: a new schema; C{{}} (anything) for C{Any} and for hints
            with no JSON shape (a Python class rpcd passes unchanged).
        """
        if hint is Any or hint is object or hint is inspect.Parameter.empty:
            return {}
        if hint is None or hint is type(None):
            return {"type": "null"}
        if hint in _SCALARS:
            return dict(_SCALARS[hint])
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin is typing.Annotated:
            return self._annotated(hint, args[0])
        if origin in (typing.Union, types.UnionType):
            return self._union(args)
        if origin is tuple or hint is tuple:
            return self._tuple(args)
        if origin in _SEQUENCES or hint in (list, set, frozenset):
            schema: dict[str, Any] = {"type": "array"}
            if args:
                schema["items"] = self.schema(args[0])
            if origin in (set, frozenset, collections.abc.Set) or hint in (set, frozenset):
                schema["uniqueItems"] = True
            return schema
        if origin in _MAPPINGS or hint is dict:
            return self._mapping(args)
        if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or typing.is_typeddict(hint)
                                       or _is_message(hint)):
            return {"$ref": f"#/components/schemas/{self._component(hint)}"}
        if isinstance(hint, type):
            return {"x-rpcd-python": f"{hint.__module__}.{hint.__qualname__}"}
        return {}

    def _annotated(self, hint: Any, base: Any) -> dict[str, Any]:
        schema = self.schema(base)
        for meta in getattr(hint, "__metadata__", ()):
            go = _go_type_name(meta)
            if go is not None:
                schema = dict(schema)
                schema["x-go-type"] = go
                if go.startswith("uint"):
                    schema["minimum"] = 0
        return schema

    def _union(self, args: tuple[Any, ...]) -> dict[str, Any]:
        members = [self.schema(a) for a in args]
        if any(m == {} for m in members):
            return {}
        return {"anyOf": members}

    def _tuple(self, args: tuple[Any, ...]) -> dict[str, Any]:
        if not args:
            return {"type": "array"}
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": self.schema(args[0])}
        return {"type": "array", "items": [self.schema(a) for a in args],
                "additionalItems": False, "minItems": len(args), "maxItems": len(args)}

    def _mapping(self, args: tuple[Any, ...]) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object"}
        if not args:
            return schema
        key, value = args
        schema["additionalProperties"] = self.schema(value)
        if key is not str and key is not Any:
            schema["x-rpcd-key"] = self.schema(key)
        return schema

    def _component(self, cls: type) -> str:
        name = self._names.get(cls)
        if name is not None:
            return name
        base = re.sub(r"[^a-zA-Z0-9_]", "_", _message_name(cls) if _is_message(cls) else cls.__name__)
        name, n = base, 1
        while name in self.components:
            n += 1
            name = f"{base}{n}"
        self._names[cls] = name
        self.components[name] = {}  # taken before the fields: recursive types refer to it
        if dataclasses.is_dataclass(cls):
            self.components[name] = self._dataclass(cls)
        elif typing.is_typeddict(cls):
            self.components[name] = self._typed_dict(cls)
        else:
            self.components[name] = self._message(cls.DESCRIPTOR)  # type: ignore[attr-defined]
        return name

    def _dataclass(self, cls: type) -> dict[str, Any]:
        hints = typing.get_type_hints(cls, include_extras=True)
        properties: dict[str, Any] = {}
        required = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            prop = self.schema(hints.get(f.name, Any))
            go_name = f.metadata.get("gob_name") if f.metadata else None
            if go_name:
                prop["x-go-name"] = go_name
            if f.default is not dataclasses.MISSING:
                if isinstance(f.default, _JSON_LITERALS):
                    prop["default"] = f.default
            elif f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            properties[f.name] = prop
        return _object(cls, properties, required)

    def _typed_dict(self, cls: Any) -> dict[str, Any]:
        hints = typing.get_type_hints(cls, include_extras=True)
        properties = {key: self.schema(hint) for key, hint in hints.items()}
        required = [key for key in hints if key in cls.__required_keys__]
        return _object(cls, properties, required)

    def _message(self, descriptor: Any) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        for field in descriptor.fields:
            properties[field.json_name] = self._message_field(field)
        schema: dict[str, Any] = {"type": "object", "title": descriptor.full_name,
                                  "properties": properties}
        schema["description"] = (f"The protobuf message {descriptor.full_name}, in protobuf's "
                                 "JSON mapping (64-bit integers as strings, bytes as base64).")
        return schema

    def _message_field(self, field: Any) -> dict[str, Any]:
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            key, value = message.fields_by_name["key"], message.fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object",
                                      "additionalProperties": self._message_scalar(value)}
            if key.type != key.TYPE_STRING:
                schema["x-rpcd-key"] = self._message_scalar(key)
            return schema
        item = self._message_scalar(field)
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:
            repeated = field.label == field.LABEL_REPEATED
        return {"type": "array", "items": item} if repeated else item

    def _message_scalar(self, field: Any) -> dict[str, Any]:
        if field.message_type is not None:
            try:
                from google.protobuf.message_factory import GetMessageClass
                return self.schema(GetMessageClass(field.message_type))
            except Exception:  # an older protobuf: describe it without its fields
                return {"type": "object", "title": field.message_type.full_name}
        if field.enum_type is not None:
            return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
        return dict(_PROTO_TYPES.get(field.type, {}))


def _object(cls: Any, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "title": cls.__name__, "properties": properties}
    if required:
        schema["required"] = required
    own = vars(cls).get("__doc__")  # not one inherited from dict
    doc = inspect.cleandoc(own) if isinstance(own, str) else ""
    if doc and not doc.startswith(f"{cls.__name__}("):  # not the dataclass's made-up one
        schema["description"] = plain_text(doc)
    return schema


# google.protobuf.descriptor.FieldDescriptor.TYPE_* values, which are fixed
# by protobuf's wire format.
_PROTO_TYPES: dict[int, dict[str, Any]] = {
    1: {"type": "number", "x-go-type": "float64"},                        # double
    2: {"type": "number", "x-go-type": "float32"},                        # float
    3: {"type": "string", "format": "int64", "x-go-type": "int64"},       # int64
    4: {"type": "string", "format": "uint64", "x-go-type": "uint64"},     # uint64
    5: {"type": "integer", "x-go-type": "int32"},                         # int32
    6: {"type": "string", "format": "uint64", "x-go-type": "uint64"},     # fixed64
    7: {"type": "integer", "minimum": 0, "x-go-type": "uint32"},          # fixed32
    8: {"type": "boolean"},                                               # bool
    9: {"type": "string"},                                                # string
    12: {"type": "string", "contentEncoding": "base64", "x-rpcd-type": "bytes"},
    13: {"type": "integer", "minimum": 0, "x-go-type": "uint32"},         # uint32
    15: {"type": "integer", "x-go-type": "int32"},                        # sfixed32
    16: {"type": "string", "format": "int64", "x-go-type": "int64"},      # sfixed64
    17: {"type": "integer", "x-go-type": "int32"},                        # sint32
    18: {"type": "string", "format": "int64", "x-go-type": "int64"},      # sint64
}


def _is_message(hint: Any) -> bool:
    """Whether a class is a protobuf message class with a descriptor."""
    from rpcd.core.convert import is_protobuf_message
    return is_protobuf_message(hint) and getattr(hint, "DESCRIPTOR", None) is not None


def _message_name(cls: Any) -> str:
    return str(cls.DESCRIPTOR.name)


def _go_type_name(meta: Any) -> str | None:
    """The Go type an C{Annotated} hint's metadata names (a gob GoType), or None."""
    from rpcd.wire.gob.gotypes import GoType
    return str(meta) if isinstance(meta, GoType) else None


def method_object(service: ServiceSpec, method: MethodSpec, builder: SchemaBuilder) -> dict[str, Any]:
    """
    The OpenRPC method object of one exposed method.

    @param service: its service.
    @param method: the method.
    @param builder: collects the components its types need.
    @return: the method object, named C{Service.Method}.
    """
    function = getattr(service.cls, method.attribute, None)
    try:
        signature = inspect.signature(function) if function is not None else None
    except (TypeError, ValueError):
        signature = None
    params = []
    for p in method.params:
        schema = builder.schema(p.hint)
        default = signature.parameters[p.name].default if signature is not None else None
        if p.has_default and isinstance(default, _JSON_LITERALS) and default is not None:
            schema["default"] = default
        params.append({"name": p.name, "schema": schema, "required": not p.has_default})
    kind = method.kind
    if kind in (Kind.SERVER_STREAM, Kind.BIDI_STREAM):
        result_schema = builder.schema(method.message_out_hint)
        result_name = "messages"
    else:
        result_schema = builder.schema(method.result_hint)
        result_name = "result"
    out: dict[str, Any] = {"name": f"{service.name}.{method.name}"}
    doc = plain_text(inspect.getdoc(function) or "") if function is not None else ""
    if method.doc:
        out["summary"] = plain_text(method.doc)
    if doc and doc.strip() != out.get("summary"):
        out["description"] = doc
    out["params"] = params
    out["result"] = {"name": result_name, "schema": result_schema}
    out["paramStructure"] = "either"
    out["x-rpcd-kind"] = kind.value
    if kind in (Kind.CLIENT_STREAM, Kind.BIDI_STREAM):
        out["x-rpcd-send"] = builder.schema(method.message_in_hint)
    return out


_MARKUP = re.compile(r"\b[BCILU]\{([^{}]*)\}")


def plain_text(doc: str) -> str:
    """
    @param doc: a docstring.
    @return: it without epytext's inline markup (C{C{x}} is C{x}), for
        readers of the document who never see Python.
    """
    while True:
        plain = _MARKUP.sub(r"\1", doc)
        if plain == doc:
            return plain
        doc = plain


def openrpc_document(services: Iterable[ServiceSpec], *, title: str = "rpcd",
                     version: str | None = None) -> dict[str, Any]:
    """
    The OpenRPC document of some services.

    @param services: the services to describe (from
        L{rpcd.core.service.ServiceRegistry.services_for}, so that a caller sees
        what it may call); the C{rpc} service is left out.
    @param title: C{info.title}.
    @param version: C{info.version}; rpcd's version by default.
    @return: the document, plain JSON data.
    """
    builder = SchemaBuilder()
    methods = []
    for service in services:
        if service.name == DISCOVER_SERVICE:
            continue
        for method in sorted(service.methods.values(), key=lambda m: m.name):
            try:
                methods.append(method_object(service, method, builder))
            except Exception as e:  # a hint the builder trips on: describe the rest
                log.failure("cannot describe {method} in the OpenRPC document",
                            method=f"{service.name}.{method.name}")
                methods.append({"name": f"{service.name}.{method.name}", "params": [],
                                "result": {"name": "result", "schema": {}},
                                "description": f"(no schema: {type(e).__name__}: {e})",
                                "x-rpcd-kind": method.kind.value})
    return {
        "openrpc": OPENRPC_VERSION,
        "info": {
            "title": title,
            "version": version or _rpcd_version(),
            "description": "The methods this rpcd daemon serves to this caller, named "
                           "Service.Method. JSON-RPC 2.0 callers POST to /rpc; streaming "
                           "methods (x-rpcd-kind) need rpcd's native protocol or gRPC.",
        },
        "methods": methods,
        "components": {"schemas": builder.components},
    }


def _rpcd_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("rpcd")
    except PackageNotFoundError:
        return "0"


def registry_document(registry: Any, session: Any = None) -> dict[str, Any]:
    """
    The OpenRPC document of a daemon's services, as one caller sees them.

    @param registry: the L{rpcd.core.service.ServiceRegistry}.
    @param session: the caller's session: only the services it may call are
        described (as C{rpcd list}); None describes every service.
    @return: the document.
    """
    specs = registry.services() if session is None else registry.services_for(session)
    return openrpc_document(specs)
