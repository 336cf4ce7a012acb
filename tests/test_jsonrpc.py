"""
Tests for L{rpcd.wire.jsonrpc}: Go's net/rpc/jsonrpc and JSON-RPC 2.0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from rpcd.wire.jsonrpc import (
    GO_MISSING_PARAMS,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NO_DATA,
    PARSE_ERROR,
    Call,
    GoProtocolError,
    GoRequest,
    JSONRPCError,
    JSONRPCProtocolError,
    Rejected,
    Response,
    assemble_reply,
    decode_go_request,
    decode_go_response,
    encode_batch,
    encode_call,
    encode_error,
    encode_go_request,
    encode_go_response,
    encode_notification,
    encode_result,
    go_method_error,
    parse_request,
    parse_request_value,
    parse_response_value,
    parse_responses,
)
from rpcd.wire.jsonstream import JSONStream
from tests.cache import cached_build_sync, tool_stamp
from tests.tools import require_tool

PEER_SOURCE = os.path.join(os.path.dirname(__file__), "go", "jsonrpcpeer")


def go_request(data: bytes) -> GoRequest:
    """
    Decode one Go jsonrpc request from its bytes, as a server would.
    """
    stream = JSONStream()
    stream.feed(data)
    stream.close()
    [(value, raw)] = list(stream.values_and_bytes())
    return decode_go_request(value, raw)


class GoServerTests(SynchronousTestCase):
    """
    The server side of Go's net/rpc/jsonrpc, checked against Go 1.19's own answers.
    """

    def test_seed_002(self) -> None:
        """
        Seed 002's raw client request reads as ServiceA.Add and its answer is Go's exact bytes.
        """
        request = go_request(b'{"id": 0, "params": [{"x":10, "y":50}], "method": "ServiceA.Add"}')
        self.assertEqual(request, GoRequest("ServiceA.Add", b"0", {"x": 10, "y": 50}))
        self.assertEqual(
            encode_go_response(request.id, 60), b'{"id":0,"result":60,"error":null}\n'
        )

    def test_id_echo(self) -> None:
        """
        Odd ids are echoed as Go echoes them: raw, compacted, not re-encoded.
        """
        for sent, echoed in [
            (b'"abc"', b'"abc"'),
            (b"1.0", b"1.0"),
            (b"12345678901234567890", b"12345678901234567890"),
            (b"null", b"null"),
            (b'"\\u0041"', b'"\\u0041"'),
            (b"-0", b"-0"),
            (b"1e3", b"1e3"),
            (b"true", b"true"),
            (b'"\xc3\xa9"', b'"\xc3\xa9"'),
            (b'[1, {"a" : "x y"}]', b'[1,{"a":"x y"}]'),
        ]:
            data = b'{"method":"S.M","params":[1],"id": ' + sent + b' }'
            self.assertEqual(go_request(data).id, echoed, sent)
            self.assertEqual(
                encode_go_response(go_request(data).id, 1),
                b'{"id":' + echoed + b',"result":1,"error":null}\n',
            )

    def test_id_with_escapes_elsewhere(self) -> None:
        """
        The id is found among members whose strings hold escapes and brackets.
        """
        data = rb'{"params":["\"id\": 7, }]"],"method":"S.M","ID":"x\"y"}'
        self.assertEqual(go_request(data).id, rb'"x\"y"')

    def test_missing_id(self) -> None:
        """
        A request without an id is answered with id null.
        """
        self.assertEqual(go_request(b'{"method":"S.M","params":[1]}').id, b"null")

    def test_params_errors(self) -> None:
        """
        Bad params carry Go's exact error texts.
        """
        for params, error in [
            (b"", GO_MISSING_PARAMS),
            (b',"params":null', "jsonrpc: request body missing params"),
            (b',"params":{"X":1}', "json: cannot unmarshal object into Go value of type [1]interface {}"),
            (b',"params":"x"', "json: cannot unmarshal string into Go value of type [1]interface {}"),
            (b',"params":3', "json: cannot unmarshal number into Go value of type [1]interface {}"),
            (b',"params":true', "json: cannot unmarshal bool into Go value of type [1]interface {}"),
        ]:
            request = go_request(b'{"method":"S.M","id":5' + params + b"}")
            self.assertEqual(request.error, error, params)
            self.assertEqual(
                encode_go_response(request.id, error=request.error),
                b'{"id":5,"result":null,"error":' + json.dumps(error).encode() + b"}\n",
            )

    def test_params_lengths(self) -> None:
        """
        As in Go, [] gives the zero value and elements after the first are ignored.
        """
        self.assertEqual(go_request(b'{"method":"S.M","params":[],"id":1}').arg, None)
        self.assertEqual(go_request(b'{"method":"S.M","params":[],"id":1}').error, None)
        self.assertEqual(go_request(b'{"method":"S.M","params":[{"X":1},7],"id":1}').arg, {"X": 1})

    def test_case_insensitive_members(self) -> None:
        """
        Members match case-insensitively and unknown ones are ignored, as Go's encoding/json does.
        """
        request = go_request(b'{"ID":5,"PARAMS":[2],"Method":"S.M","jsonrpc":"2.0"}')
        self.assertEqual(request, GoRequest("S.M", b"5", 2))

    def test_null_method(self) -> None:
        """
        A null or absent method reads as the empty name, which Go calls ill-formed.
        """
        request = go_request(b'{"method":null,"params":[1],"id":5}')
        self.assertEqual(request.method, "")
        self.assertEqual(
            go_method_error(request.method, {"S"}, {"M"}),
            "rpc: service/method request ill-formed: ",
        )
        self.assertEqual(go_request(b"null"), GoRequest("", b"null", None, GO_MISSING_PARAMS))

    def test_fatal_requests(self) -> None:
        """
        A non-object, or a method that is not a string, is a GoProtocolError with Go's text.
        """
        for data, text in [
            (b"[1]", "cannot unmarshal array into Go value of type jsonrpc.serverRequest"),
            (b'"x"', "cannot unmarshal string into Go value of type jsonrpc.serverRequest"),
            (
                b'{"method":3,"params":[1],"id":5}',
                "cannot unmarshal number into Go struct field serverRequest.method of type string",
            ),
        ]:
            error = self.assertRaises(GoProtocolError, go_request, data)
            self.assertEqual(str(error), "rpc: server cannot decode request: json: " + text)

    def test_method_errors(self) -> None:
        """
        Unresolvable names get Go's texts; a resolvable one gets None.
        """
        services = {"ServiceA"}
        self.assertEqual(
            go_method_error("NoDot", services, None),
            "rpc: service/method request ill-formed: NoDot",
        )
        self.assertEqual(
            go_method_error("Nope.Add", services, None), "rpc: can't find service Nope.Add"
        )
        self.assertEqual(
            go_method_error("ServiceA.Nope", services, {"Add"}),
            "rpc: can't find method ServiceA.Nope",
        )
        self.assertIsNone(go_method_error("ServiceA.Add", services, {"Add"}))
        self.assertIsNone(go_method_error("a.b.Add", {"a.b"}, {"Add"}))

    def test_none_result_is_not_null(self) -> None:
        """
        A None result is sent as {}, never as "result":null.
        """
        self.assertEqual(encode_go_response(b"1"), b'{"id":1,"result":{},"error":null}\n')
        self.assertEqual(encode_go_response(b"1", []), b'{"id":1,"result":[],"error":null}\n')

    def test_unencodable_result(self) -> None:
        """
        A result that JSON cannot carry raises, so the caller can answer an error instead.
        """
        self.assertRaises(TypeError, encode_go_response, b"1", object())
        self.assertRaises(ValueError, encode_go_response, b"1", float("nan"))

    def test_go_key_order(self) -> None:
        """
        Responses keep Go's member order id, result, error with compact separators.
        """
        self.assertEqual(
            encode_go_response(b'"a"', {"k": [1, "\u00e9"]}),
            b'{"id":"a","result":{"k":[1,"\\u00e9"]},"error":null}\n',
        )


class GoClientTests(SynchronousTestCase):
    """
    The client side of Go's net/rpc/jsonrpc.
    """

    def test_encode_request(self) -> None:
        """
        Requests are encoded in Go's client member order.
        """
        self.assertEqual(
            encode_go_request(7, "Arith.Multiply", {"A": 7, "B": 8}),
            b'{"method":"Arith.Multiply","params":[{"A":7,"B":8}],"id":7}\n',
        )
        self.assertRaises(ValueError, encode_go_request, -1, "A.B", 1)
        self.assertRaises(ValueError, encode_go_request, 1 << 64, "A.B", 1)

    def test_round_trip(self) -> None:
        """
        A request encoded by the client reads back on the server side.
        """
        request = go_request(encode_go_request(3, "A.B", [1, 2]))
        self.assertEqual(request, GoRequest("A.B", b"3", [1, 2]))

    def test_decode_response(self) -> None:
        """
        Responses decode to (seq, result, error) as Go's client reads them.
        """
        self.assertEqual(decode_go_response({"id": 1, "result": 60, "error": None}), (1, 60, None))
        self.assertEqual(
            decode_go_response({"id": 2, "result": None, "error": "boom"}), (2, None, "boom")
        )
        self.assertEqual(
            decode_go_response({"id": 2, "result": None, "error": ""}),
            (2, None, "unspecified error"),
        )
        self.assertEqual(decode_go_response({"Id": 4, "Result": {}}), (4, {}, None))

    def test_decode_bad_response(self) -> None:
        """
        Responses Go's client would drop the connection for raise GoProtocolError.
        """
        error = self.assertRaises(
            GoProtocolError, decode_go_response, {"id": 1, "result": None, "error": None}
        )
        self.assertEqual(str(error), "invalid error <nil>")
        error = self.assertRaises(
            GoProtocolError, decode_go_response, {"id": 1, "error": {"code": 1}}
        )
        self.assertEqual(str(error), 'invalid error {"code": 1}')
        self.assertRaises(GoProtocolError, decode_go_response, {"id": -1, "result": 1})
        self.assertRaises(GoProtocolError, decode_go_response, {"id": "1", "result": 1})
        self.assertRaises(GoProtocolError, decode_go_response, [1])


class GoPeerTests(SynchronousTestCase):
    """
    Go's own jsonrpc client codec reads the bytes this module writes.
    """

    _peer: str | None = None

    def build_peer(self) -> str:
        """
        Build the Go peer once for all runs (L{tests.cache}), with Go's usual
        build cache.
        """
        go = require_tool("go", "to check responses against Go's jsonrpc client codec")
        if GoPeerTests._peer is not None:
            return GoPeerTests._peer
        workdir = os.path.abspath(self.mktemp())
        env = dict(os.environ, GOPROXY="off", GOFLAGS="-mod=mod", CGO_ENABLED="0")
        home = os.environ.get("HOME", "")
        if "GOCACHE" not in env and not (home and os.access(home, os.W_OK)):
            env["GOCACHE"] = workdir + "-gocache"

        def build(peer: str) -> None:
            shutil.copytree(PEER_SOURCE, workdir)
            subprocess.run(
                [go, "build", "-o", peer, "."],
                cwd=workdir, env=env, check=True, capture_output=True, timeout=300,
            )

        GoPeerTests._peer = cached_build_sync(
            "jsonrpcpeer", [Path(PEER_SOURCE), tool_stamp(go), env["GOFLAGS"], env["CGO_ENABLED"]], build)
        return GoPeerTests._peer

    def converse(self, calls: list[str], answer: Any) -> list[dict[str, Any]]:
        """
        Run the Go peer for C{calls}; answer each request it writes with C{answer(request)}.

        @return: the peer's report, one dict per call.
        """
        peer = subprocess.Popen(
            [self.build_peer(), *calls],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.addCleanup(peer.kill)
        assert peer.stdin is not None and peer.stdout is not None
        stream = JSONStream()
        for _ in calls:
            line = peer.stdout.readline()
            if not line:
                break
            stream.feed(line)
            for value, raw in stream.values_and_bytes():
                peer.stdin.write(answer(decode_go_request(value, raw)))
                peer.stdin.flush()
        _, err = peer.communicate(timeout=60)
        self.assertEqual(peer.returncode, 0, err)
        return [json.loads(line) for line in err.splitlines()]

    def test_go_accepts_result(self) -> None:
        """
        Go's client reads our success and error responses, and the connection stays usable.
        """
        answers = iter([60, "denied", None, "hi"])

        def answer(request: GoRequest) -> bytes:
            value = next(answers)
            if value == "denied":
                return encode_go_response(request.id, error="rpc: access denied")
            return encode_go_response(request.id, value)

        self.assertEqual(
            self.converse(["add", "add", "empty", "any"], answer),
            [
                {"reply": 60, "error": ""},
                {"reply": 0, "error": "rpc: access denied"},
                {"reply": {}, "error": ""},
                {"reply": "hi", "error": ""},
            ],
        )

    def test_go_rejects_null_result(self) -> None:
        """
        Go's client drops the connection on "result":null without an error, as the docs claim.
        """
        report = self.converse(
            ["empty", "add"], lambda r: b'{"id":' + r.id + b',"result":null,"error":null}\n'
        )
        self.assertEqual(report[0]["error"], "invalid error <nil>")
        self.assertEqual(report[1]["error"], "connection is shut down")


# --------------------------------------------------------------------------
# JSON-RPC 2.0

def _dispatch(call: Call) -> bytes | None:
    """
    A dispatcher for the specification's examples, built on this module's API.
    """
    methods = {
        "subtract": lambda a, b: a - b,
        "sum": lambda *a: sum(a),
        "update": lambda *a: None,
        "notify_hello": lambda *a: None,
        "notify_sum": lambda *a: None,
        "get_data": lambda: ["hello", 5],
    }
    if call.method not in methods:
        reply = encode_error(call.id, JSONRPCError(METHOD_NOT_FOUND))
    elif isinstance(call.params, dict):
        p = call.params
        reply = encode_result(call.id, methods[call.method](p["minuend"], p["subtrahend"]))
    else:
        reply = encode_result(call.id, methods[call.method](*(call.params or [])))
    return None if call.is_notification else reply


def _serve(body: bytes) -> bytes | None:
    payload = parse_request(body)
    replies = [
        encode_error(item.id, item.error) if isinstance(item, Rejected) else _dispatch(item)
        for item in payload.items
    ]
    return assemble_reply(replies, payload.is_batch)


def _without_data(value: Any) -> Any:
    if isinstance(value, list):
        return [_without_data(v) for v in value]
    if isinstance(value, dict) and "error" in value:
        value = dict(value, error={k: v for k, v in value["error"].items() if k != "data"})
    return value


class SpecificationExampleTests(SynchronousTestCase):
    """
    Every example of the JSON-RPC 2.0 specification's examples section.
    """

    def assertExchange(self, request: str, expected: str | None) -> None:
        reply = _serve(request.encode())
        if expected is None:
            self.assertIsNone(reply)
        else:
            assert reply is not None
            self.assertEqual(_without_data(json.loads(reply)), json.loads(expected))

    def test_positional(self) -> None:
        """
        rpc call with positional parameters.
        """
        self.assertExchange(
            '{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
            '{"jsonrpc": "2.0", "result": 19, "id": 1}',
        )
        self.assertExchange(
            '{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
            '{"jsonrpc": "2.0", "result": -19, "id": 2}',
        )

    def test_named(self) -> None:
        """
        rpc call with named parameters.
        """
        self.assertExchange(
            '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
            '{"jsonrpc": "2.0", "result": 19, "id": 3}',
        )
        self.assertExchange(
            '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
            '{"jsonrpc": "2.0", "result": 19, "id": 4}',
        )

    def test_notification(self) -> None:
        """
        a Notification gets no reply, even for an unknown method.
        """
        self.assertExchange('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', None)
        self.assertExchange('{"jsonrpc": "2.0", "method": "foobar"}', None)

    def test_non_existent_method(self) -> None:
        """
        rpc call of non-existent method.
        """
        self.assertExchange(
            '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
            '{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}',
        )

    def test_invalid_json(self) -> None:
        """
        rpc call with invalid JSON.
        """
        self.assertExchange(
            '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
            '{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}',
        )

    def test_invalid_request_object(self) -> None:
        """
        rpc call with invalid Request object.
        """
        self.assertExchange(
            '{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
            '{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}',
        )

    def test_batch_invalid_json(self) -> None:
        """
        rpc call Batch, invalid JSON.
        """
        self.assertExchange(
            '[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
            '{"jsonrpc": "2.0", "method"]',
            '{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}',
        )

    def test_empty_batch(self) -> None:
        """
        rpc call with an empty Array.
        """
        self.assertExchange(
            "[]",
            '{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}',
        )

    def test_invalid_batch_not_empty(self) -> None:
        """
        rpc call with an invalid Batch (but not empty).
        """
        self.assertExchange(
            "[1]",
            '[{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}]',
        )

    def test_invalid_batch(self) -> None:
        """
        rpc call with invalid Batch.
        """
        error = '{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}'
        self.assertExchange("[1,2,3]", f"[{error},{error},{error}]")

    def test_batch(self) -> None:
        """
        rpc call Batch.
        """
        self.assertExchange(
            """[
                {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
                {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
                {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
                {"foo": "boo"},
                {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
                {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
            ]""",
            """[
                {"jsonrpc": "2.0", "result": 7, "id": "1"},
                {"jsonrpc": "2.0", "result": 19, "id": "2"},
                {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
                {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
                {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
            ]""",
        )

    def test_batch_all_notifications(self) -> None:
        """
        rpc call Batch (all notifications) returns nothing.
        """
        self.assertExchange(
            '[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
            '{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]',
            None,
        )


class JSONRPC2ServerTests(SynchronousTestCase):
    """
    Request validation and response encoding for JSON-RPC 2.0.
    """

    def test_params_kinds(self) -> None:
        """
        Params given by position, by name, or absent are told apart.
        """
        by_position = parse_request_value({"jsonrpc": "2.0", "method": "m", "params": [1], "id": 1})
        by_name = parse_request_value({"jsonrpc": "2.0", "method": "m", "params": {"a": 1}, "id": 1})
        absent = parse_request_value({"jsonrpc": "2.0", "method": "m", "id": 1})
        self.assertEqual(by_position.items, (Call(1, "m", [1], False),))
        self.assertEqual(by_name.items, (Call(1, "m", {"a": 1}, False),))
        self.assertEqual(absent.items, (Call(1, "m", None, False),))
        self.assertFalse(absent.is_batch)

    def test_ids(self) -> None:
        """
        String, number and null ids are accepted; a missing id makes a notification.
        """
        for request_id in ["abc", 1, 1.5, 12345678901234567890, None]:
            [call] = parse_request_value({"jsonrpc": "2.0", "method": "m", "id": request_id}).items
            self.assertEqual(call, Call(request_id, "m", None, False))
        [call] = parse_request_value({"jsonrpc": "2.0", "method": "m"}).items
        self.assertTrue(call.is_notification)

    def test_invalid_requests(self) -> None:
        """
        Each malformed request is Rejected with Invalid Request and a reason, keeping a valid id.
        """
        for request, request_id, reason in [
            ({"method": "m", "id": 1}, 1, "'jsonrpc' must be \"2.0\""),
            ({"jsonrpc": "1.0", "method": "m", "id": 1}, 1, "'jsonrpc'"),
            ({"jsonrpc": 2.0, "method": "m", "id": 1}, 1, "'jsonrpc'"),
            ({"jsonrpc": "2.0", "id": 1}, 1, "'method' must be a string"),
            ({"jsonrpc": "2.0", "method": None, "id": "a"}, "a", "'method'"),
            ({"jsonrpc": "2.0", "method": "m", "params": "x", "id": 1}, 1, "'params'"),
            ({"jsonrpc": "2.0", "method": "m", "params": None, "id": 1}, 1, "'params'"),
            ({"jsonrpc": "2.0", "method": "m", "params": 3}, None, "'params'"),
            ({"jsonrpc": "2.0", "method": "m", "id": True}, None, "'id'"),
            ({"jsonrpc": "2.0", "method": "m", "id": [1]}, None, "'id'"),
            ({"jsonrpc": "2.0", "method": "m", "id": {}}, None, "'id'"),
            ("m", None, "must be an object"),
        ]:
            [item] = parse_request_value(request).items
            assert isinstance(item, Rejected), request
            self.assertEqual((item.id, item.error.code), (request_id, INVALID_REQUEST), request)
            self.assertEqual(item.error.message, "Invalid Request")
            self.assertIn(reason, item.error.data, request)

    def test_parse_error_reason(self) -> None:
        """
        A strictness refusal is a Parse error whose data names the problem.
        """
        [item] = parse_request(b'{"jsonrpc":"2.0","method":"m","id":1,"id":2}').items
        assert isinstance(item, Rejected)
        self.assertEqual(item.error.code, PARSE_ERROR)
        self.assertEqual(item.error.data, "duplicate object key 'id'")

    def test_encode_exact(self) -> None:
        """
        Responses are compact, in the specification's member order.
        """
        self.assertEqual(encode_result(1, 19), b'{"jsonrpc":"2.0","result":19,"id":1}')
        self.assertEqual(encode_result("a", None), b'{"jsonrpc":"2.0","result":null,"id":"a"}')
        self.assertEqual(
            encode_error(None, JSONRPCError(INVALID_PARAMS, data={"field": "x"})),
            b'{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params",'
            b'"data":{"field":"x"}},"id":null}',
        )
        self.assertEqual(
            encode_error(7, JSONRPCError(-32000, "Custom")),
            b'{"jsonrpc":"2.0","error":{"code":-32000,"message":"Custom"},"id":7}',
        )

    def test_standard_messages(self) -> None:
        """
        Each standard code gets the specification's message by default.
        """
        self.assertEqual(
            [JSONRPCError(code).message for code in
             (PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR)],
            ["Parse error", "Invalid Request", "Method not found", "Invalid params", "Internal error"],
        )

    def test_unencodable_data(self) -> None:
        """
        Error data that cannot be serialised is sent as its repr instead of failing.
        """
        reply = json.loads(encode_error(1, JSONRPCError(INTERNAL_ERROR, data=object())))
        self.assertIn("object object", reply["error"]["data"])

    def test_unencodable_result(self) -> None:
        """
        A result that cannot be serialised raises, for the dispatcher to turn into Internal error.
        """
        self.assertRaises(TypeError, encode_result, 1, {1, 2})
        self.assertRaises(ValueError, encode_result, 1, [float("inf")])

    def test_assemble(self) -> None:
        """
        Replies are joined into an array for a batch, sent bare otherwise, and omitted when all are None.
        """
        self.assertEqual(assemble_reply([b"A", None, b"B"], True), b"[A,B]")
        self.assertEqual(assemble_reply([b"A"], False), b"A")
        self.assertIsNone(assemble_reply([None, None], True))
        self.assertIsNone(assemble_reply([None], False))


class JSONRPC2ClientTests(SynchronousTestCase):
    """
    The client side of JSON-RPC 2.0.
    """

    def test_encode_call(self) -> None:
        """
        Calls and notifications are encoded compactly, params left out when absent.
        """
        self.assertEqual(
            encode_call(1, "subtract", [42, 23]),
            b'{"jsonrpc":"2.0","method":"subtract","params":[42,23],"id":1}',
        )
        self.assertEqual(encode_call("x", "m"), b'{"jsonrpc":"2.0","method":"m","id":"x"}')
        self.assertEqual(
            encode_notification("update", {"a": 1}),
            b'{"jsonrpc":"2.0","method":"update","params":{"a":1}}',
        )
        self.assertRaises(TypeError, encode_call, 1, "m", "bad")
        self.assertRaises(ValueError, encode_call, True, "m")

    def test_batch(self) -> None:
        """
        A batch joins messages, and an empty one is refused.
        """
        self.assertEqual(
            encode_batch([encode_call(1, "a"), encode_notification("b")]),
            b'[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"b"}]',
        )
        self.assertRaises(ValueError, encode_batch, [])

    def test_round_trip(self) -> None:
        """
        What the client encodes, the server parses to the same call.
        """
        payload = parse_request(encode_batch([encode_call(2, "m", {"k": [1]}), encode_notification("n")]))
        self.assertEqual(
            payload.items, (Call(2, "m", {"k": [1]}, False), Call(None, "n", None, True))
        )
        self.assertTrue(payload.is_batch)

    def test_parse_responses(self) -> None:
        """
        Success, error and batch responses decode; an error keeps code, message and data.
        """
        self.assertEqual(
            parse_responses(json.loads(encode_result(1, 19))), [Response(1, 19, None)]
        )
        self.assertEqual(
            parse_responses(json.loads(b"[" + encode_error(None, JSONRPCError(-32700)) + b","
                                       + encode_error("a", JSONRPCError(-1, "x", [1])) + b"]")),
            [
                Response(None, None, JSONRPCError(PARSE_ERROR, "Parse error", NO_DATA)),
                Response("a", None, JSONRPCError(-1, "x", [1])),
            ],
        )

    def test_bad_responses(self) -> None:
        """
        Malformed responses raise JSONRPCProtocolError naming the problem.
        """
        for value, reason in [
            ([], "empty array"),
            ("x", "must be an object"),
            ({"result": 1, "id": 1}, "'jsonrpc'"),
            ({"jsonrpc": "2.0", "result": 1}, "'id'"),
            ({"jsonrpc": "2.0", "result": 1, "error": None, "id": 1}, "exactly one"),
            ({"jsonrpc": "2.0", "id": 1}, "exactly one"),
            ({"jsonrpc": "2.0", "error": "x", "id": 1}, "'error' must be an object"),
            ({"jsonrpc": "2.0", "error": {"code": "1", "message": "m"}, "id": 1}, "integer 'code'"),
        ]:
            error = self.assertRaises(JSONRPCProtocolError, parse_responses, value)
            self.assertIn(reason, str(error), value)
        self.assertRaises(JSONRPCProtocolError, parse_response_value, [])


class LongTextTests(SynchronousTestCase):
    """Long strings are encoded as the standard escaper encodes them, whether they take the plain path or not."""

    def test_same_as_escaper(self) -> None:
        """Long ASCII text with nothing to escape, and with each kind of character that needs escaping (quote, backslash, control, DEL, non-ASCII), encodes as json.dumps does."""
        plain = "abc XYZ 019 ~!@#$%^&*()_+-=[]{}|;:',.<>/?`" * 200
        for text in [plain, plain + '"', "\\" + plain, plain + "\n", plain + "\x00", plain + "\x7f",
                     plain + "\u00e9", plain + "\U0001f600", "x" * 4095 + '"']:
            self.assertEqual(encode_result(1, text),
                             b'{"jsonrpc":"2.0","result":%s,"id":1}' % json.dumps(text).encode())
            self.assertEqual(encode_go_response(b"7", text),
                             b'{"id":7,"result":%s,"error":null}\n' % json.dumps(text).encode())
