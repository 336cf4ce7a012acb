"""
rpcd's errors as JSON: JSON-RPC 2.0 error objects both ways, and results
made JSON-safe as Go's C{encoding/json} makes them.  Shared by the server
(L{rpcd.server.jsoncalls}) and the client (L{rpcd.client.jsonclient}).

An rpcd error travels with its own code, name and message in C{data}; the
codes JSON-RPC 2.0 names itself are also mapped to and from its standard
codes (see L{rpcd.server.jsoncalls} for the table).
"""

from __future__ import annotations

import base64
from typing import Any

from rpcd.core.dispatch import error_fields
from rpcd.errors import Code, RPCError, code_name, error_from_wire
from rpcd.wire.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NO_DATA,
    PARSE_ERROR,
    STANDARD_MESSAGES,
    JSONRPCError,
)

SERVER_ERROR = -32000
"""rpcd code N travels as JSON-RPC 2.0 code C{SERVER_ERROR - N}."""

_TO_STANDARD = {
    Code.UNIMPLEMENTED: METHOD_NOT_FOUND,
    Code.INVALID_ARGUMENT: INVALID_PARAMS,
    Code.INTERNAL: INTERNAL_ERROR,
}
_FROM_STANDARD = {
    METHOD_NOT_FOUND: Code.UNIMPLEMENTED,
    INVALID_PARAMS: Code.INVALID_ARGUMENT,
    INVALID_REQUEST: Code.INVALID_ARGUMENT,
    PARSE_ERROR: Code.INVALID_ARGUMENT,
    INTERNAL_ERROR: Code.INTERNAL,
}


def json_data(value: Any) -> Any:
    """
    Replace C{bytes} in a result by base64 text, as Go's C{encoding/json}
    encodes a C{[]byte}.

    @param value: plain data (what a method's result converter returns).
    @return: the same data with every C{bytes}/C{bytearray} value encoded;
        containers are copied only when they hold some.
    """
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return base64.b64encode(value).decode("ascii")
    if kind is dict:
        return {k: json_data(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [json_data(v) for v in value]
    return value

def error_object(error: BaseException) -> JSONRPCError:
    """
    The JSON-RPC 2.0 error object for an error a call ended with.

    @param error: usually an L{RPCError}.
    @return: the error object (see the table in the module docstring).
    """
    code, message, details = error_fields(error)
    data: dict[str, Any] = {"code": code, "name": code_name(code), "message": message}
    if details is not None:
        data["details"] = json_data(details)
    standard = _TO_STANDARD.get(code)  # type: ignore[call-overload]
    if standard is not None:
        return JSONRPCError(standard, STANDARD_MESSAGES[standard], data)
    if 0 <= code <= 99:
        return JSONRPCError(SERVER_ERROR - code, message, data)
    return JSONRPCError(SERVER_ERROR, message, data)

def rpc_error(error: JSONRPCError) -> RPCError:
    """
    The L{RPCError} a client raises for a JSON-RPC 2.0 error object.

    @param error: the error object received.
    @return: rpcd's own error when C{data} carries it (an rpcd server), else
        the code mapped back (C{-32601} UNIMPLEMENTED, C{-32602}, C{-32600}
        and C{-32700} INVALID_ARGUMENT, C{-32603} INTERNAL, C{-32000 - N}
        code N, anything else UNKNOWN) with the message, and a string
        C{data} appended to it.
    """
    data = error.data
    if isinstance(data, dict) and type(data.get("code")) is int \
            and isinstance(data.get("message"), str):
        return error_from_wire(data["code"], data["message"], data.get("details"))
    code = _FROM_STANDARD.get(error.code)
    if code is None:
        rpcd_code = SERVER_ERROR - error.code
        code = Code(rpcd_code) if 0 < rpcd_code <= max(Code) else Code.UNKNOWN
    message = error.message
    details = None
    if isinstance(data, str):
        message = f"{message}: {data}"
    elif data is not NO_DATA and data is not None:
        details = data
    return error_from_wire(int(code), message, details)


__all__ = ["SERVER_ERROR", "error_object", "json_data", "rpc_error"]
