"""
The typed Python client module written from an OpenRPC document
(L{rpcd.cli.stubs}, run through fake clients, and checked by mypy), and the Go
declarations (L{rpcd.core.gostructs}).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from rpcd.errors import InvalidArgument
from rpcd.core.gostructs import go_name, go_source, go_type
from rpcd.core.schema import openrpc_document
from rpcd.service import describe_service
from rpcd.cli.stubs import identifier, python_module
from tests.cache import cache_dir
from tests.test_schema import Blob, Shapes

ROOT = Path(__file__).resolve().parent.parent


def _document() -> dict[str, Any]:
    from rpcd.service import exposed

    class Blobs:
        @exposed
        def Put(self, blob: Blob, key: str, replace: bool = False) -> list[Blob]:
            """Store a blob."""
            return [blob]

    return openrpc_document([describe_service(Shapes), describe_service(Blobs)])


def load(test: SynchronousTestCase, text: str, name: str = "rpcd_stub_under_test") -> types.ModuleType:
    """
    @return: the module whose source is C{text}, imported from a file.
    """
    path = Path(test.mktemp())
    path.mkdir()
    source = path / f"{name}.py"
    source.write_text(text)
    spec = importlib.util.spec_from_file_location(name, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their hints through it
    test.addCleanup(sys.modules.pop, name, None)
    spec.loader.exec_module(module)
    return module


class FakeCaller:
    """An awaited client that answers each method from a table."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Any, Any]] = []

    def call(self, method: str, args: Any = None, *, timeout: float | None = None) -> Deferred[Any]:
        self.calls.append((method, args, timeout))
        return succeed(self.answers[method])

    def stream(self, method: str, args: Any = None, *, timeout: float | None = None) -> Any:
        self.calls.append((method, args, timeout))
        return FakeStream(self.answers[method])


class FakeStream:
    """A client library stream of given messages."""

    def __init__(self, messages: list[Any]) -> None:
        self.messages = list(messages)
        self.sent: list[Any] = []
        self.closed = False

    def __aiter__(self) -> FakeStream:
        return self

    def __anext__(self) -> Deferred[Any]:
        if not self.messages:
            raise StopAsyncIteration
        return succeed(self.messages.pop(0))

    def send(self, value: Any) -> Deferred[None]:
        self.sent.append(value)
        return succeed(None)

    def close_send(self) -> None:
        self.closed = True

    def result(self) -> Deferred[Any]:
        return succeed(self.messages[0])


class BlockingFake:
    """A blocking client answering from a table."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, Any]] = []

    def call(self, method: str, args: Any = None, *, timeout: float | None = None) -> Any:
        self.calls.append((method, args))
        return self.answers[method]


class StubModuleTests(SynchronousTestCase):
    """The module written from a document calls through rpcd's clients with typed values."""

    def setUp(self) -> None:
        self.text = python_module(_document())
        self.stub = load(self, self.text)

    def settle(self, coroutine: Any) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def test_dataclasses(self) -> None:
        """Each component is a dataclass; fields without a default are required, defaults kept."""
        point = self.stub.Point(x=1)
        self.assertEqual((point.x, point.y, point.label, point.tags), (1, 0, "origin", []))
        self.assertIn("class Blob:\n    \"\"\"Blob\"\"\"\n    data: bytes\n    size: int\n", self.text)
        self.assertIn("class Book:\n", self.text)  # the TypedDict

    def test_unary_call(self) -> None:
        """An awaited call sends the encoded arguments and decodes the result into the dataclass."""
        caller = FakeCaller({"Shapes.Move": {"X": 4, "y": 5}})
        api = self.stub.Services(caller)
        moved = self.settle(api.Shapes.Move(self.stub.Point(x=1, tags=["a"]), 3, timeout=2.5))
        self.assertEqual(moved, self.stub.Point(x=4, y=5))
        self.assertEqual(caller.calls, [("Shapes.Move", {"point": {
            "x": 1, "y": 0, "label": "origin", "tags": ["a"], "go": 0}, "by": 3}, 2.5)])

    def test_one_param_and_bytes(self) -> None:
        """A one-parameter method sends its value alone; bytes come back from base64."""
        caller = FakeCaller({"Blobs.Put": [{"data": "aGk=", "size": 2}]})
        api = self.stub.Services(caller)
        result = self.settle(api.Blobs.Put(self.stub.Blob(data=b"hi", size=2), "k"))
        self.assertEqual(result, [self.stub.Blob(data=b"hi", size=2)])
        self.assertEqual(caller.calls[0][1], {"blob": {"data": b"hi", "size": 2}, "key": "k",
                                              "replace": False})

    def test_blocking(self) -> None:
        """The blocking classes call without awaiting and leave streams out."""
        fake = BlockingFake({"Shapes.Nothing": None})
        api = self.stub.BlockingServices(fake)
        self.assertIsNone(api.Shapes.Nothing())
        self.assertEqual(fake.calls, [("Shapes.Nothing", None)])
        self.assertFalse(hasattr(api.Shapes, "Count"))

    def test_mismatch(self) -> None:
        """A result that does not fit the stub's type fails naming the field."""
        api = self.stub.Services(FakeCaller({"Shapes.Move": {"x": "four"}}))
        failure = self.failureResultOf(Deferred.fromCoroutine(api.Shapes.Move(self.stub.Point(x=1))),
                                       InvalidArgument)
        self.assertEqual(failure.value.message, "result.x: expected int, got str")

    def test_server_stream(self) -> None:
        """A server stream is an async iterator of typed messages."""
        api = self.stub.Services(FakeCaller({"Shapes.Count": [0, 1.0, 2]}))

        async def collect() -> list[Any]:
            return [n async for n in api.Shapes.Count(3)]
        self.assertEqual(self.settle(collect()), [0, 1, 2])

    def test_bidi_stream(self) -> None:
        """A bidirectional stream sends encoded messages and gives typed ones back."""
        caller = FakeCaller({"Shapes.Echo": ["aGk="]})
        stream = self.stub.Services(caller).Shapes.Echo()
        self.successResultOf(stream.send("hi"))
        stream.close_send()
        self.assertEqual((stream.stream.sent, stream.stream.closed), (["hi"], True))

        async def collect() -> list[Any]:
            return [m async for m in stream]
        self.assertEqual(self.settle(collect()), [b"hi"])

    def test_client_stream_result(self) -> None:
        """A client stream's result is decoded to its type."""
        stream = self.stub.Services(FakeCaller({"Shapes.Sum": [3]})).Shapes.Sum()
        self.assertEqual(self.settle(stream.result()), 3.0)

    def test_mypy_strict(self) -> None:
        """mypy --strict finds nothing wrong in the module, and finds a call with a wrong argument type."""
        try:
            from mypy import api
        except ImportError:
            raise SkipTest("mypy is not installed (pip install -e '.[test]' installs it)")
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "shapes_api.py").write_text(self.text)
        (directory / "good.py").write_text(
            "from rpcd.client import BlockingClient\n"
            "from shapes_api import BlockingServices, Point\n\n"
            "def use(client: BlockingClient) -> int:\n"
            "    moved: Point = BlockingServices(client).Shapes.Move(Point(x=1), by=2)\n"
            "    return moved.x\n")
        (directory / "bad.py").write_text(
            "from rpcd.client import BlockingClient\n"
            "from shapes_api import BlockingServices\n\n"
            "def use(client: BlockingClient) -> str:\n"
            "    return BlockingServices(client).Shapes.Move(1)\n")
        flags = ["--strict", "--follow-imports=silent",
                 "--cache-dir", str(stubs_mypy_cache()), "--config-file", ""]
        import os
        old = os.environ.get("MYPYPATH")
        os.environ["MYPYPATH"] = str(ROOT)
        self.addCleanup(lambda: os.environ.__setitem__("MYPYPATH", old) if old is not None
                        else os.environ.pop("MYPYPATH", None))
        out, err, status = api.run([*flags, str(directory / "shapes_api.py"), str(directory / "good.py")])
        self.assertEqual(status, 0, out + err)
        out, err, status = api.run([*flags, str(directory / "shapes_api.py"), str(directory / "bad.py")])
        self.assertEqual(status, 1, out + err)
        self.assertIn('Argument 1 to "Move" of "ShapesBlockingClient" has incompatible type "int"', out)
        self.assertIn('Incompatible return value type (got "Point", expected "str")', out)

    test_mypy_strict.timeout = 300  # type: ignore[attr-defined]  # trial reads it


class IdentifierTests(SynchronousTestCase):
    """Names that are no Python identifiers get one."""

    def test_identifier(self) -> None:
        """Other characters become underscores, keywords and leading digits are guarded."""
        self.assertEqual(identifier("grpc.health-v1"), "grpc_health_v1")
        self.assertEqual(identifier("class"), "class_")
        self.assertEqual(identifier("1st"), "_1st")

    def test_names_taken(self) -> None:
        """A type named like an import, and parameters named self or timeout, are renamed; the module still works."""
        document = {"openrpc": "1.3.2", "info": {"title": "t", "version": "1"}, "components": {
            "schemas": {"Any": {"type": "object", "properties": {"x": {"type": "integer"}}}}},
            "methods": [{"name": "S.M", "params": [
                {"name": "self", "schema": {"$ref": "#/components/schemas/Any"}},
                {"name": "timeout", "schema": {"type": "number"}}],
                "result": {"name": "result", "schema": {"$ref": "#/components/schemas/Any"}}}]}
        stub = load(self, python_module(document), "rpcd_taken_stub")
        fake = BlockingFake({"S.M": {"x": 3}})
        result = stub.BlockingServices(fake).S.M(stub.Any2(x=1), 2.5, timeout=1)
        self.assertEqual((result, fake.calls), (stub.Any2(x=3), [("S.M", {"self": {"x": 1}, "timeout": 2.5})]))

    def test_odd_fields(self) -> None:
        """A component with a field that is no identifier is a plain dict type."""
        document = {"openrpc": "1.3.2", "info": {"title": "t", "version": "1"}, "methods": [],
                    "components": {"schemas": {"Odd": {"type": "object", "properties": {
                        "not-ok": {"type": "string"}}}}}}
        text = python_module(document)
        self.assertIn("Odd = dict[str, Any]", text)
        load(self, text, "rpcd_odd_stub")


class GoTests(SynchronousTestCase):
    """Go declarations for each type."""

    def test_names(self) -> None:
        """Go names are exported CamelCase, as gob exports dataclass fields."""
        self.assertEqual(go_name("by_name"), "ByName")
        self.assertEqual(go_name("x"), "X")
        self.assertEqual(go_name("_1"), "X1")

    def test_types(self) -> None:
        """Each JSON Schema shape has its Go type."""
        self.assertEqual(go_type({"type": "integer"}), "int")
        self.assertEqual(go_type({"type": "integer", "minimum": 0, "x-go-type": "uint"}), "uint")
        self.assertEqual(go_type({"type": "string", "x-rpcd-type": "bytes"}), "[]byte")
        self.assertEqual(go_type({"type": "array", "items": [{"type": "string"}] * 2}), "[2]string")
        self.assertEqual(go_type({"type": "array", "items": [{"type": "string"}, {"type": "integer"}]}),
                         "[]any")
        self.assertEqual(go_type({"type": "object", "additionalProperties": {"type": "number"},
                                  "x-rpcd-key": {"type": "integer"}}), "map[int]float64")
        self.assertEqual(go_type({"anyOf": [{"$ref": "#/components/schemas/Node"}, {"type": "null"}]}),
                         "*Node")
        self.assertEqual(go_type({"type": "null"}), "struct{}")
        self.assertEqual(go_type({}), "any")

    def test_source(self) -> None:
        """The source has a struct per component with json tags, and a Call per unary method."""
        text = go_source(_document(), "shapes")
        self.assertIn("package shapes\n", text)
        self.assertIn("type Point struct {\n", text)
        self.assertIn('\tGoName int      `json:"go"`\n', text)
        self.assertIn('\tTags   []string `json:"tags"`\n', text)
        self.assertIn('\tSize uint   `json:"size"`\n', text)
        self.assertIn("type Book struct {", text)
        self.assertIn('//\terr := client.Call("Shapes.Move", &ShapesMoveParams{...}, &reply)', text)
        self.assertIn("//\tvar reply Point\n", text)
        self.assertIn("// A server stream: call it with rpcd's native protocol or gRPC", text)


class DocumentOptionTests(SynchronousTestCase):
    """rpcd stubs and rpcd schema --go read a saved document with --document."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()

    def rpcd(self, *argv: str) -> tuple[int, str]:
        import io
        from contextlib import redirect_stderr, redirect_stdout

        from rpcd.cli import run
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = run(list(argv))
        return status, out.getvalue() + err.getvalue()

    def test_from_response(self) -> None:
        """A JSON-RPC response carrying the document (as curl saves it) makes the stub and the Go types."""
        import json
        path = self.directory / "discover.json"
        path.write_text(json.dumps({"jsonrpc": "2.0", "id": 1, "result": _document()}))
        target = self.directory / "api.py"
        status, text = self.rpcd("stubs", "--document", str(path), "-o", str(target))
        self.assertEqual(status, 0, text)
        self.assertIn("class ShapesClient:", target.read_text())
        self.assertRegex(text, r"wrote .*api\.py: 8 methods, 4 types")
        status, text = self.rpcd("schema", "--go", "--document", str(path))
        self.assertEqual(status, 0, text)
        self.assertIn("type Point struct {", text)

    def test_refused(self) -> None:
        """A missing file, non-JSON, a non-document, both or neither sources, and a bad Go package exit 2 naming the problem."""
        path = self.directory / "x.json"
        path.write_text("[1]")
        missing_file = str(self.directory / "nope.json")
        for argv, message in [
            (["stubs", "--document", missing_file, "-o", "-"], f"cannot read {missing_file}"),
            (["stubs", "--document", str(path), "-o", "-"], "is not an OpenRPC document"),
            (["stubs", "-o", "-"], "give either ENDPOINT or --document FILE"),
            (["stubs", "tcp:127.0.0.1:1", "--document", str(path), "-o", "-"],
             "give either ENDPOINT or --document FILE"),
            (["schema", "--go", "--go-package", "not-go", "--document", str(path)],
             "--go-package 'not-go' is not a Go identifier"),
        ]:
            status, text = self.rpcd(*argv)
            self.assertEqual(status, 2, argv)
            self.assertIn(message, text)
        path.write_text("{nope")
        status, text = self.rpcd("schema", "--document", str(path))
        self.assertEqual((status, "is not JSON" in text), (2, True), text)


def stubs_mypy_cache() -> Path:
    """
    @return: mypy's incremental cache for the checks of generated stubs in
        this checkout, kept across runs (L{tests.cache}), as test_typing's:
        mypy checks cached data against the sources, so the errors are a cold
        run's, but rpcd's own modules, which a stub imports, are not analysed
        again for each check.  mypy replaces cache files atomically, so
        trial's C{-j} workers may share it.
    """
    checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:16]
    return cache_dir("mypy-stubs", checkout)
