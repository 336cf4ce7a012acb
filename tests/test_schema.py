"""
Type hints to JSON Schema and services to an OpenRPC document (L{rpcd.core.schema}),
the document checked against the structure the OpenRPC specification requires,
and the C{TypedDict} arguments the schemas describe (L{rpcd.convert}).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, TypedDict

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rpcd.builtin import Discovery, Introspection
from rpcd.context import CallContext
from rpcd.convert import argument_converter, convert_argument
from rpcd.errors import InvalidArgument
from rpcd.core.schema import (
    DISCOVER_SERVICE,
    OPENRPC_VERSION,
    SchemaBuilder,
    openrpc_document,
    plain_text,
    registry_document,
)
from rpcd.service import Kind, ServiceRegistry, describe_service, exposed, service
from rpcd.wire.gob import uint
from tests.jsonservices import connect_protocol, make_server
from tests.openrpc_meta import problems, validator
from tests.test_httpwire import get, post, responses


@dataclass
class Point:
    """A point on the plane, in C{units}."""

    x: int
    y: int = 0
    label: str = "origin"
    tags: list[str] = field(default_factory=list)
    go: int = field(default=0, metadata={"gob_name": "GoName"})


@dataclass
class Node:
    value: int
    next: Optional[Node] = None


@dataclass
class Blob:
    data: bytes
    size: uint


class Movie(TypedDict, total=False):
    title: str
    year: int


class Book(TypedDict):
    """A book."""

    title: str
    pages: int


class Opaque:
    pass


class Shapes:
    """A service using every shape."""

    @exposed
    def Move(self, point: Point, by: int = 1) -> Point:
        """
        Move C{point} by C{by}.

        Both coordinates move.
        """
        return point

    @exposed
    def Nothing(self) -> None:
        """Do nothing."""

    @exposed
    def Untyped(self, value):  # type: ignore[no-untyped-def]
        return value

    @exposed
    async def Count(self, upto: int) -> AsyncIterator[int]:
        """Count up to upto."""
        for n in range(upto):
            yield n

    @exposed
    async def Sum(self, numbers: AsyncIterator[float]) -> float:
        """Add the numbers sent."""
        total = 0.0
        async for n in numbers:
            total += n
        return total

    @exposed
    async def Echo(self, lines: AsyncIterator[str]) -> AsyncIterator[bytes]:
        """Send each line back as bytes."""
        async for line in lines:
            yield line.encode()

    @exposed
    def Book(self, book: Book, ctx: CallContext) -> Movie:
        """Make a movie of a book."""
        return {"title": book["title"]}


@service("Secret")
class Secret:
    @exposed
    def Reveal(self) -> str:
        """Tell the secret."""
        return "42"


class _Session:
    """What the registry's access checks read of a session."""

    def __init__(self, user: str | None) -> None:
        self.user = user
        self.tls_identity = None


class _Access:
    require_login = True
    require_identity = ()


class HintSchemaTests(SynchronousTestCase):
    """Each kind of type hint becomes the JSON Schema that describes its wire values."""

    def schema(self, hint: Any) -> dict[str, Any]:
        self.builder = SchemaBuilder()
        return self.builder.schema(hint)

    def test_scalars(self) -> None:
        """int, float, str, bool and None are JSON's integer, number, string, boolean and null."""
        self.assertEqual(self.schema(int), {"type": "integer"})
        self.assertEqual(self.schema(float), {"type": "number"})
        self.assertEqual(self.schema(str), {"type": "string"})
        self.assertEqual(self.schema(bool), {"type": "boolean"})
        self.assertEqual(self.schema(None), {"type": "null"})
        self.assertEqual(self.schema(type(None)), {"type": "null"})

    def test_anything(self) -> None:
        """Any, object and a class rpcd has no rule for allow anything (the class is named)."""
        self.assertEqual(self.schema(Any), {})
        self.assertEqual(self.schema(object), {})
        self.assertEqual(self.schema(Opaque), {"x-rpcd-python": f"{__name__}.Opaque"})

    def test_bytes(self) -> None:
        """bytes is base64 text in JSON, marked as bytes."""
        self.assertEqual(self.schema(bytes), {"type": "string", "contentEncoding": "base64",
                                              "x-rpcd-type": "bytes"})

    def test_unsigned(self) -> None:
        """gob's uint is a non-negative integer whose Go type is uint."""
        self.assertEqual(self.schema(uint), {"type": "integer", "minimum": 0, "x-go-type": "uint"})

    def test_optional_and_union(self) -> None:
        """Optional[T] and T | U are anyOf their members; a union with Any is anything."""
        self.assertEqual(self.schema(Optional[int]),
                         {"anyOf": [{"type": "integer"}, {"type": "null"}]})
        self.assertEqual(self.schema(int | str), {"anyOf": [{"type": "integer"}, {"type": "string"}]})
        self.assertEqual(self.schema(int | Any), {})

    def test_sequences(self) -> None:
        """Lists, variable tuples and sets are arrays of their item; a set's items are unique."""
        self.assertEqual(self.schema(list[int]), {"type": "array", "items": {"type": "integer"}})
        self.assertEqual(self.schema(tuple[str, ...]), {"type": "array", "items": {"type": "string"}})
        self.assertEqual(self.schema(set[int]),
                         {"type": "array", "items": {"type": "integer"}, "uniqueItems": True})
        self.assertEqual(self.schema(list), {"type": "array"})

    def test_fixed_tuple(self) -> None:
        """A fixed tuple is an array of exactly its items, each with its own schema."""
        self.assertEqual(self.schema(tuple[str, int]), {
            "type": "array", "items": [{"type": "string"}, {"type": "integer"}],
            "additionalItems": False, "minItems": 2, "maxItems": 2})

    def test_mappings(self) -> None:
        """dict[str, V] is an object of V; other keys are named in x-rpcd-key."""
        self.assertEqual(self.schema(dict[str, float]),
                         {"type": "object", "additionalProperties": {"type": "number"}})
        self.assertEqual(self.schema(dict[int, str]), {
            "type": "object", "additionalProperties": {"type": "string"},
            "x-rpcd-key": {"type": "integer"}})
        self.assertEqual(self.schema(dict), {"type": "object"})

    def test_dataclass(self) -> None:
        """A dataclass is a component: its fields, the ones without default required, defaults and Go names kept."""
        self.assertEqual(self.schema(Point), {"$ref": "#/components/schemas/Point"})
        self.assertEqual(self.builder.components["Point"], {
            "type": "object", "title": "Point",
            "description": "A point on the plane, in units.",
            "properties": {
                "x": {"type": "integer"},
                "y": {"type": "integer", "default": 0},
                "label": {"type": "string", "default": "origin"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "go": {"type": "integer", "default": 0, "x-go-name": "GoName"},
            },
            "required": ["x"],
        })

    def test_recursive_dataclass(self) -> None:
        """A dataclass that refers to itself is one component referring to itself."""
        self.schema(list[Node])
        self.assertEqual(list(self.builder.components), ["Node"])
        self.assertEqual(self.builder.components["Node"]["properties"]["next"],
                         {"anyOf": [{"$ref": "#/components/schemas/Node"}, {"type": "null"}],
                          "default": None})

    def test_component_reused(self) -> None:
        """A type met twice is described once."""
        self.schema(dict[str, Point])
        self.builder.schema(list[Point])
        self.assertEqual(list(self.builder.components), ["Point"])

    def test_same_name(self) -> None:
        """Two classes with one name get two components."""
        Other = dataclasses.make_dataclass("Point", [("z", int)])
        self.schema(Point)
        self.assertEqual(self.builder.schema(Other), {"$ref": "#/components/schemas/Point2"})
        self.assertEqual(self.builder.components["Point2"]["properties"], {"z": {"type": "integer"}})

    def test_bytes_and_uint_fields(self) -> None:
        """Fields keep their bytes and unsigned marks."""
        self.schema(Blob)
        properties = self.builder.components["Blob"]["properties"]
        self.assertEqual(properties["size"]["x-go-type"], "uint")
        self.assertEqual(properties["data"]["x-rpcd-type"], "bytes")

    def test_typed_dict(self) -> None:
        """A TypedDict is a component; a total one requires its keys, a total=False one none."""
        self.schema(Book)
        self.builder.schema(Movie)
        self.assertEqual(self.builder.components["Book"]["required"], ["title", "pages"])
        self.assertNotIn("required", self.builder.components["Movie"])
        self.assertEqual(self.builder.components["Book"]["description"], "A book.")
        self.assertNotIn("description", self.builder.components["Movie"])
        self.assertEqual(self.builder.components["Movie"]["properties"],
                         {"title": {"type": "string"}, "year": {"type": "integer"}})

    def test_protobuf_message(self) -> None:
        """A protobuf message is a component of its fields by their JSON names."""
        from rpcd.examples.protos import hello_world_pb2 as pb
        self.assertEqual(self.schema(pb.HelloWorldRequest),
                         {"$ref": "#/components/schemas/HelloWorldRequest"})
        component = self.builder.components["HelloWorldRequest"]
        self.assertEqual(component["title"], "helloworld.HelloWorldRequest")
        self.assertEqual(component["properties"]["greeting"], {"type": "string"})
        self.assertEqual(component["properties"]["infos"],
                         {"type": "object", "additionalProperties": {"type": "string"}})

    def test_plain_text(self) -> None:
        """Epytext's inline markup is taken out of docstrings."""
        self.assertEqual(plain_text("Move C{point} by L{rpcd.x} and B{I{this}}."),
                         "Move point by rpcd.x and this.")


class MethodObjectTests(SynchronousTestCase):
    """Each method is an OpenRPC method object with its kind."""

    def setUp(self) -> None:
        document = openrpc_document([describe_service(Shapes)])
        self.document = document
        self.methods = {m["name"]: m for m in document["methods"]}

    def test_unary(self) -> None:
        """A unary method's params are its parameters (with defaults) and its result its return type."""
        move = self.methods["Shapes.Move"]
        self.assertEqual(move["params"], [
            {"name": "point", "schema": {"$ref": "#/components/schemas/Point"}, "required": True},
            {"name": "by", "schema": {"type": "integer", "default": 1}, "required": False},
        ])
        self.assertEqual(move["result"], {"name": "result",
                                          "schema": {"$ref": "#/components/schemas/Point"}})
        self.assertEqual(move["summary"], "Move point by by.")
        self.assertEqual(move["description"], "Move point by by.\n\nBoth coordinates move.")
        self.assertEqual((move["paramStructure"], move["x-rpcd-kind"]), ("either", "unary"))

    def test_no_params_and_none(self) -> None:
        """A method of no parameters returning None has no params and a null result."""
        nothing = self.methods["Shapes.Nothing"]
        self.assertEqual(nothing["params"], [])
        self.assertEqual(nothing["result"]["schema"], {"type": "null"})
        self.assertNotIn("description", nothing)

    def test_untyped(self) -> None:
        """A method without hints takes and returns anything."""
        untyped = self.methods["Shapes.Untyped"]
        self.assertEqual(untyped["params"], [{"name": "value", "schema": {}, "required": True}])
        self.assertEqual(untyped["result"]["schema"], {})

    def test_context_left_out(self) -> None:
        """The CallContext parameter is not a param; a TypedDict result is a component."""
        book = self.methods["Shapes.Book"]
        self.assertEqual([p["name"] for p in book["params"]], ["book"])
        self.assertEqual(book["result"]["schema"], {"$ref": "#/components/schemas/Movie"})

    def test_server_stream(self) -> None:
        """A server stream's result is each message it sends."""
        count = self.methods["Shapes.Count"]
        self.assertEqual(count["x-rpcd-kind"], Kind.SERVER_STREAM.value)
        self.assertEqual(count["result"], {"name": "messages", "schema": {"type": "integer"}})
        self.assertNotIn("x-rpcd-send", count)

    def test_client_stream(self) -> None:
        """A client stream sends the messages of x-rpcd-send and has one result."""
        total = self.methods["Shapes.Sum"]
        self.assertEqual(total["x-rpcd-kind"], "client_stream")
        self.assertEqual(total["params"], [])
        self.assertEqual(total["x-rpcd-send"], {"type": "number"})
        self.assertEqual(total["result"], {"name": "result", "schema": {"type": "number"}})

    def test_bidi_stream(self) -> None:
        """A bidirectional stream has both its message types."""
        echo = self.methods["Shapes.Echo"]
        self.assertEqual(echo["x-rpcd-kind"], "bidi_stream")
        self.assertEqual(echo["x-rpcd-send"], {"type": "string"})
        self.assertEqual(echo["result"]["schema"]["x-rpcd-type"], "bytes")

    def test_valid_document(self) -> None:
        """The document has the structure OpenRPC requires, every schema is a JSON Schema and every $ref resolves."""
        self.assertEqual(self.document["openrpc"], OPENRPC_VERSION)
        self.assertEqual(problems(self.document), [])

    def test_checker_finds_problems(self) -> None:
        """The structure check refuses a method without params and a dangling $ref."""
        broken = dict(self.document, methods=[{"name": "X.Y", "result": {
            "name": "r", "schema": {"$ref": "#/components/schemas/Nope"}}}])
        found = problems(broken)
        self.assertTrue(any("'params' is a required property" in p for p in found), found)
        self.assertIn("$ref '#/components/schemas/Nope' names no component", found)

    def test_values_fit(self) -> None:
        """Wire values of the hinted types validate against the schemas, and wrong ones do not."""
        point = self.document["components"]["schemas"]["Point"]
        check = validator(self.document, point)
        self.assertTrue(check.is_valid({"x": 1, "y": 2, "tags": ["a"]}))
        self.assertFalse(check.is_valid({"x": "one"}))
        self.assertFalse(check.is_valid({"y": 2}))
        move = validator(self.document, self.methods["Shapes.Move"]["params"][0]["schema"])
        self.assertTrue(move.is_valid({"x": 3}))


class RegistryDocumentTests(SynchronousTestCase):
    """The document a daemon answers lists what the caller may call, as rpcd list does."""

    def setUp(self) -> None:
        self.registry = ServiceRegistry()
        self.registry.add(Shapes)
        self.registry.add(Secret, access=_Access())
        self.registry.add(Introspection(self.registry))
        self.registry.add(Discovery(self.registry))

    def names(self, document: dict[str, Any]) -> list[str]:
        return [m["name"] for m in document["methods"]]

    def test_login_gated(self) -> None:
        """A service that requires a login is left out until the session has logged in."""
        anonymous = registry_document(self.registry, _Session(None))
        self.assertNotIn("Secret.Reveal", self.names(anonymous))
        self.assertIn("Shapes.Move", self.names(anonymous))
        logged_in = registry_document(self.registry, _Session("user"))
        self.assertIn("Secret.Reveal", self.names(logged_in))

    def test_same_as_listing(self) -> None:
        """The methods described are the ones the listing shows, less rpc.discover itself."""
        session = _Session(None)
        listed = [info.name for info in self.registry.listing(session)]
        self.assertIn(f"{DISCOVER_SERVICE}.discover", listed)
        self.assertEqual(self.names(registry_document(self.registry, session)),
                         [n for n in listed if not n.startswith(f"{DISCOVER_SERVICE}.")])

    def test_discover_method(self) -> None:
        """rpc.discover is a method of the registry answering the caller's document."""
        bound = self.registry.lookup_shared("rpc.discover")
        assert bound is not None
        context = CallContext(_Session(None), "rpc.discover", None, None, Clock())  # type: ignore[arg-type]
        document = bound.invoke(None, context)
        self.assertEqual(document["openrpc"], OPENRPC_VERSION)
        self.assertNotIn("Secret.Reveal", self.names(document))
        self.assertEqual(problems(document), [])


class TypedDictConvertTests(SynchronousTestCase):
    """TypedDict arguments are converted as the schema describes them."""

    def test_converts(self) -> None:
        """Known keys are converted by their hints, unknown ones dropped, missing required ones zero."""
        convert = argument_converter(Book)
        self.assertEqual(convert({"title": "Dune", "pages": 412.0, "extra": 1}),
                         {"title": "Dune", "pages": 412})
        self.assertEqual(convert({"title": "Dune"}), {"title": "Dune", "pages": 0})
        self.assertEqual(argument_converter(Movie)({"year": 1965}), {"year": 1965})

    def test_mismatch(self) -> None:
        """A key of the wrong type is named in the error."""
        with self.assertRaises(InvalidArgument) as caught:
            convert_argument(argument_converter(Book), {"title": 3}, "book")
        self.assertEqual(caught.exception.message, "book.title: expected str, got int")

    def test_not_a_mapping(self) -> None:
        """A value that is no object is refused, naming the keys."""
        with self.assertRaises(InvalidArgument) as caught:
            convert_argument(argument_converter(Book), [1], "book")
        self.assertIn("expected Book (an object with keys title, pages), got list",
                      caught.exception.message)


class HTTPDocumentTests(SynchronousTestCase):
    """GET /openrpc.json and rpc.discover over POST /rpc, byte by byte without sockets."""

    def setUp(self) -> None:
        self.server, _, _ = make_server()
        self.server.registry.add(Secret, access=_Access())
        self.server.registry.add(Discovery(self.server.registry))
        self.protocol, self.transport = connect_protocol(self.server)

    def exchange(self, request: bytes) -> list[tuple[int, dict[str, str], bytes]]:
        self.protocol.dataReceived(request)
        answers = responses(self.transport.value())
        self.transport.clear()
        return answers

    def test_get(self) -> None:
        """GET answers the document as JSON, not cached, without the login-gated service; the connection stays open."""
        ((status, headers, body),) = self.exchange(get("/openrpc.json"))
        self.assertEqual((status, headers["content-type"], headers["cache-control"]),
                         (200, "application/json", "no-store"))
        document = json.loads(body)
        self.assertEqual(problems(document), [])
        names = [m["name"] for m in document["methods"]]
        self.assertIn("Arith.Multiply", names)
        self.assertNotIn("Secret.Reveal", names)
        self.assertFalse(self.transport.disconnecting)
        ((status, _, head_body),) = self.exchange(get("/openrpc.json", method="HEAD"))
        self.assertEqual((status, head_body), (200, b""))

    def test_other_methods(self) -> None:
        """A POST to /openrpc.json gets 405 naming GET."""
        ((status, headers, body),) = self.exchange(post(b"{}", target="/openrpc.json"))
        self.assertEqual((status, headers["allow"]), (405, "GET, HEAD"))
        self.assertIn(b"use GET", body)

    def test_discover(self) -> None:
        """rpc.discover over POST /rpc answers the same document as GET."""
        ((_, _, served),) = self.exchange(get("/openrpc.json"))
        ((status, _, body),) = self.exchange(post(
            b'{"jsonrpc": "2.0", "id": 7, "method": "rpc.discover"}'))
        answer = json.loads(body)
        self.assertEqual((status, answer["id"]), (200, 7))
        self.assertEqual(answer["result"], json.loads(served))


class BrokenHintTests(SynchronousTestCase):
    """A method whose types the builder cannot describe does not hide the others."""

    def test_described_without_schema(self) -> None:
        """The method is listed with no schema and the reason, the failure logged, the others described."""
        from unittest import mock
        import rpcd.core.schema as schema_module
        real = schema_module.method_object

        def failing(service_spec: Any, method: Any, builder: Any) -> dict[str, Any]:
            if method.name == "Move":
                raise ValueError("odd hint")
            return real(service_spec, method, builder)
        with mock.patch.object(schema_module, "method_object", failing):
            document = openrpc_document([describe_service(Shapes)])
        move = next(m for m in document["methods"] if m["name"] == "Shapes.Move")
        self.assertEqual(move["description"], "(no schema: ValueError: odd hint)")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertIn("Shapes.Count", [m["name"] for m in document["methods"]])
        self.assertEqual(problems(document), [])
