"""
Running JSON-RPC calls through a L{Dispatcher}, for the raw JSON stream
(L{rpcd.server.jsonserver}) and HTTP (L{rpcd.server.httpserver}) alike, and
mapping rpcd's errors to and from JSON-RPC 2.0 error objects.

The message formats themselves are L{rpcd.wire.jsonrpc}'s; this module
only decides what to call and what to answer.

Errors, both ways (L{rpcd.core.jsonerrors.error_object}, L{rpcd.core.jsonerrors.rpc_error}):

    rpcd code            JSON-RPC 2.0 code          message
    UNIMPLEMENTED (12)   -32601 Method not found    the standard one
    INVALID_ARGUMENT (3) -32602 Invalid params      the standard one
    INTERNAL (13)        -32603 Internal error      the standard one
    any other N          -32000 - N (server error)  rpcd's message

and C{data} is always C{{"code": N, "name": "UNIMPLEMENTED", "message":
rpcd's message}}, plus C{"details"} when the error has some, so that a
client loses nothing.

Results are JSON as Go's C{encoding/json} writes them: C{bytes} become
base64 strings.  A result JSON cannot carry (a NaN, an object of no JSON
type) fails the call with INTERNAL instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from rpcd.core.dispatch import Args, error_fields
from rpcd.server import replies
from rpcd.core.jsonerrors import SERVER_ERROR, error_object, json_data, rpc_error
from rpcd.errors import RPCError, ResourceExhausted
from rpcd.wire.jsonrpc import (
    INVALID_REQUEST,
    PARSE_ERROR,
    Call,
    JSONRPCError,
    Payload,
    Rejected,
    assemble_reply,
    encode_error,
    encode_go_response,
    encode_result,
)

if TYPE_CHECKING:
    from rpcd.core.dispatch import Dispatcher

def unencodable(method: str, error: Exception) -> RPCError:
    """
    Log and describe a result JSON cannot carry
    (L{rpcd.server.replies.unencodable}).

    @param method: the method that returned it.
    @param error: what the encoder raised.
    @return: the INTERNAL error to answer instead.
    """
    return replies.unencodable(method, "JSON", error)


def encode_go_result(request_id: bytes, method: str, result: Any) -> bytes:
    """
    Go's jsonrpc response for a result, bytes as base64, or Go's error
    response if JSON cannot carry it.

    @param request_id: the raw id to echo.
    @param method: the method called (for the error).
    @param result: the plain result.
    @return: the response line.
    """
    try:
        return encode_go_response(request_id, result)
    except (TypeError, ValueError):
        pass
    try:
        return encode_go_response(request_id, json_data(result))
    except (TypeError, ValueError) as e:
        return encode_go_response(request_id, error=unencodable(method, e).message)


def encode_go_failure(request_id: bytes, failure: Failure) -> bytes:
    """
    Go's jsonrpc response for a call that failed later.

    @param request_id: the raw id to echo.
    @param failure: the call's failure.
    @return: the response line (Go's errors are text only: the message).
    """
    error = failure.value
    assert error is not None  # Failure() raises rather than hold no exception
    return encode_go_response(request_id, error=error_fields(error)[1])


def _encode_success(call: Call, result: Any) -> bytes:
    try:
        return encode_result(call.id, result)
    except (TypeError, ValueError):
        pass
    try:
        return encode_result(call.id, json_data(result))
    except (TypeError, ValueError) as e:
        return encode_error(call.id, error_object(unencodable(call.method, e)))


def _later(d: Deferred, call: Call) -> Deferred[bytes | None]:
    """
    The reply a pending call will give: never fails.
    """
    def done(result: Any) -> bytes | None:
        return None if call.is_notification else _encode_success(call, result)

    def failed(failure: Failure) -> bytes | None:
        error = failure.value
        assert error is not None  # Failure() raises rather than hold no exception
        return None if call.is_notification else encode_error(call.id, error_object(error))

    return d.addCallbacks(done, failed)


def run_call(dispatcher: Dispatcher, call: Call) -> bytes | None | Deferred[bytes | None]:
    """
    Run one valid JSON-RPC 2.0 request.

    C{params} given as an array are positional arguments, as an object named
    ones; absent C{params} call the method with a null argument.

    @param dispatcher: the connection's dispatcher.
    @param call: the request.
    @return: the encoded response, None for a notification, or a Deferred
        firing with either (it never fails).
    """
    params = call.params
    try:
        if params is None:
            result = dispatcher.call(call.method, None)
        elif type(params) is list:
            result = dispatcher.call(call.method, params, args=Args.POSITIONAL)
        else:
            result = dispatcher.call(call.method, params, args=Args.NAMED)
    except RPCError as e:
        return None if call.is_notification else encode_error(call.id, error_object(e))
    if isinstance(result, Deferred):
        return _later(result, call)
    if call.is_notification:
        return None
    return _encode_success(call, result)


def answer_payload(dispatcher: Dispatcher, payload: Payload, *, max_calls: int = 0,
                   max_reply_bytes: int = 0) -> bytes | None | Deferred[bytes | None]:
    """
    Run every request of a JSON-RPC 2.0 payload and assemble the reply.

    A batch's reply is one array sent once every call has ended, so it is
    held whole: two limits bound it.  A batch of more than C{max_calls}
    requests is refused as a whole (one Invalid Request error, id null,
    nothing run); and once the replies made at once exceed
    C{max_reply_bytes}, the requests after them are not run but answered
    with RESOURCE_EXHAUSTED (the first always runs, however large its
    reply).

    @param dispatcher: the connection's dispatcher.
    @param payload: a parsed single request or batch.
    @param max_calls: C{limits.max_batch_calls} (0: no limit).
    @param max_reply_bytes: C{limits.max_frame_bytes} (0: no limit).
    @return: the reply body (one response, or an array for a batch), None
        when nothing must be sent (only notifications), or a Deferred firing
        with either once every call has ended (it never fails).
    """
    items = payload.items
    if payload.is_batch and max_calls and len(items) > max_calls:
        return encode_error(None, JSONRPCError(
            INVALID_REQUEST, data=f"a batch of {len(items)} requests is over the limit of "
                                  f"{max_calls} (limits.max_batch_calls)"))
    replies: list[Any] = []
    waiting = False
    size = 0
    for item in items:
        if isinstance(item, Rejected):
            reply: Any = encode_error(item.id, item.error)
        elif max_reply_bytes and size > max_reply_bytes:
            reply = None if item.is_notification else encode_error(item.id, error_object(
                ResourceExhausted(f"not run: this batch's replies before it are over "
                                  f"{max_reply_bytes} bytes (limits.max_frame_bytes); "
                                  f"send it again in another batch")))
        else:
            reply = run_call(dispatcher, item)
            if isinstance(reply, Deferred):
                waiting = True
        if type(reply) is bytes:
            size += len(reply)
        replies.append(reply)
    if not waiting:
        return assemble_reply(replies, payload.is_batch)
    if len(replies) == 1:
        return replies[0]
    pending = [r if isinstance(r, Deferred) else _fired(r) for r in replies]
    gathered: Deferred[list[bytes | None]] = gatherResults(pending)
    return gathered.addCallback(assemble_reply, payload.is_batch)


def _fired(value: bytes | None) -> Deferred[bytes | None]:
    d: Deferred[bytes | None] = Deferred()
    d.callback(value)
    return d


def parse_error(why: str) -> bytes:
    """
    The JSON-RPC 2.0 parse error response (id null).

    @param why: what was wrong, for C{data}.
    @return: the response.
    """
    return encode_error(None, JSONRPCError(PARSE_ERROR, data=why))


__all__ = ["SERVER_ERROR", "answer_payload", "encode_go_failure", "encode_go_result",
           "error_object", "json_data", "parse_error", "rpc_error", "run_call", "unencodable"]
