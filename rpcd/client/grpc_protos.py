"""
The C{.proto} files a gRPC client is given: compiled at run time with
C{grpcio-tools}' protoc into a descriptor set (cached on disk), loaded into
a private descriptor pool, and read as a table of methods with their message
classes.  Nothing is imported from generated C{_pb2} modules, so two
C{.proto} files of the same name, or one the application also imports,
never clash.

    protos = load_protos(["hello_world.proto"])                 # blocking
    protos = await load_protos_in_thread(reactor, ["hello_world.proto"])
    method = protos.method("HelloWorldService.SayHelloWorld")
    method.path                       # "/helloworld.HelloWorldService/SayHelloWorld"
    request = protos.request(method, {"greeting": "hi"})       # protobuf JSON mapping
    protos.to_json(method.response_class.FromString(payload))

The cache directory is C{$RPCD_CACHE_DIR/protos}, else
C{$XDG_CACHE_HOME/rpcd/protos}, else C{~/.cache/rpcd/protos}; an entry is
keyed by the files' contents and the compiler's version, and is used only
while every file it was compiled from (imports included) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from rpcd.errors import InvalidArgument, Unimplemented


@dataclass(frozen=True)
class GRPCMethod:
    """
    One method of a service in the C{.proto} files.

    @ivar name: C{package.Service.Method}.
    @ivar path: the HTTP/2 path, C{/package.Service/Method}.
    """

    name: str
    path: str
    request_class: type[Message]
    response_class: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def kind(self) -> str:
        """
        @return: C{unary}, C{server streaming}, C{client streaming} or
            C{bidirectional}.
        """
        if self.client_streaming:
            return "bidirectional" if self.server_streaming else "client streaming"
        return "server streaming" if self.server_streaming else "unary"


class ProtoSet:
    """
    The services and messages of a set of C{.proto} files.

    @ivar methods: C{package.Service.Method} to L{GRPCMethod}.
    @ivar pool: the private descriptor pool holding them.
    """

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        """
        @param files: the compiled files, dependencies first.
        """
        self.pool = descriptor_pool.DescriptorPool()
        for file_proto in files.file:
            self.pool.Add(file_proto)
        self.methods: dict[str, GRPCMethod] = {}
        for file_proto in files.file:
            described = self.pool.FindFileByName(file_proto.name)
            for service in described.services_by_name.values():
                for method in service.methods:
                    name = f"{service.full_name}.{method.name}"
                    self.methods[name] = GRPCMethod(
                        name, f"/{service.full_name}/{method.name}",
                        message_factory.GetMessageClass(method.input_type),
                        message_factory.GetMessageClass(method.output_type),
                        method.client_streaming, method.server_streaming)

    def method(self, name: str) -> GRPCMethod:
        """
        Find a method by C{package.Service.Method}, C{/package.Service/Method},
        or C{Service.Method} when only one package has that service.

        @param name: the name.
        @return: the method.
        @raise Unimplemented: no such method (the message lists what there is).
        """
        wanted = name.strip("/").replace("/", ".")
        found = self.methods.get(wanted)
        if found is not None:
            return found
        matches = [m for full, m in self.methods.items() if full.endswith("." + wanted)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(sorted(self.methods)) or "none"
        if matches:
            raise Unimplemented(f"{name!r} is ambiguous: {', '.join(m.name for m in matches)}")
        raise Unimplemented(f"no method {name!r} in the .proto files (known: {known})")

    def request(self, method: GRPCMethod, value: Any) -> bytes:
        """
        Serialize a request.

        @param method: the method.
        @param value: a message of the request type, a dict in protobuf's
            JSON mapping (field names or their JSON names), or None for an
            empty message.
        @return: the serialized message.
        @raise InvalidArgument: the value does not fit the request type.
        """
        cls = method.request_class
        if isinstance(value, Message):
            expected = cls.DESCRIPTOR.full_name
            if value.DESCRIPTOR.full_name != expected:
                raise InvalidArgument(f"{method.name} takes {expected}, "
                                      f"not {value.DESCRIPTOR.full_name}")
            return value.SerializeToString()
        if value is None:
            return b""
        if not isinstance(value, Mapping):
            raise InvalidArgument(f"{method.name} takes a {cls.DESCRIPTOR.full_name} "
                                  f"(a JSON object), not {type(value).__name__}")
        try:
            # Fast path: field names and values the message class takes as
            # they are (its constructor refuses JSON names, base64 text for
            # bytes, int64 as text, timestamps as text: those go the JSON way).
            return cls(**value).SerializeToString()
        except (TypeError, ValueError):
            pass
        message = cls()
        try:
            json_format.ParseDict(value, message, descriptor_pool=self.pool)
        except json_format.ParseError as e:
            raise InvalidArgument(f"{method.name}: bad {cls.DESCRIPTOR.full_name}: {e}") from None
        return message.SerializeToString()

    def to_json(self, message: Message) -> dict[str, Any]:
        """
        @param message: a decoded message.
        @return: it in protobuf's JSON mapping (JSON names; default values
            left out).
        """
        return json_format.MessageToDict(message, descriptor_pool=self.pool)


def cache_directory() -> Path:
    """
    @return: where compiled descriptor sets are kept.
    """
    base = os.environ.get("RPCD_CACHE_DIR")
    if base:
        return Path(base) / "protos"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "rpcd" / "protos"


def _well_known_include() -> Path:
    import grpc_tools
    return Path(grpc_tools.__file__).parent / "_proto"


def _compiler_version() -> str:
    from grpc_tools import grpc_version
    return grpc_version.VERSION


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compile_protos(paths: Iterable[str | os.PathLike[str]], include: Iterable[str] = (),
                   cache: Path | None = None) -> descriptor_pb2.FileDescriptorSet:
    """
    Compile C{.proto} files (with their imports) into a descriptor set,
    using the cached one when the files are unchanged.  Blocks.

    @param paths: the files.
    @param include: more import directories (each file's own directory is
        one, and so are protobuf's well-known types).
    @param cache: the cache directory (L{cache_directory} by default).
    @return: the descriptor set, dependencies first.
    @raise ValueError: a file is missing, or protoc refused it (its
        message is included).
    """
    files = [Path(p).resolve() for p in paths]
    if not files:
        raise ValueError("no .proto file given")
    for path in files:
        if not path.is_file():
            raise ValueError(f"{path}: no such .proto file")
    includes = list(dict.fromkeys([*(str(Path(i).resolve()) for i in include),
                                   *(str(p.parent) for p in files)]))
    key = hashlib.sha256(json.dumps([_compiler_version(), includes,
                                     [(str(p), _digest(p)) for p in files]]).encode()).hexdigest()
    entry = (cache or cache_directory()) / key[:32]
    cached = _read_cache(entry)
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="rpcd-protoc-") as tmp:
        out = Path(tmp) / "set.pb"
        argv = [sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_out={out}",
                "--include_imports", *(f"-I{i}" for i in includes),
                f"-I{_well_known_include()}", *map(str, files)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise ValueError(f"protoc could not compile {', '.join(map(str, files))}:\n"
                             f"{(done.stderr or done.stdout).strip()}")
        data = out.read_bytes()
    files_set = descriptor_pb2.FileDescriptorSet.FromString(data)
    _write_cache(entry, data, files_set, includes)
    return files_set


def _sources(files_set: descriptor_pb2.FileDescriptorSet, includes: list[str]) -> dict[str, str]:
    sources = {}
    for file_proto in files_set.file:
        for directory in includes:
            candidate = Path(directory) / file_proto.name
            if candidate.is_file():
                sources[str(candidate)] = _digest(candidate)
                break
    return sources


def _read_cache(entry: Path) -> descriptor_pb2.FileDescriptorSet | None:
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        for source, digest in manifest["sources"].items():
            if _digest(Path(source)) != digest:
                return None
        return descriptor_pb2.FileDescriptorSet.FromString((entry / "set.pb").read_bytes())
    except (OSError, ValueError, KeyError):
        return None


def _write_cache(entry: Path, data: bytes, files_set: descriptor_pb2.FileDescriptorSet,
                 includes: list[str]) -> None:
    try:
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "set.pb").write_bytes(data)
        manifest = {"sources": _sources(files_set, includes)}
        (entry / "manifest.json").write_text(json.dumps(manifest))
    except OSError:
        pass  # No cache: compile again next time.


def load_protos(paths: Iterable[str | os.PathLike[str]], include: Iterable[str] = ()) -> ProtoSet:
    """
    L{compile_protos}, then L{ProtoSet}.  Blocks.

    @raise ValueError: see L{compile_protos}.
    """
    return ProtoSet(compile_protos(paths, include))


def load_protos_in_thread(reactor: Any, paths: Iterable[str | os.PathLike[str]],
                          include: Iterable[str] = ()) -> Deferred[ProtoSet]:
    """
    L{load_protos} in the reactor's thread pool.

    @return: a Deferred firing with the L{ProtoSet}, or failing with
        C{ValueError}.
    """
    paths = list(paths)
    include = list(include)
    return deferToThreadPool(reactor, reactor.getThreadPool(), load_protos, paths, include)
