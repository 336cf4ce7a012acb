"""
Tests for rpcd's C{json} wire protocol (L{rpcd.wire.jsonserver}), the JSON
client channels (L{rpcd.wire.jsonclient}) and the error mapping
(L{rpcd.wire.jsoncalls}), without sockets.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from rpcd.examples.arith import Cal
from rpcd.errors import (
    Code,
    DeadlineExceeded,
    InvalidArgument,
    ProtocolError,
    RPCError,
    Unauthenticated,
    Unimplemented,
)
from rpcd.server import Limits
from rpcd.testing import MemoryConnection
from rpcd.server.jsoncalls import SERVER_ERROR, error_object, json_data, rpc_error
from rpcd.client.jsonclient import JSONRPC2ClientChannel, JSONRPCClientChannel
from rpcd.wire.jsonrpc import NO_DATA, JSONRPCError
from rpcd.server.jsonserver import JSONServerProtocol
from tests.jsonservices import Math, Odd, connect_protocol, make_server

#: The JSON-RPC 2.0 specification's examples (section 7), method names
#: adapted to Service.Method (see tests.jsonservices): (request, response or
#: None when nothing comes back).  Error objects are compared on code and
#: message; rpcd adds a "data" member.
SPEC_EXAMPLES: list[tuple[bytes, Any]] = [
    (b'{"jsonrpc": "2.0", "method": "Math.subtract", "params": [42, 23], "id": 1}',
     {"jsonrpc": "2.0", "result": 19, "id": 1}),
    (b'{"jsonrpc": "2.0", "method": "Math.subtract", "params": [23, 42], "id": 2}',
     {"jsonrpc": "2.0", "result": -19, "id": 2}),
    (b'{"jsonrpc": "2.0", "method": "Math.subtract", "params": {"subtrahend": 23, '
     b'"minuend": 42}, "id": 3}',
     {"jsonrpc": "2.0", "result": 19, "id": 3}),
    (b'{"jsonrpc": "2.0", "method": "Math.subtract", "params": {"minuend": 42, '
     b'"subtrahend": 23}, "id": 4}',
     {"jsonrpc": "2.0", "result": 19, "id": 4}),
    (b'{"jsonrpc": "2.0", "method": "Math.update", "params": [1,2,3,4,5]}', None),
    (b'{"jsonrpc": "2.0", "method": "foobar"}', None),
    (b'{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
     {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}),
    (b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
     {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    (b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
     {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    (b'[\n  {"jsonrpc": "2.0", "method": "Math.sum", "params": [1,2,4], "id": "1"},\n'
     b'  {"jsonrpc": "2.0", "method"\n]',
     {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    (b'[]',
     {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    (b'[1]',
     [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}]),
    (b'[1,2,3]',
     [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}] * 3),
    (b'[\n'
     b' {"jsonrpc": "2.0", "method": "Math.sum", "params": [1,2,4], "id": "1"},\n'
     b' {"jsonrpc": "2.0", "method": "Math.notify_hello", "params": [7]},\n'
     b' {"jsonrpc": "2.0", "method": "Math.subtract", "params": [42,23], "id": "2"},\n'
     b' {"foo": "boo"},\n'
     b' {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},\n'
     b' {"jsonrpc": "2.0", "method": "Math.get_data", "id": "9"}\n'
     b']',
     [{"jsonrpc": "2.0", "result": 7, "id": "1"},
      {"jsonrpc": "2.0", "result": 19, "id": "2"},
      {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
      {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
      {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}]),
    (b'[\n {"jsonrpc": "2.0", "method": "Math.notify_sum", "params": [1,2,4]},\n'
     b' {"jsonrpc": "2.0", "method": "Math.notify_hello", "params": [7]}\n]', None),
]


def without_data(reply: Any) -> Any:
    """
    A decoded reply with the "data" member of its error objects removed,
    to compare with the specification's examples.
    """
    if isinstance(reply, list):
        return [without_data(item) for item in reply]
    if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
        error = {k: v for k, v in reply["error"].items() if k != "data"}
        return {**reply, "error": error}
    return reply


def lines(data: bytes) -> list[Any]:
    """The newline-separated JSON values a server wrote, decoded."""
    return [json.loads(line) for line in data.split(b"\n") if line]


class SpecExampleTests(SynchronousTestCase):
    """The JSON-RPC 2.0 specification's examples on a raw JSON connection."""

    def test_examples(self) -> None:
        """Each example gets the specification's answer (and notifications run)."""
        for request, expected in SPEC_EXAMPLES:
            server, math, _ = make_server()
            protocol, transport = connect_protocol(server)
            protocol.dataReceived(request)
            replies = lines(transport.value())
            if request.count(b"[") + request.count(b"{") > request.count(b"]") + request.count(b"}"):
                # Unbalanced brackets: on a stream the value is not over yet
                # (over HTTP the body is, and gets the parse error).
                self.assertEqual(replies, [], request)
                self.assertFalse(transport.disconnecting)
            elif expected is None:
                self.assertEqual(replies, [], request)
            else:
                self.assertEqual([without_data(r) for r in replies], [expected], request)
        self.assertEqual(math.notified, [("notify_sum", 7), ("notify_hello", 7)])

    def test_notification_runs(self) -> None:
        """A notification calls its method and answers nothing."""
        server, math, _ = make_server()
        protocol, transport = connect_protocol(server)
        protocol.dataReceived(SPEC_EXAMPLES[4][0])
        self.assertEqual(transport.value(), b"")
        self.assertEqual(math.notified, [("update", [1, 2, 3, 4, 5])])
        self.assertFalse(transport.disconnecting)

    def test_examples_on_one_connection(self) -> None:
        """The valid examples sent back to back on one connection are all answered in order."""
        server, _, _ = make_server()
        protocol, transport = connect_protocol(server)
        valid = [(r, e) for r, e in SPEC_EXAMPLES if b"foobar, " not in r and b'"method"\n]' not in r]
        protocol.dataReceived(b"".join(r for r, _ in valid))
        expected = [e for _, e in valid if e is not None]
        self.assertEqual([without_data(r) for r in lines(transport.value())], expected)
        self.assertEqual(transport.writes, 1)

    def test_error_data(self) -> None:
        """An error object's data carries rpcd's code, its name and message."""
        server, _, _ = make_server()
        protocol, transport = connect_protocol(server)
        protocol.dataReceived(b'{"jsonrpc":"2.0","method":"Math.subtract","params":["a",1],"id":7}'
                              b'{"jsonrpc":"2.0","method":"foobar","id":8}')
        bad, missing = lines(transport.value())
        self.assertEqual(bad["error"]["code"], -32602)
        self.assertEqual(bad["error"]["message"], "Invalid params")
        self.assertEqual(bad["error"]["data"]["code"], Code.INVALID_ARGUMENT)
        self.assertEqual(bad["error"]["data"]["name"], "INVALID_ARGUMENT")
        self.assertIn("minuend", bad["error"]["data"]["message"])
        self.assertEqual(missing["error"]["data"],
                         {"code": 12, "name": "UNIMPLEMENTED",
                          "message": "rpc: service/method request ill-formed: foobar"})

    def test_strict_values_refused(self) -> None:
        """NaN, Infinity and duplicate keys get a parse error saying so, then the connection closes."""
        for text, why in [(b'{"jsonrpc":"2.0","method":"Cal.Square","params":[NaN],"id":1}', "NaN"),
                          (b'{"jsonrpc":"2.0","method":"Cal.Square","params":[-Infinity],"id":1}',
                           "Infinity"),
                          (b'{"jsonrpc":"2.0","method":"Cal.Square","id":1,"id":2}', "duplicate")]:
            server, _, _ = make_server()
            protocol, transport = connect_protocol(server)
            with capturedLogs() as events:
                protocol.dataReceived(text)
            (reply,) = lines(transport.value())
            self.assertEqual(reply["error"]["code"], -32700)
            self.assertEqual(reply["id"], None)
            self.assertIn(why, reply["error"]["data"])
            self.assertTrue(transport.disconnecting)
            self.assertTrue(any("malformed JSON" in e.get("why", "") for e in events))


class GoJSONRPCTests(SynchronousTestCase):
    """Go's net/rpc/jsonrpc requests on the C{json} protocol."""

    def setUp(self) -> None:
        self.server, self.math, self.odd = make_server()
        self.protocol, self.transport = connect_protocol(self.server)

    def test_seed_002_client_bytes(self) -> None:
        """Seed 002's Python client's request gets exactly Go's reply."""
        request = {"id": 0, "params": [{"x": 10, "y": 50}], "method": "ServiceA.Add"}
        self.protocol.dataReceived(json.dumps(request).encode())
        self.assertEqual(self.transport.value(), b'{"id":0,"result":60,"error":null}\n')

    def test_id_echo(self) -> None:
        """The id comes back byte for byte, whatever JSON it is."""
        for raw_id in [b'"abc"', b"1.0", b"12345678901234567890", b'"\\u0041"', b"-0", b"null",
                       b'{"a": [1, 2]}']:
            self.transport.clear()
            self.protocol.dataReceived(b'{"method":"Cal.Square","params":[3],"id":' + raw_id + b"}")
            expected_id = raw_id.replace(b" ", b"")
            self.assertEqual(self.transport.value(),
                             b'{"id":' + expected_id + b',"result":{"Num":3,"Ans":9},"error":null}\n')

    def test_errors_in_go_words(self) -> None:
        """Unknown names and bad params get Go's texts; the connection keeps working."""
        self.protocol.dataReceived(
            b'{"method":"Nope.Add","params":[1],"id":1}'
            b'{"method":"ServiceA.Nope","params":[1],"id":2}'
            b'{"method":"NoDot","params":[1],"id":3}'
            b'{"method":"Cal.Square","id":4}'
            b'{"method":"Cal.Square","params":{"a":1},"id":5}'
            b'{"method":"Nope.Nope","id":6}'
            b'{"method":"Cal.Square","params":[4],"id":7}')
        self.assertEqual(lines(self.transport.value()), [
            {"id": 1, "result": None, "error": "rpc: can't find service Nope.Add"},
            {"id": 2, "result": None, "error": "rpc: can't find method ServiceA.Nope"},
            {"id": 3, "result": None, "error": "rpc: service/method request ill-formed: NoDot"},
            {"id": 4, "result": None, "error": "jsonrpc: request body missing params"},
            {"id": 5, "result": None,
             "error": "json: cannot unmarshal object into Go value of type [1]interface {}"},
            {"id": 6, "result": None, "error": "rpc: can't find service Nope.Nope"},
            {"id": 7, "result": {"Num": 4, "Ans": 16}, "error": None},
        ])
        self.assertFalse(self.transport.disconnecting)

    def test_nil_result_is_empty_struct(self) -> None:
        """A method returning None answers {} (Go's empty struct), never result null."""
        self.protocol.dataReceived(b'{"method":"Odd.Nothing","params":[null],"id":1}')
        self.assertEqual(self.transport.value(), b'{"id":1,"result":{},"error":null}\n')

    def test_bytes_and_unencodable(self) -> None:
        """Bytes become base64 as in Go; a NaN result fails the call with an INTERNAL text."""
        with capturedLogs() as events:
            self.protocol.dataReceived(b'{"method":"Odd.Bytes","params":[null],"id":1}\n'
                                       b'{"method":"Odd.NaN","params":[null],"id":2}\n'
                                       b'{"jsonrpc":"2.0","method":"Odd.NaN","id":3}\n'
                                       b'{"jsonrpc":"2.0","method":"Odd.Bytes","id":4}\n')
        one, two, three, four = lines(self.transport.value())
        self.assertEqual(one, {"id": 1, "result": "AP9oaQ==", "error": None})
        self.assertEqual(two["result"], None)
        self.assertIn("Odd.NaN: the result cannot be encoded as JSON", two["error"])
        self.assertEqual(three["error"]["code"], -32603)
        self.assertEqual(three["error"]["data"]["name"], "INTERNAL")
        self.assertEqual(four["result"], "AP9oaQ==")
        self.assertEqual(len([e for e in events if "cannot encode" in e.get("log_format", "")]), 2)

    def test_replies_in_finishing_order(self) -> None:
        """Replies come as calls finish; one read's ready replies are one write."""
        self.protocol.dataReceived(b'{"method":"Odd.Later","params":["a"],"id":1}'
                                   b'{"method":"Odd.Later","params":["b"],"id":2}'
                                   b'{"jsonrpc":"2.0","method":"Odd.Later","params":["c"],"id":3}'
                                   b'{"method":"Cal.Square","params":[2],"id":4}'
                                   b'{"method":"Cal.Square","params":[3],"id":5}')
        self.assertEqual(self.transport.writes, 1)
        self.assertEqual([r["id"] for r in lines(self.transport.value())], [4, 5])
        self.transport.clear()
        self.odd.waiting["b"].callback("B")
        self.odd.waiting["c"].callback(["C"])
        self.odd.waiting["a"].errback(Unauthenticated("please login"))
        self.assertEqual(lines(self.transport.value()), [
            {"id": 2, "result": "B", "error": None},
            {"jsonrpc": "2.0", "result": ["C"], "id": 3},
            {"id": 1, "result": None, "error": "please login"},
        ])

    def test_woken_call_joins_the_write(self) -> None:
        """A call that a call in the same read finishes is answered in that read's one write."""
        from rpcd.examples.kvstore import KVStoreService
        self.server.registry.add(KVStoreService)
        self.protocol.dataReceived(b'{"method":"KVStoreService.Watch","params":[30],"id":1}')
        self.assertEqual(self.transport.value(), b"")
        self.protocol.dataReceived(b'{"method":"KVStoreService.Set","params":[["k","v"]],"id":2}')
        self.assertEqual(self.transport.writes, 1)
        self.assertEqual(lines(self.transport.value()), [
            {"id": 1, "result": "k", "error": None}, {"id": 2, "result": {}, "error": None}])

    def test_batch_waits_for_all(self) -> None:
        """A JSON-RPC 2.0 batch is answered with one array once every call has ended."""
        self.protocol.dataReceived(b'[{"jsonrpc":"2.0","method":"Odd.Later","params":["x"],"id":1},'
                                   b'{"jsonrpc":"2.0","method":"Cal.Square","params":[5],"id":2},'
                                   b'{"jsonrpc":"2.0","method":"Odd.Later","params":["y"]}]')
        self.assertEqual(self.transport.value(), b"")
        self.odd.waiting["x"].callback(1)
        self.assertEqual(self.transport.value(), b"")
        self.odd.waiting["y"].callback(2)
        self.assertEqual(lines(self.transport.value()), [[
            {"jsonrpc": "2.0", "result": 1, "id": 1},
            {"jsonrpc": "2.0", "result": {"Num": 5, "Ans": 25}, "id": 2}]])

    def test_malformed_after_go_closes_without_answer(self) -> None:
        """After Go-style requests, a broken stream is closed without a JSON-RPC 2.0 answer."""
        with capturedLogs() as events:
            self.protocol.dataReceived(b'{"method":"Cal.Square","params":[2],"id":1}{"a":nope}')
        self.assertEqual(lines(self.transport.value()),
                         [{"id": 1, "result": {"Num": 2, "Ans": 4}, "error": None}])
        self.assertTrue(self.transport.disconnecting)
        (event,) = [e for e in events if "why" in e]
        self.assertIn("malformed JSON", event["why"])

    def test_go_protocol_error_closes(self) -> None:
        """A value Go's server cannot read (a string, a numeric method) closes the connection."""
        for value in [b'"hello"', b'{"method":5,"params":[1],"id":1}', b"17 "]:
            server, _, _ = make_server()
            protocol, transport = connect_protocol(server)
            protocol.dataReceived(b'{"method":"Cal.Square","params":[1],"id":0}' + value)
            self.assertEqual(len(lines(transport.value())), 1)
            self.assertTrue(transport.disconnecting, value)

    def test_close_waits_for_running_calls(self) -> None:
        """A broken stream closes only once the calls already running have answered."""
        self.protocol.dataReceived(b'{"method":"Odd.Later","params":["a"],"id":1}[}')
        self.assertFalse(self.transport.disconnecting)
        self.protocol.dataReceived(b'{"method":"Cal.Square","params":[1],"id":2}')
        self.odd.waiting["a"].callback(5)
        self.assertEqual(lines(self.transport.value()), [{"id": 1, "result": 5, "error": None}])
        self.assertTrue(self.transport.disconnecting)

    def test_size_limit(self) -> None:
        """A value over limits.max_frame_bytes is refused before it is all buffered."""
        server, _, _ = make_server(limits=Limits(max_frame_bytes=1000))
        protocol, transport = connect_protocol(server)
        protocol.dataReceived(b'{"jsonrpc":"2.0","method":"Cal.Square","params":["' + b"x" * 2000)
        (reply,) = lines(transport.value())
        self.assertEqual(reply["error"]["code"], -32700)
        self.assertIn("exceeds the limit of 1000 bytes", reply["error"]["data"])
        self.assertTrue(transport.disconnecting)

    def test_split_anywhere(self) -> None:
        """Requests split into single bytes are answered the same."""
        data = b' \n{"method":"Cal.Square","params":[7],"id":"\xc3\xa9"}\n[{"jsonrpc":"2.0","method":"Cal.Square","params":[2],"id":1}]'
        for byte in data:
            self.protocol.dataReceived(bytes([byte]))
        self.assertEqual(lines(self.transport.value()), [
            {"id": "\u00e9", "result": {"Num": 7, "Ans": 49}, "error": None},
            [{"jsonrpc": "2.0", "result": {"Num": 2, "Ans": 4}, "id": 1}]])

    def test_lost_connection_cancels(self) -> None:
        """Calls running when the connection goes are cancelled and answer nothing."""
        self.protocol.dataReceived(b'{"method":"Odd.Later","params":["a"],"id":1}')
        self.protocol.connectionLost(Exception("gone"))  # type: ignore[arg-type]
        self.assertEqual(self.odd.cancelled, ["a"])
        self.assertEqual(self.transport.value(), b"")

    def test_pinned_endpoint(self) -> None:
        """An endpoint pinned to json hands over at once; the protocol is the json one."""
        server, _, _ = make_server()
        protocol, transport = connect_protocol(server, {"json"})
        self.assertIsInstance(protocol.inner, JSONServerProtocol)
        protocol.dataReceived(b'{"method":"Cal.Square","params":[3],"id":1}')
        self.assertEqual(lines(transport.value())[0]["result"], {"Num": 3, "Ans": 9})

    def test_idle_check_sees_running_calls(self) -> None:
        """A connection with a call running is busy (not idle)."""
        self.protocol.dataReceived(b'{"method":"Odd.Later","params":["a"],"id":1}')
        self.assertTrue(self.protocol.inner.busy())
        self.odd.waiting["a"].callback(None)
        self.assertFalse(self.protocol.inner.busy())


class ErrorMappingTests(SynchronousTestCase):
    """rpcd errors to JSON-RPC 2.0 error objects and back."""

    def test_standard_codes(self) -> None:
        """UNIMPLEMENTED, INVALID_ARGUMENT and INTERNAL map to the standard codes."""
        for error, code, message in [(Unimplemented("x"), -32601, "Method not found"),
                                     (InvalidArgument("x"), -32602, "Invalid params"),
                                     (RPCError("x", code=Code.INTERNAL), -32603, "Internal error")]:
            obj = error_object(error)
            self.assertEqual((obj.code, obj.message), (code, message))
            self.assertEqual(obj.data["message"], "x")

    def test_server_errors(self) -> None:
        """Other codes are server errors -32000 - code with rpcd's message and details."""
        obj = error_object(Unauthenticated("please login", details={"b": b"\x01"}))
        self.assertEqual(obj.code, SERVER_ERROR - 16)
        self.assertEqual(obj.message, "please login")
        self.assertEqual(obj.data, {"code": 16, "name": "UNAUTHENTICATED",
                                    "message": "please login", "details": {"b": "AQ=="}})

    def test_round_trip(self) -> None:
        """Every rpcd code survives the trip through an error object."""
        for code in Code:
            if code is Code.OK:
                continue
            back = rpc_error(error_object(RPCError("m", code=code, details=[1])))
            self.assertEqual((back.code, back.message, back.details), (code, "m", [1]))

    def test_foreign_errors(self) -> None:
        """Error objects from other servers map back by code, string data appended."""
        cases = [(JSONRPCError(-32601), Unimplemented, "Method not found"),
                 (JSONRPCError(-32602, data="bad x"), InvalidArgument, "Invalid params: bad x"),
                 (JSONRPCError(-32700), InvalidArgument, "Parse error"),
                 (JSONRPCError(-32016, "who are you"), Unauthenticated, "who are you"),
                 (JSONRPCError(-32099, "odd"), RPCError, "odd"),
                 (JSONRPCError(42, "app", {"x": 1}), RPCError, "app")]
        for error, cls, message in cases:
            back = rpc_error(error)
            self.assertIs(type(back), cls)
            self.assertEqual(back.message, message)
        self.assertEqual(rpc_error(JSONRPCError(42, "app", {"x": 1})).details, {"x": 1})
        self.assertEqual(rpc_error(JSONRPCError(-32099, "odd")).code, Code.UNKNOWN)
        self.assertIs(JSONRPCError(1).data, NO_DATA)

    def test_json_data(self) -> None:
        """Bytes anywhere in a result become base64 text."""
        self.assertEqual(json_data({"a": [b"\x00", (b"\x01",)], "b": 1}),
                         {"a": ["AA==", ["AQ=="]], "b": 1})


class ClientChannelTests(SynchronousTestCase):
    """The jsonrpc and jsonrpc2 client codecs against rpcd's server, in memory."""

    def connection(self, codec: str) -> MemoryConnection:
        conn = MemoryConnection([Math(), Odd(), Cal], codec=codec)
        conn.flush()
        return conn

    def test_calls(self) -> None:
        """Both codecs call methods, many at once, and get results."""
        for codec in ("jsonrpc", "jsonrpc2"):
            conn = self.connection(codec)
            ds = [conn.client.call("Cal.Square", i) for i in range(50)]
            named = conn.client.call("Math.subtract", {"minuend": 5, "subtrahend": 3})
            nothing = conn.client.call("Math.get_data")
            conn.flush()
            self.assertEqual([self.successResultOf(d)["Ans"] for d in ds], [i * i for i in range(50)])
            self.assertEqual(self.successResultOf(named), 2)
            self.assertEqual(self.successResultOf(nothing), ["hello", 5])

    def test_channel_classes(self) -> None:
        """The codec names build the JSON channels."""
        self.assertIsInstance(self.connection("jsonrpc").channel, JSONRPCClientChannel)
        self.assertIsInstance(self.connection("jsonrpc2").channel, JSONRPC2ClientChannel)

    def test_remote_errors(self) -> None:
        """Go's unknown-service error is UNIMPLEMENTED with Go's text, as over gob; JSON-RPC 2.0 errors keep their rpcd code."""
        conn = self.connection("jsonrpc")
        d = conn.client.call("Nope.M", 1)
        conn.flush()
        error = self.failureResultOf(d, RPCError).value
        self.assertEqual((error.code, error.message), (Code.UNIMPLEMENTED, "rpc: can't find service Nope.M"))
        conn = self.connection("jsonrpc2")
        d = conn.client.call("Nope.M", 1)
        bad = conn.client.call("Math.subtract", {"minuend": "x", "subtrahend": 1})
        conn.flush()
        error = self.failureResultOf(d, Unimplemented).value
        self.assertEqual(error.message, "rpc: can't find service Nope.M")
        self.failureResultOf(bad, InvalidArgument)

    def test_timeout_stops_waiting(self) -> None:
        """A timeout fails the call; the late answer is dropped and the connection still works."""
        for codec in ("jsonrpc", "jsonrpc2"):
            conn = self.connection(codec)
            odd = conn.server.registry.lookup_shared("Odd.Later").function.__self__
            d = conn.client.call("Odd.Later", "a", timeout=2)
            conn.flush()
            conn.clock.advance(2)
            self.failureResultOf(d, DeadlineExceeded)
            odd.waiting["a"].callback("late")
            again = conn.client.call("Cal.Square", 3)
            conn.flush()
            self.assertEqual(self.successResultOf(again)["Ans"], 9)

    def test_bytes_argument(self) -> None:
        """A bytes argument is sent as base64, as Go encodes []byte."""
        conn = self.connection("jsonrpc")
        channel = conn.channel
        sent: list[bytes] = []
        write = channel.transport.write
        channel.transport.write = lambda data: (sent.append(data), write(data))[1]
        conn.client.call("Odd.Doc", b"\x00\x01")
        self.assertIn(b'"params":["AAE="]', sent[0])

    def test_unreadable_reply_fails_everything(self) -> None:
        """A reply the client cannot read fails every pending call and closes."""
        for codec, garbage in (("jsonrpc", b'{"id":1,"result":null,"error":null}'),
                               ("jsonrpc2", b'{"jsonrpc":"1.0","id":1}'),
                               ("jsonrpc", b"]")):
            conn = self.connection(codec)
            d1 = conn.client.call("Odd.Later", "a")
            d2 = conn.client.call("Odd.Later", "b")
            conn.flush()
            with capturedLogs():
                conn.channel.dataReceived(garbage)
            self.failureResultOf(d1, ProtocolError)
            self.failureResultOf(d2, ProtocolError)
            self.assertTrue(conn.channel.transport.disconnecting)

    def test_parse_error_reply_fails_pending(self) -> None:
        """A JSON-RPC 2.0 error with id null fails every pending call with it."""
        conn = self.connection("jsonrpc2")
        d = conn.client.call("Odd.Later", "a")
        conn.flush()
        conn.channel.dataReceived(
            b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}\n')
        error = self.failureResultOf(d, InvalidArgument).value
        self.assertEqual(error.message, "Parse error")

    def test_params_shapes(self) -> None:
        """jsonrpc2 sends a dict as named params, None as none, anything else as [value]."""
        conn = self.connection("jsonrpc2")
        sent: list[bytes] = []
        channel = conn.channel
        write = channel.transport.write
        channel.transport.write = lambda data: (sent.append(data), write(data))[1]
        conn.client.call("A.b", {"x": 1})
        conn.client.call("A.b")
        conn.client.call("A.b", [1, 2])
        self.assertEqual([json.loads(s).get("params", "absent") for s in sent],
                         [{"x": 1}, "absent", [[1, 2]]])
        self.assertTrue(all(s.endswith(b"\n") for s in sent))


class GoErrorCodeTests(SynchronousTestCase):
    """One code per meaning across Go's codecs."""

    def test_same_code_over_gob_and_jsonrpc(self) -> None:
        """Go's texts map to the same code whichever codec carried them."""
        from rpcd.errors import go_error
        from rpcd.wire import gobclient
        self.assertIs(gobclient.go_error, go_error)
        self.assertEqual([go_error(t).code for t in ("rpc: can't find service Nope.M",
                                                     "rpc: can't find method Arith.Nope",
                                                     "rpc: service/method request ill-formed: x",
                                                     "boom")],
                         [Code.UNIMPLEMENTED] * 3 + [Code.UNKNOWN])
