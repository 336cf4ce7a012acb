"""
Loading .proto files and declaring proto services (L{rpcd.protos}), and
message-typed hints over rpcd's own conventions (L{rpcd.convert}).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import AsyncIterator

from twisted.trial.unittest import SynchronousTestCase

from rpcd import protos
from rpcd.convert import argument_converter, result_converter
from rpcd.errors import InvalidArgument
from rpcd.examples.helloworld import HelloWorldService
from rpcd.examples.protos import hello_world_pb2
from rpcd.service import Kind, ServiceRegistry, exposed
from tests.grpcservices import Probe, pb


class LoadTests(SynchronousTestCase):
    """load_proto compiles with grpcio-tools, caches, and names the line of an error."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        cache = self.dir / "cache"
        old = os.environ.get("RPCD_PROTO_CACHE")
        os.environ["RPCD_PROTO_CACHE"] = str(cache)

        def restore() -> None:
            if old is None:
                os.environ.pop("RPCD_PROTO_CACHE", None)
            else:
                os.environ["RPCD_PROTO_CACHE"] = old
        self.addCleanup(restore)

    def test_load(self) -> None:
        """A .proto loads into message classes and a service; the second load comes from the cache."""
        proto = self.dir / "loadtest_ok.proto"
        proto.write_text('syntax = "proto3"; package loadtest;\n'
                         'message Ball { string text = 1; }\n'
                         'service Pinger { rpc Ping(Ball) returns (Ball); }\n')
        module = protos.load_proto(proto)
        self.assertEqual(module.Ball(text="x").text, "x")
        self.assertEqual(protos.find_service(module).full_name, "loadtest.Pinger")
        cached = list((self.dir / "cache").iterdir())
        self.assertEqual(len(cached), 1)
        again = protos.load_proto(proto)
        self.assertIs(again.Ball, module.Ball)
        self.assertEqual(list((self.dir / "cache").iterdir()), cached)

    def test_syntax_error(self) -> None:
        """A .proto that does not compile raises ProtoError naming the file and line."""
        proto = self.dir / "loadtest_bad.proto"
        proto.write_text('syntax = "proto3";\n\nmessage Broken {\n  string a = 1\n}\n')
        with self.assertRaises(protos.ProtoError) as caught:
            protos.load_proto(proto)
        self.assertIn("loadtest_bad.proto:5:", str(caught.exception))

    def test_missing(self) -> None:
        """A missing file is named."""
        with self.assertRaises(protos.ProtoError) as caught:
            protos.load_proto(self.dir / "nope.proto")
        self.assertIn("nope.proto: no such .proto file", str(caught.exception))

    def test_find_service(self) -> None:
        """A service is found by full or short name; an unknown one is refused, listing what there is."""
        self.assertEqual(protos.find_service(hello_world_pb2, "HelloWorldService").full_name,
                         "helloworld.HelloWorldService")
        with self.assertRaises(protos.ProtoError) as caught:
            protos.find_service(hello_world_pb2, "Other")
        self.assertIn("helloworld.HelloWorldService", str(caught.exception))


class DeclareTests(SynchronousTestCase):
    """grpc_service and the routes of a registry."""

    def test_kind_mismatch(self) -> None:
        """A method whose kind differs from the proto's is refused when the class is declared."""
        class Wrong:
            @exposed
            def ListHello(self, request: hello_world_pb2.HelloWorldRequest) -> hello_world_pb2.HelloWorldResponse:
                return hello_world_pb2.HelloWorldResponse()
        with self.assertRaises(TypeError) as caught:
            protos.grpc_service(hello_world_pb2, "helloworld.HelloWorldService")(Wrong)
        self.assertIn("ListHello is unary but helloworld.HelloWorldService.ListHello is server_stream",
                      str(caught.exception))

    def test_routes(self) -> None:
        """Each proto method becomes a path to the rpcd method, with its message classes and kind."""
        registry = ServiceRegistry()
        registry.add(HelloWorldService(delay=0))
        registry.add(Probe, name="Renamed")
        table = protos.routes(registry)
        chat = table["/helloworld.HelloWorldService/SayHelloChat"]
        self.assertEqual((chat.name, chat.kind, chat.input, chat.output),
                         ("HelloWorldService.SayHelloChat", Kind.BIDI_STREAM,
                          hello_world_pb2.HelloWorldRequest, hello_world_pb2.HelloWorldRequest))
        self.assertEqual(table["/rpcdtest.Probe/Echo"].name, "Renamed.Echo")
        self.assertEqual(len(table), 9)

    def test_undeclared_class(self) -> None:
        """A class without grpc_service has no gRPC routes."""
        class Plain:
            @exposed
            async def Numbers(self) -> AsyncIterator[int]:
                yield 1
        registry = ServiceRegistry()
        registry.add(Plain)
        self.assertEqual(protos.routes(registry), {})


class ConvertTests(SynchronousTestCase):
    """Message hints take and give protobuf's JSON mapping on rpcd's other protocols."""

    def test_argument(self) -> None:
        """A message passes; a mapping is parsed (JSON or proto names); bytes are the binary form."""
        convert = argument_converter(pb.Req)
        message = pb.Req(text="a", fail_code=3, blob=b"\0")
        self.assertIs(convert(message), message)
        self.assertEqual(convert({"text": "a", "failCode": 3, "blob": "AA=="}), message)
        self.assertEqual(convert({"fail_code": 3, "text": "a", "blob": "AA=="}), message)
        self.assertEqual(convert(message.SerializeToString()), message)

    def test_bad_argument(self) -> None:
        """Unknown fields, wrong types and non-messages are refused naming the message type."""
        convert = argument_converter(pb.Req)
        for bad in ({"nope": 1}, {"count": "many"}, 7, b"\xff"):
            with self.assertRaises(InvalidArgument) as caught:
                convert(bad)
            self.assertIn("rpcdtest.Req", caught.exception.message)

    def test_result(self) -> None:
        """A message result becomes protobuf's JSON mapping."""
        convert = result_converter(pb.Rep)
        self.assertEqual(convert(pb.Rep(text="t", n=2, blob=b"\1")), {"text": "t", "n": 2, "blob": "AQ=="})
        self.assertEqual(convert(pb.Rep()), {})


class PlainTests(SynchronousTestCase):
    """Messages as plain mappings, for methods that take and return mappings."""

    def test_round_trip(self) -> None:
        """Nested, repeated and bytes fields become dicts, lists and bytes, and back."""
        from rpcd.examples.protos import grpc_testing_pb2 as t
        message = t.StreamingOutputCallRequest(
            response_parameters=[t.ResponseParameters(size=3), t.ResponseParameters(interval_us=9)],
            payload=t.Payload(body=b"\0\1"))
        plain = protos.message_to_plain(message)
        self.assertEqual(plain, {"response_parameters": [{"size": 3}, {"interval_us": 9}],
                                 "payload": {"body": b"\0\1"}})
        self.assertEqual(protos.plain_to_message(plain, t.StreamingOutputCallRequest), message)

    def test_maps_and_json_names(self) -> None:
        """Map fields are dicts; JSON names, base64 text and integer text are accepted too."""
        request = hello_world_pb2.HelloWorldRequest(greeting="g", infos={"a": "b"})
        self.assertEqual(protos.message_to_plain(request), {"greeting": "g", "infos": {"a": "b"}})
        built = protos.plain_to_message({"infos": {"a": "b"}, "greeting": "g"},
                                        hello_world_pb2.HelloWorldRequest)
        self.assertEqual(built, request)
        self.assertEqual(protos.plain_to_message({"failCode": "4", "blob": "AQ=="}, pb.Req),
                         pb.Req(fail_code=4, blob=b"\1"))

    def test_errors_name_the_field(self) -> None:
        """An unknown field or a wrong type is refused with the path to it."""
        from rpcd.examples.protos import grpc_testing_pb2 as t
        with self.assertRaises(ValueError) as caught:
            protos.plain_to_message({"payload": {"bdy": 1}}, t.SimpleResponse)
        self.assertIn("grpc.testing.SimpleResponse.payload: grpc.testing.Payload has no field 'bdy'",
                      str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            protos.plain_to_message({"payload": {"body": 1}}, t.SimpleResponse)
        self.assertIn("grpc.testing.SimpleResponse.payload.body", str(caught.exception))
