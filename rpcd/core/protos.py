"""
Protobuf services: loading a C{.proto}, declaring which proto service an
rpcd service class implements, and the gRPC routes of a registry.

A service class implements a proto service by taking and returning its
message classes; unary and the three stream kinds are the usual rpcd forms
(see L{rpcd.core.service})::

    pb = load_proto("protos/hello_world.proto")      # or: import hello_world_pb2 as pb

    @grpc_service(pb, "helloworld.HelloWorldService")
    class HelloWorldService:
        @exposed
        def SayHelloWorld(self, request: pb.HelloWorldRequest) -> pb.HelloWorldResponse:
            return pb.HelloWorldResponse(reply="hi")

        @exposed
        async def ListHello(self, request: pb.HelloWorldRequest
                            ) -> AsyncIterator[pb.HelloWorldResponse]:
            yield pb.HelloWorldResponse(reply="one")

gRPC callers reach it as C{/helloworld.HelloWorldService/SayHelloWorld};
rpcd's native protocol and JSON callers as C{HelloWorldService.SayHelloWorld}
with the message in protobuf's JSON mapping (L{rpcd.core.convert} calls
L{message_converter} and L{message_to_dict} for message-typed hints).

Compiling a C{.proto} at runtime needs C{grpcio-tools} (the C{grpc} extra);
an already compiled C{_pb2} module needs only C{protobuf}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import types
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from rpcd.core.protomessages import message_converter, message_to_dict
from rpcd.core.service import Kind, describe_service

if TYPE_CHECKING:
    from rpcd.core.service import ServiceRegistry

GRPC_ATTRIBUTE = "__rpcd_grpc__"


class ProtoError(Exception):
    """A C{.proto} could not be loaded; the message names the file and line."""


def _cache_dir() -> Path:
    base = os.environ.get("RPCD_PROTO_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "rpcd" / "protos"
    return Path(tempfile.gettempdir()) / f"rpcd-protos-{os.getuid() if hasattr(os, 'getuid') else 0}"


_IMPORT = re.compile(rb'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.M)


def _fingerprint(path: Path, include: list[Path]) -> str:
    """
    A hash of a .proto, the files it imports (found in C{include}) and the
    include path, so that a change to any of them compiles afresh.
    """
    digest = hashlib.sha256()
    seen: set[Path] = set()
    todo = [path]
    while todo and len(seen) < 500:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        data = current.read_bytes()
        digest.update(str(current).encode() + b"\0" + data + b"\0")
        for name in _IMPORT.findall(data):
            for directory in include:
                candidate = directory / name.decode()
                if candidate.is_file():
                    todo.append(candidate)
                    break
    digest.update("\0".join(map(str, include)).encode())
    return digest.hexdigest()[:32]


def _compile(path: Path, include: list[Path]) -> bytes:
    """
    Run grpcio-tools' protoc for a descriptor set of a file and its imports.

    @return: a serialized C{FileDescriptorSet}.
    @raise ProtoError: grpcio-tools is missing, or protoc refused the file
        (its message, naming file, line and column).
    """
    try:
        import grpc_tools
    except ImportError:
        raise ProtoError(f"{path}: compiling a .proto needs grpcio-tools "
                         "(pip install 'rpcd[grpc]'), or give a compiled _pb2 module") from None
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{path.stem}-{_fingerprint(path, include)}.pb"
    if out.exists():
        return out.read_bytes()
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    argv = [sys.executable, "-m", "grpc_tools.protoc",
            *(f"-I{d}" for d in include), f"-I{well_known}",
            "--include_imports", f"--descriptor_set_out={tmp}", str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        why = (done.stderr or done.stdout).strip() or f"protoc exited with {done.returncode}"
        raise ProtoError(why)
    os.replace(tmp, out)
    return out.read_bytes()


def load_proto(path: str | os.PathLike[str], include: Iterable[str | os.PathLike[str]] = (),
               relative_to: str | None = None) -> types.SimpleNamespace:
    """
    Compile a C{.proto} (with grpcio-tools, cached) and load its messages
    and services into protobuf's default descriptor pool.

    @param path: the file.
    @param include: more import directories (the file's own directory is
        always first).
    @param relative_to: a file whose directory a relative C{path} is taken
        from (a module's C{__file__}); the current directory otherwise.
    @return: a namespace like a C{_pb2} module: C{DESCRIPTOR} (the
        C{FileDescriptor}) and one attribute per top-level message class
        and enum.
    @raise ProtoError: the file is missing or does not compile; the message
        names the file and line.
    """
    proto = Path(path)
    if not proto.is_absolute() and relative_to is not None:
        proto = Path(relative_to).resolve().parent / proto
    proto = proto.resolve()
    if not proto.is_file():
        raise ProtoError(f"{proto}: no such .proto file")
    dirs = [proto.parent, *(Path(d).resolve() for d in include)]
    file_set = descriptor_pb2.FileDescriptorSet.FromString(_compile(proto, dirs))
    pool = descriptor_pool.Default()
    for file_proto in file_set.file:
        try:
            existing = pool.FindFileByName(file_proto.name)
        except KeyError:
            existing = None
        if existing is not None:
            if existing.serialized_pb != file_proto.SerializeToString():
                raise ProtoError(f"{proto}: {file_proto.name} is loaded already with other content "
                                 "(two .proto files with the same name?)")
            continue
        try:
            pool.AddSerializedFile(file_proto.SerializeToString())
        except Exception as e:
            raise ProtoError(f"{proto}: cannot load {file_proto.name}: {e}") from None
    main = pool.FindFileByName(file_set.file[-1].name)
    return module_namespace(main)


def module_namespace(file: FileDescriptor) -> types.SimpleNamespace:
    """
    @return: a namespace with C{DESCRIPTOR} and the file's top-level message
        classes and enums, as a generated C{_pb2} module has them.
    """
    namespace = types.SimpleNamespace(DESCRIPTOR=file)
    for name, message in file.message_types_by_name.items():
        setattr(namespace, name, message_factory.GetMessageClass(message))
    for name, enum in file.enum_types_by_name.items():
        setattr(namespace, name, enum)
    return namespace


def find_service(proto: Any, name: str | None = None,
                 relative_to: str | None = None) -> ServiceDescriptor:
    """
    Find a service in a C{.proto} path, a C{_pb2} module or a namespace
    from L{load_proto}.

    @param proto: one of those.
    @param name: the service's full name (C{package.Service}) or its short
        name; may be left out when the file has one service.
    @param relative_to: for a relative path, see L{load_proto}.
    @return: its descriptor.
    @raise ProtoError: no such service, or several and no name.
    """
    if isinstance(proto, (str, os.PathLike)):
        proto = load_proto(proto, relative_to=relative_to)
    file: FileDescriptor = proto.DESCRIPTOR
    services = file.services_by_name
    if name is None:
        if len(services) != 1:
            raise ProtoError(f"{file.name} has {len(services)} services "
                             f"({', '.join(sorted(services))}): name one")
        return next(iter(services.values()))
    for service in services.values():
        if name in (service.full_name, service.name):
            return service
    raise ProtoError(f"{file.name} has no service {name!r} "
                     f"(it has {', '.join(s.full_name for s in services.values()) or 'none'})")


def grpc_service(proto: Any, name: str | None = None) -> Callable[[type], type]:
    """
    Declare that a service class implements a proto service, so that gRPC
    callers reach it at C{/package.Service/Method}.

    The class's exposed methods are checked against the proto at once: a
    method of the same name must have the same kind (unary, server-,
    client- or bidirectional streaming).  Proto methods the class lacks are
    answered UNIMPLEMENTED.

    @param proto: a C{.proto} path (relative to the class's module), a
        compiled C{_pb2} module or a namespace from L{load_proto}.
    @param name: the service's name in the proto (see L{find_service}).
    @return: a class decorator.
    @raise ProtoError: the proto or the service cannot be found.
    @raise TypeError: a method's kind differs from the proto's.
    """
    def mark(cls: type) -> type:
        module = sys.modules.get(cls.__module__)
        descriptor = find_service(proto, name, getattr(module, "__file__", None))
        check_kinds(cls, descriptor)
        setattr(cls, GRPC_ATTRIBUTE, descriptor)
        return cls
    return mark


def method_kind(method: Any) -> Kind:
    """
    @param method: a C{MethodDescriptor}.
    @return: its L{Kind}.
    """
    if method.client_streaming:
        return Kind.BIDI_STREAM if method.server_streaming else Kind.CLIENT_STREAM
    return Kind.SERVER_STREAM if method.server_streaming else Kind.UNARY


def check_kinds(cls: type, descriptor: ServiceDescriptor) -> None:
    """
    @raise TypeError: an exposed method's kind differs from the proto's
        method of the same name.
    """
    spec = describe_service(cls)
    for method in descriptor.methods:
        mine = spec.methods.get(method.name)
        if mine is not None and mine.kind is not method_kind(method):
            raise TypeError(f"{cls.__qualname__}.{method.name} is {mine.kind.value} but "
                            f"{descriptor.full_name}.{method.name} is "
                            f"{method_kind(method).value} in {descriptor.file.name}")


def service_descriptor(cls: type) -> ServiceDescriptor | None:
    """
    @return: the proto service a class declared with L{grpc_service}, or None.
    """
    return getattr(cls, GRPC_ATTRIBUTE, None)


@dataclasses.dataclass(frozen=True)
class GrpcMethod:
    """
    One gRPC path and the rpcd method behind it.

    @ivar path: C{/package.Service/Method}.
    @ivar name: rpcd's C{Service.Method}.
    @ivar input: the request message class.
    @ivar output: the response message class.
    @ivar kind: the proto's L{Kind}.
    """

    path: str
    name: str
    input: type[Message]
    output: type[Message]
    kind: Kind


_routes: weakref.WeakKeyDictionary[Any, tuple[int, dict[str, GrpcMethod]]] = \
    weakref.WeakKeyDictionary()


def routes(registry: ServiceRegistry) -> dict[str, GrpcMethod]:
    """
    The gRPC paths a registry serves (worked out once per registry and set
    of services).

    @param registry: the daemon's services.
    @return: path to L{GrpcMethod}.
    """
    specs = list(registry.services())
    cached = _routes.get(registry)
    if cached is not None and cached[0] == len(specs):
        return cached[1]
    table: dict[str, GrpcMethod] = {}
    for spec in specs:
        descriptor = service_descriptor(spec.cls)
        if descriptor is None:
            continue
        for method in descriptor.methods:
            path = f"/{descriptor.full_name}/{method.name}"
            table[path] = GrpcMethod(
                path, f"{spec.name}.{method.name}",
                message_factory.GetMessageClass(method.input_type),
                message_factory.GetMessageClass(method.output_type),
                method_kind(method))
    _routes[registry] = (len(specs), table)
    return table


def grpc_services(registry: ServiceRegistry) -> list[ServiceDescriptor]:
    """
    @return: the proto services a registry serves, by full name.
    """
    found: dict[str, ServiceDescriptor] = {}
    for spec in registry.services():
        descriptor = service_descriptor(spec.cls)
        if descriptor is not None:
            found[descriptor.full_name] = descriptor
    return [found[n] for n in sorted(found)]


def message_to_plain(message: Message) -> dict[str, Any]:
    """
    A message as rpcd's plain data for methods that take mappings: fields
    set, by their proto names; bytes stay bytes, enums are ints, nested
    messages and maps are dicts, repeated fields lists.

    @param message: a message.
    @return: the mapping.
    """
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            item = message_type.fields_by_name["value"]
            if item.message_type is not None:
                out[field.name] = {k: message_to_plain(v) for k, v in value.items()}
            else:
                out[field.name] = dict(value)
        elif field.is_repeated:
            out[field.name] = [message_to_plain(v) for v in value] if message_type else list(value)
        else:
            out[field.name] = message_to_plain(value) if message_type else value
    return out


def plain_to_message(value: Mapping[str, Any], cls: type[Message]) -> Message:
    """
    Build a message from plain data (the inverse of L{message_to_plain}):
    keys are proto or JSON field names; bytes fields take bytes (or base64
    text), integer fields take ints (or their text).

    @param value: the mapping.
    @param cls: the message class.
    @return: the message.
    @raise ValueError: an unknown field or a value of the wrong type; the
        message names the field.
    """
    message = cls()
    _fill(message, value, cls.DESCRIPTOR.full_name)
    return message


def _fill(message: Message, value: Mapping[str, Any], where: str) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
    descriptor = message.DESCRIPTOR
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if field is None:
            raise ValueError(f"{where}: {descriptor.full_name} has no field {key!r}")
        if item is None:
            continue
        path = f"{where}.{field.name}"
        target = getattr(message, field.name)
        message_type = field.message_type
        try:
            if message_type is not None and message_type.GetOptions().map_entry:
                item_field = message_type.fields_by_name["value"]
                for k, v in item.items():
                    if item_field.message_type is not None:
                        _fill(target[k], v, f"{path}[{k!r}]")
                    else:
                        target[k] = _scalar(item_field, v)
            elif field.is_repeated:
                for v in item:
                    if message_type is not None:
                        _fill(target.add(), v, f"{path}[]")
                    else:
                        target.append(_scalar(field, v))
            elif message_type is not None:
                _fill(target, item, path)
            else:
                setattr(message, field.name, _scalar(field, item))
        except (TypeError, ValueError) as e:
            if str(e).startswith(where):
                raise
            raise ValueError(f"{path}: {e}") from None


def _scalar(field: Any, value: Any) -> Any:
    if field.type == field.TYPE_BYTES and isinstance(value, str):
        import base64
        return base64.b64decode(value)
    if isinstance(value, str) and field.cpp_type in (field.CPPTYPE_INT32, field.CPPTYPE_INT64,
                                                     field.CPPTYPE_UINT32, field.CPPTYPE_UINT64):
        return int(value)
    return value


def wants_plain(method: Any) -> bool:
    """
    Whether a bound method takes plain data (mappings) rather than message
    objects for its request messages: its parameter (or stream item) hint
    is not a message class.

    @param method: an L{rpcd.core.service.BoundMethod}.
    """
    spec = method.spec
    cached = _plain_cache.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    if spec.stream_param is not None:
        import typing
        hints = typing.get_type_hints(method.function)
        args = typing.get_args(hints.get(spec.stream_param))
        hint = args[0] if args else Any
    else:
        hint = spec.arg_hint
    plain = not (isinstance(hint, type) and issubclass(hint, Message))
    _plain_cache[id(spec)] = (spec, plain)
    return plain


_plain_cache: dict[int, tuple[Any, bool]] = {}


__all__ = ["ProtoError", "load_proto", "find_service", "grpc_service", "service_descriptor",
           "GrpcMethod", "routes", "grpc_services", "message_converter", "message_to_dict",
           "module_namespace", "message_to_plain", "plain_to_message", "wants_plain"]
