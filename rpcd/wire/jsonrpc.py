"""
Message codecs, sans-io, for Go's net/rpc/jsonrpc and for JSON-RPC 2.0.

Framing is not done here: on a raw connection, split the stream with
L{rpcd.wire.jsonstream.JSONStream}; over HTTP, pass the body to
L{parse_request}.  This module turns decoded values into calls and results
into bytes; it never calls a method itself.

Go's net/rpc/jsonrpc (JSON-RPC 1.0 style), server side::

    for value, raw in stream.values_and_bytes():
        request = decode_go_request(value, raw)      # GoProtocolError: close
        # resolve request.method first (go_method_error), then:
        if request.error is not None:
            reply = encode_go_response(request.id, error=request.error)
        else:
            reply = encode_go_response(request.id, result=call(request.arg))

JSON-RPC 2.0, server side::

    payload = parse_request(body)          # or parse_request_value(value)
    replies = []
    for item in payload.items:
        if isinstance(item, Rejected):
            replies.append(encode_error(item.id, item.error))
        else:                              # a Call
            ... replies.append(None if item.is_notification else encode_result(...))
    body = assemble_reply(replies, payload.is_batch)   # None: send nothing

Encoded messages are compact JSON, ASCII only (non-ASCII characters are
escaped as C{\\uXXXX}).  Go responses end with C{"\\n"} as Go's C{json.Encoder}
writes them; JSON-RPC 2.0 messages have no trailing newline (add one to
separate them on a raw connection).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Union

from rpcd.wire.jsonstream import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_SIZE,
    JSONStreamError,
    loads,
)

__all__ = [
    "GO_MISSING_PARAMS",
    "GoProtocolError",
    "GoRequest",
    "decode_go_request",
    "encode_go_response",
    "encode_go_request",
    "decode_go_response",
    "go_method_error",
    "PARSE_ERROR",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "INVALID_PARAMS",
    "INTERNAL_ERROR",
    "STANDARD_MESSAGES",
    "NO_DATA",
    "JSONRPCError",
    "JSONRPCProtocolError",
    "Call",
    "Rejected",
    "Payload",
    "parse_request",
    "parse_request_value",
    "encode_result",
    "encode_error",
    "assemble_reply",
    "encode_call",
    "encode_notification",
    "encode_batch",
    "Response",
    "parse_response_value",
    "parse_responses",
]

_json_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_escape = json.encoder.encode_basestring_ascii
try:
    # The C encoder the standard library builds on every dumps() call, built
    # once (no circular-reference check: a cycle is a RecursionError).
    _iterencode = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None, _json_encoder.default, _escape, None, ":", ",", False, False, False
    )
except (AttributeError, TypeError):  # pragma: no cover (no C accelerator)
    _iterencode = None


_PLAIN_TEXT_MIN = 4096
"""Strings at least this long are checked for the plain case first (see
L{_text})."""

_ESCAPED = (*(bytes((c,)) for c in range(0x20)), b'"', b"\\", b"\x7f")
"""The ASCII bytes the escaper does not copy as they are (it writes DEL as
C{\\u007f} too)."""


def _text(value: str) -> bytes:
    """
    A JSON string, ASCII.

    A long ASCII string with nothing to escape (a base64 blob, a large
    text value) is copied, not escaped character by character: a few
    C{memchr} passes instead of the escaper's loop, a third of the time
    for megabytes, which the reactor spends in one go.

    @param value: the text.
    @return: its JSON encoding.
    """
    if len(value) >= _PLAIN_TEXT_MIN and value.isascii():
        raw = value.encode("ascii")
        if not any(c in raw for c in _ESCAPED):
            return b"".join((b'"', raw, b'"'))
    return _escape(value).encode("ascii")


def _encode(value: object) -> bytes:
    """
    Compact, ASCII JSON.

    @raise TypeError: a value is not JSON-serialisable.
    @raise ValueError: a float is NaN or infinite, or a container holds
        itself.
    """
    kind = type(value)
    if kind is int:
        return int.__repr__(value).encode("ascii")
    if kind is str:
        return _text(value)  # type: ignore[arg-type]
    if value is None:
        return b"null"
    if _iterencode is None:  # pragma: no cover
        return _json_encoder.encode(value).encode("ascii")
    try:
        return "".join(_iterencode(value, 0)).encode("ascii")
    except RecursionError:
        raise ValueError("cannot encode a value that contains itself") from None


def _kind(value: object) -> str:
    """
    The word Go's C{UnmarshalTypeError} uses for a JSON value.
    """
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    return "number"


# ---------------------------------------------------------------------------
# Go's net/rpc/jsonrpc

GO_MISSING_PARAMS = "jsonrpc: request body missing params"
"""Go's error text for a request whose C{params} is absent or C{null}."""

_GO_NOT_ARRAY = "json: cannot unmarshal {} into Go value of type [1]interface {{}}"
_GO_STRING_RAW = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_GO_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)
_GO_SCALAR = re.compile(rb"[^\s,\]}]+")
_GO_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_GO_COMPACT = re.compile(rb'("(?:[^"\\]|\\.)*")|[ \t\r\n]+', re.S)
_ABSENT: Any = object()


class GoProtocolError(ValueError):
    """
    The peer broke Go's jsonrpc protocol in a way Go answers by closing the
    connection without a reply.  The message is Go's (for logs).
    """


@dataclass(slots=True)
class GoRequest:
    """
    One request in Go's net/rpc/jsonrpc format.

    @ivar method: C{"Service.Method"} as sent; C{""} if absent or C{null}.
    @ivar id: the request id exactly as Go echoes it: the raw JSON bytes of
        the C{id} member with insignificant whitespace removed (so C{1.0},
        C{"\\u0041"} and C{12345678901234567890} come back unchanged);
        C{b"null"} if absent.  Pass it to L{encode_go_response}.
    @ivar arg: the argument, C{params[0]}.  As in Go, more elements are
        ignored, and C{[]} gives the zero value, here C{None}.
    @ivar error: if not C{None}, Go's answer for a bad C{params} (absent,
        C{null}, or not an array): reply with it instead of calling the
        method, but only after the method name resolved (Go reports an
        unknown method first; see L{go_method_error}).
    """

    method: str
    id: bytes
    arg: object
    error: str | None = None


def _go_fields(obj: dict[str, Any], names: tuple[str, ...]) -> list[Any]:
    """
    Pick struct fields from a JSON object the way Go's C{encoding/json}
    does: keys match exactly or case-insensitively, the last match wins.
    """
    found = [obj.get(name, _ABSENT) for name in names]
    if len(obj) != len(names) or _ABSENT in found:
        found = [_ABSENT] * len(names)
        for key, value in obj.items():
            folded = key.lower()
            for i, name in enumerate(names):
                if folded == name:
                    found[i] = value
    return found


def _value_end(raw: bytes, pos: int) -> int:
    """
    Where the valid JSON value starting at C{raw[pos]} ends.
    """
    c = raw[pos]
    if c == 0x22:
        return _GO_STRING_RAW.match(raw, pos).end()  # type: ignore[union-attr]
    if c == 0x7B or c == 0x5B:
        depth = 0
        for m in _GO_TOKEN.finditer(raw, pos):
            t = raw[m.start()]
            if t == 0x7B or t == 0x5B:
                depth += 1
            elif t == 0x7D or t == 0x5D:
                depth -= 1
                if depth == 0:
                    return m.end()
        raise AssertionError("unbalanced JSON")  # pragma: no cover
    return _GO_SCALAR.match(raw, pos).end()  # type: ignore[union-attr]


def _raw_member(raw: bytes, name: str) -> bytes:
    """
    The raw bytes, compacted as Go does, of the last member of the top-level
    object C{raw} whose key matches C{name} case-insensitively.
    """
    found = b"null"
    ws = _GO_WHITESPACE.match
    pos = ws(raw, 1).end()  # type: ignore[union-attr]
    while raw[pos] != 0x7D:
        key_end = _value_end(raw, pos)
        key = json.loads(raw[pos:key_end])
        # Skip the colon.
        pos = ws(raw, key_end).end() + 1  # type: ignore[union-attr]
        pos = ws(raw, pos).end()  # type: ignore[union-attr]
        end = _value_end(raw, pos)
        if key.lower() == name:
            found = raw[pos:end]
        pos = ws(raw, end).end()  # type: ignore[union-attr]
        if raw[pos] == 0x2C:
            pos = ws(raw, pos + 1).end()  # type: ignore[union-attr]
    if found[:1] in (b"{", b"["):
        found = _GO_COMPACT.sub(lambda m: m.group(1) or b"", found)
    return found


def _go_id(value: object, raw: bytes) -> bytes:
    """
    The raw JSON of the id, as Go would echo it; re-encoded when that gives
    the same bytes, found in C{raw} otherwise.
    """
    if value is None:
        return b"null"
    if value is True:
        return b"true"
    if value is False:
        return b"false"
    if type(value) is int and (value != 0 or b"-0" not in raw):
        return str(value).encode("ascii")
    if type(value) is str and b"\\" not in raw:
        return b'"' + value.encode("utf-8") + b'"'
    return _raw_member(raw, "id")


def decode_go_request(value: object, raw: bytes) -> GoRequest:
    """
    Read one request of Go's net/rpc/jsonrpc, as Go's server codec does.

    Members are matched case-insensitively and unknown ones ignored, as Go
    does.  The input is one item of
    L{JSONStream.values_and_bytes<rpcd.wire.jsonstream.JSONStream.values_and_bytes>}.

    @param value: the decoded JSON value.
    @param raw: the bytes it was decoded from (used to echo the id exactly).
    @return: the request; check L{GoRequest.error}.
    A top-level C{null} reads as C{{}} (method C{""}, missing params), as in
    Go.

    @raise GoProtocolError: the value is not an object, or its C{method} is
        neither a string nor C{null}.  Go closes the connection without a
        reply; do the same.
    """
    if value is None:
        # Go decodes null into its request struct as a no-op.
        value = {}
    if not isinstance(value, dict):
        raise GoProtocolError(
            "rpc: server cannot decode request: json: cannot unmarshal "
            f"{_kind(value)} into Go value of type jsonrpc.serverRequest"
        )
    method, params, request_id = _go_fields(value, ("method", "params", "id"))
    if method is _ABSENT or method is None:
        method = ""
    elif not isinstance(method, str):
        raise GoProtocolError(
            "rpc: server cannot decode request: json: cannot unmarshal "
            f"{_kind(method)} into Go struct field serverRequest.method of type string"
        )
    id_raw = b"null" if request_id is _ABSENT else _go_id(request_id, raw)
    if params is _ABSENT or params is None:
        return GoRequest(method, id_raw, None, GO_MISSING_PARAMS)
    if not isinstance(params, list):
        return GoRequest(method, id_raw, None, _GO_NOT_ARRAY.format(_kind(params)))
    return GoRequest(method, id_raw, params[0] if params else None)


def go_method_error(
    method: str, services: Iterable[str] | None, methods: Iterable[str] | None
) -> str | None:
    """
    Go's error text for a C{"Service.Method"} name that does not resolve.

    Go splits at the last dot; no dot gives
    C{"rpc: service/method request ill-formed: NAME"}, an unknown service
    C{"rpc: can't find service NAME"}, an unknown method
    C{"rpc: can't find method NAME"}.

    @param method: the name as sent.
    @param services: the registered service names.
    @param methods: the method names of the service named in C{method}
        (ignored, may be C{None}, if that service does not exist).
    @return: the error text, or C{None} if the name resolves.
    """
    service, dot, name = method.rpartition(".")
    if not dot:
        return "rpc: service/method request ill-formed: " + method
    if services is None or service not in services:
        return "rpc: can't find service " + method
    if methods is None or name not in methods:
        return "rpc: can't find method " + method
    return None


def encode_go_response(
    id: bytes, result: object = None, error: str | None = None
) -> bytes:
    """
    Encode a response exactly as Go's jsonrpc server codec does:
    C{{"id":ID,"result":RESULT,"error":null}\\n} or
    C{{"id":ID,"result":null,"error":"TEXT"}\\n}.

    A successful call never answers C{"result":null}: Go's client codec
    takes C{"result":null,"error":null} as a protocol error
    (C{invalid error <nil>}) and drops the connection, failing every
    pending call.  A result of C{None} is therefore sent as C{{}}, the
    encoding of an empty Go struct (Go's own server sends C{{}}, C{[]} or
    C{0} for a reply it did not fill, by type); a Go caller whose reply is
    a struct or an C{any} accepts it.

    @param id: L{GoRequest.id}, echoed unchanged.
    @param result: the method's result, JSON-serialisable.
    @param error: the error text, or C{None} for success.  Go's client reads
        C{""} as C{"unspecified error"}.
    @return: the bytes to write.
    @raise TypeError: C{result} is not JSON-serialisable.
    @raise ValueError: C{result} holds a NaN or infinite float.
    """
    if error is not None:
        return b'{"id":' + id + b',"result":null,"error":' + _encode(error) + b"}\n"
    body = b"{}" if result is None else _encode(result)
    return b"".join((b'{"id":', id, b',"result":', body, b',"error":null}\n'))


def encode_go_request(seq: int, method: str, param: object) -> bytes:
    """
    Encode a request as Go's jsonrpc client codec does:
    C{{"method":"Svc.M","params":[PARAM],"id":SEQ}\\n}.

    @param seq: the request number, 0 <= seq < 2**64.
    @param method: C{"Service.Method"}.
    @param param: the single argument, JSON-serialisable.
    @raise TypeError: C{param} is not JSON-serialisable.
    @raise ValueError: C{seq} is out of range, or C{param} holds NaN.
    """
    if not 0 <= seq < 1 << 64:
        raise ValueError(f"seq {seq} is not a uint64")
    return (
        b'{"method":' + _encode(method) + b',"params":[' + _encode(param)
        + b'],"id":' + str(seq).encode("ascii") + b"}\n"
    )


def decode_go_response(value: object) -> tuple[int, object, str | None]:
    """
    Read one response of Go's net/rpc/jsonrpc, as Go's client codec does.

    @param value: one decoded JSON value from the stream.
    @return: C{(seq, result, error)}: C{error} is C{None} on success; on
        failure C{result} is C{None} and C{error} the text
        (C{"unspecified error"} for C{""}).
    @raise GoProtocolError: the response is not an object, its id is not a
        uint64, or it has neither a result nor a string error (Go's
        C{invalid error ...}): Go's client closes the connection and fails
        every pending call.
    """
    if not isinstance(value, dict):
        raise GoProtocolError(
            f"json: cannot unmarshal {_kind(value)} into Go value of type "
            "jsonrpc.clientResponse"
        )
    seq, result, error = _go_fields(value, ("id", "result", "error"))
    if seq is _ABSENT or seq is None:
        seq = 0
    elif type(seq) is not int or not 0 <= seq < 1 << 64:
        raise GoProtocolError(
            f"json: cannot unmarshal {_kind(seq)} into Go struct field "
            "clientResponse.id of type uint64"
        )
    if error is _ABSENT:
        error = None
    if error is not None or result is _ABSENT or result is None:
        if not isinstance(error, str):
            shown = "<nil>" if error is None else json.dumps(error)
            raise GoProtocolError(f"invalid error {shown}")
        return seq, None, error or "unspecified error"
    return seq, result, None


# ---------------------------------------------------------------------------
# JSON-RPC 2.0

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

STANDARD_MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
}
"""The specification's message for each standard error code."""


class _NoData:
    def __repr__(self) -> str:
        return "NO_DATA"


NO_DATA: Any = _NoData()
"""Marks an error without a C{data} member (C{None} means C{"data":null})."""

Id = Union[str, int, float, None]
"""A JSON-RPC 2.0 request id: a string, a number or null."""


class JSONRPCError(Exception):
    """
    A JSON-RPC 2.0 error object; services may raise it to pick the code.

    @ivar code: the error code (an C{int}).
    @ivar message: the message; defaults to the standard one for C{code}
        (see L{STANDARD_MESSAGES}), else C{"Server error"}.
    @ivar data: extra information, or L{NO_DATA} to leave C{data} out.
    """

    def __init__(self, code: int, message: str | None = None, data: object = NO_DATA):
        if message is None:
            message = STANDARD_MESSAGES.get(code, "Server error")
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JSONRPCError):
            return NotImplemented
        return (self.code, self.message, self.data) == (
            other.code,
            other.message,
            other.data,
        )

    __hash__ = None  # type: ignore[assignment]

    def to_json(self) -> dict[str, object]:
        """
        @return: the error object, as a C{dict}.
        """
        obj: dict[str, object] = {"code": self.code, "message": self.message}
        if self.data is not NO_DATA:
            obj["data"] = self.data
        return obj


class JSONRPCProtocolError(ValueError):
    """
    A JSON-RPC 2.0 response (client side) is malformed; the message says how.
    """


@dataclass(slots=True)
class Call:
    """
    A valid JSON-RPC 2.0 request, to dispatch.

    @ivar id: the request id, to pass to L{encode_result} or L{encode_error};
        C{None} for a notification (and for C{"id": null}).
    @ivar method: the method name.
    @ivar params: a C{list} if given by position, a C{dict} if given by
        name, C{None} if absent.
    @ivar is_notification: C{True} if the request had no C{id} member: do
        the call but send no reply, not even an error.
    """

    id: Id
    method: str
    params: list[Any] | dict[str, Any] | None
    is_notification: bool


@dataclass(slots=True)
class Rejected:
    """
    A request refused before dispatch; answer
    C{encode_error(rejected.id, rejected.error)}.

    @ivar id: the request's id if it had a valid one, else C{None}.
    @ivar error: a L{PARSE_ERROR} or L{INVALID_REQUEST} error; its C{data} is
        a sentence saying what was wrong.
    """

    id: Id
    error: JSONRPCError


@dataclass(slots=True)
class Payload:
    """
    One parsed JSON-RPC 2.0 payload: a single request or a batch.

    @ivar items: the requests, in order; never empty.
    @ivar is_batch: whether the replies go back as an array (see
        L{assemble_reply}).  An empty batch or unparsable JSON is one
        L{Rejected}, not a batch, as the specification requires.
    """

    items: tuple[Call | Rejected, ...]
    is_batch: bool


def _valid_id(value: object) -> bool:
    return value is None or (
        isinstance(value, (str, int, float)) and not isinstance(value, bool)
    )


def _invalid(request_id: Id, why: str) -> Rejected:
    return Rejected(request_id, JSONRPCError(INVALID_REQUEST, data=why))


def _parse_one(obj: object) -> Call | Rejected:
    if not isinstance(obj, dict):
        return _invalid(None, f"a request must be an object, not {_kind(obj)}")
    request_id = obj.get("id", _ABSENT)
    is_notification = request_id is _ABSENT
    if is_notification:
        request_id = None
    elif not _valid_id(request_id):
        return _invalid(None, "'id' must be a string, a number or null")
    if obj.get("jsonrpc") != "2.0":
        return _invalid(request_id, "'jsonrpc' must be \"2.0\"")
    method = obj.get("method")
    if not isinstance(method, str):
        return _invalid(request_id, "'method' must be a string")
    params = obj.get("params")
    if params is None:
        if "params" in obj:
            return _invalid(request_id, "'params' must be an array or an object")
    elif not isinstance(params, (list, dict)):
        return _invalid(request_id, "'params' must be an array or an object")
    return Call(request_id, method, params, is_notification)


def parse_request_value(value: object) -> Payload:
    """
    Validate a decoded JSON-RPC 2.0 request or batch.

    A request is valid when it is an object with C{"jsonrpc": "2.0"}, a
    string C{method}, C{params} absent or an array or object, and C{id}
    absent (a notification) or a string, number or null.  Other members
    are ignored.

    @param value: the decoded JSON text (e.g. from a
        L{JSONStream<rpcd.wire.jsonstream.JSONStream>}).
    @return: the payload; invalid requests are L{Rejected} items in place.
    """
    if isinstance(value, list):
        if not value:
            return Payload((_invalid(None, "a batch must not be empty"),), False)
        return Payload(tuple(_parse_one(item) for item in value), True)
    return Payload((_parse_one(value),), False)


def parse_request(
    data: bytes, max_size: int = DEFAULT_MAX_SIZE, max_depth: int = DEFAULT_MAX_DEPTH
) -> Payload:
    """
    Decode strictly and validate a JSON-RPC 2.0 request or batch, such as an
    HTTP POST body.

    @param data: the whole body, exactly one JSON value (UTF-8).
    @param max_size: as for L{JSONStream<rpcd.wire.jsonstream.JSONStream>}.
    @param max_depth: as for L{JSONStream<rpcd.wire.jsonstream.JSONStream>}.
    @return: the payload; bytes that are not one strict JSON value give a
        single L{Rejected} L{PARSE_ERROR} whose C{data} says why.
    """
    try:
        value = loads(data, max_size, max_depth)
    except JSONStreamError as e:
        return Payload((Rejected(None, JSONRPCError(PARSE_ERROR, data=str(e))),), False)
    return parse_request_value(value)


def encode_result(id: Id, result: object) -> bytes:
    """
    Encode a success response: C{{"jsonrpc":"2.0","result":...,"id":...}}.

    @param id: L{Call.id}.
    @param result: the method's result, JSON-serialisable (C{None} is
        C{null}).
    @return: the response bytes, no trailing newline.
    @raise TypeError: C{result} is not JSON-serialisable (answer
        L{INTERNAL_ERROR} instead).
    @raise ValueError: C{result} holds a NaN or infinite float.
    """
    return b"".join((b'{"jsonrpc":"2.0","result":', _encode(result), b',"id":', _encode(id), b"}"))


def encode_error(id: Id, error: JSONRPCError) -> bytes:
    """
    Encode an error response:
    C{{"jsonrpc":"2.0","error":{"code":..,"message":..,"data":..},"id":..}}.

    @param id: L{Call.id} or L{Rejected.id}.
    @param error: the error; if its C{data} cannot be serialised it is
        replaced by its C{repr()}, so this never fails for a valid C{id}.
    @return: the response bytes, no trailing newline.
    """
    try:
        body = _encode(error.to_json())
    except (TypeError, ValueError):
        body = _encode(JSONRPCError(error.code, str(error.message), repr(error.data)).to_json())
    return b'{"jsonrpc":"2.0","error":' + body + b',"id":' + _encode(id) + b"}"


def assemble_reply(replies: Iterable[bytes | None], is_batch: bool) -> bytes | None:
    """
    Assemble the encoded responses to one payload.

    @param replies: one item per L{Payload.items} entry, in any order: the
        encoded response, or C{None} for a notification.
    @param is_batch: L{Payload.is_batch}.
    @return: the reply body, or C{None} if nothing must be sent (all
        notifications; over HTTP answer 204 or an empty 200).
    """
    present = [reply for reply in replies if reply is not None]
    if not present:
        return None
    if is_batch:
        return b"[" + b",".join(present) + b"]"
    return present[0]


def encode_call(id: Id, method: str, params: list[Any] | dict[str, Any] | None = None) -> bytes:
    """
    Encode a request (client side).

    @param id: a string or number (or C{None}, discouraged by the spec).
    @param method: the method name.
    @param params: positional (C{list}), named (C{dict}), or C{None} to leave
        C{params} out.
    @return: C{{"jsonrpc":"2.0","method":..,"params":..,"id":..}}, no newline.
    @raise TypeError: C{params} is not a list, dict or C{None}, or not
        serialisable.
    @raise ValueError: C{id} is not a valid id.
    """
    if not _valid_id(id):
        raise ValueError(f"invalid JSON-RPC id {id!r}")
    return _encode_request(method, params)[:-1] + b',"id":' + _encode(id) + b"}"


def encode_notification(method: str, params: list[Any] | dict[str, Any] | None = None) -> bytes:
    """
    Encode a notification (a request without an id: no reply comes back).

    @param method: the method name.
    @param params: as for L{encode_call}.
    @return: C{{"jsonrpc":"2.0","method":..,"params":..}}, no newline.
    @raise TypeError: as for L{encode_call}.
    """
    return _encode_request(method, params)


def _encode_request(method: str, params: list[Any] | dict[str, Any] | None) -> bytes:
    if not isinstance(method, str):
        raise TypeError("method must be a string")
    out = b'{"jsonrpc":"2.0","method":' + _encode(method)
    if params is not None:
        if not isinstance(params, (list, dict)):
            raise TypeError("params must be a list, a dict or None")
        out += b',"params":' + _encode(params)
    return out + b"}"


def encode_batch(messages: Iterable[bytes]) -> bytes:
    """
    Join encoded calls and notifications into a batch.

    @param messages: outputs of L{encode_call} and L{encode_notification}.
    @return: C{[msg,msg,...]}.
    @raise ValueError: C{messages} is empty (the server would answer with
        an Invalid Request error).
    """
    out = b",".join(messages)
    if not out:
        raise ValueError("a JSON-RPC batch must not be empty")
    return b"[" + out + b"]"


@dataclass(slots=True)
class Response:
    """
    A JSON-RPC 2.0 response (client side).

    @ivar id: the id of the request answered (C{None} when the server could
        not read it).
    @ivar result: the result on success, else C{None}.
    @ivar error: C{None} on success, else the error.
    """

    id: Id
    result: object
    error: JSONRPCError | None


def parse_response_value(value: object) -> Response:
    """
    Validate one decoded JSON-RPC 2.0 response object.

    @raise JSONRPCProtocolError: it is not an object with C{"jsonrpc":"2.0"},
        a valid C{id}, and exactly one of C{result} or an C{error} object
        with an integer C{code} and a string C{message}.
    """
    if not isinstance(value, dict):
        raise JSONRPCProtocolError(f"a response must be an object, not {_kind(value)}")
    if value.get("jsonrpc") != "2.0":
        raise JSONRPCProtocolError("'jsonrpc' must be \"2.0\"")
    if "id" not in value or not _valid_id(value["id"]):
        raise JSONRPCProtocolError("a response must have an 'id': a string, a number or null")
    has_result = "result" in value
    if has_result == ("error" in value):
        raise JSONRPCProtocolError("a response must have exactly one of 'result' and 'error'")
    if has_result:
        return Response(value["id"], value["result"], None)
    error = value["error"]
    if not isinstance(error, dict):
        raise JSONRPCProtocolError("'error' must be an object")
    code = error.get("code")
    message = error.get("message")
    if type(code) is not int or not isinstance(message, str):
        raise JSONRPCProtocolError("'error' needs an integer 'code' and a string 'message'")
    return Response(value["id"], None, JSONRPCError(code, message, error.get("data", NO_DATA)))


def parse_responses(value: object) -> list[Response]:
    """
    Validate a decoded reply: one response, or a batch of them.

    @param value: the decoded JSON text.
    @return: the responses, in the order received (match them by id).
    @raise JSONRPCProtocolError: a response is malformed, or the batch is
        empty.
    """
    if isinstance(value, list):
        if not value:
            raise JSONRPCProtocolError("an empty array is not a valid reply")
        return [parse_response_value(item) for item in value]
    return [parse_response_value(value)]
