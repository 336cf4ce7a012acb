"""
What every server protocol does with a result its codec cannot carry: log
it and answer the call with an INTERNAL error instead (the connection goes
on).  Each protocol then builds that error in its own codec, in one place:
native ERROR frames in L{rpcd.wire.connection.NativeConnection.send_error},
JSON-RPC error objects in L{rpcd.server.jsoncalls.error_object}, Go
C{net/rpc} responses in the gob and Go JSON codecs.
"""

from __future__ import annotations

from twisted.logger import Logger

from rpcd.errors import Code, RPCError

__all__ = ["unencodable"]

log = Logger()

# Go's net/rpc words it its own way; the gob client tells its user so.
_GO_WORDING = "rpc: {method} returned a value {codec} cannot encode: {error}"
_WORDING = {"gob": _GO_WORDING}
_DEFAULT_WORDING = "{method}: the result cannot be encoded as {codec}: {error}"

# One static format per codec (log formats are not built per call).
_LOG_FORMATS = {codec: "{method} returned a value " + codec + " cannot encode: {error}"
                for codec in ("msgpack", "JSON", "gob")}
_LOG_FORMAT = "{method} returned a value {codec} cannot encode: {error}"


def unencodable(method: str, codec: str, error: Exception) -> RPCError:
    """
    Log a result a codec cannot encode and describe the error to answer.

    @param method: the method (or stream) that returned it, for the log
        and the message.
    @param codec: the codec's name as people know it (C{"msgpack"},
        C{"JSON"}, C{"gob"}).
    @param error: what the encoder raised.
    @return: the INTERNAL error to answer instead.
    """
    log.error(_LOG_FORMATS.get(codec, _LOG_FORMAT), method=method, codec=codec, error=error)
    wording = _WORDING.get(codec, _DEFAULT_WORDING)
    return RPCError(wording.format(method=method, codec=codec, error=error), code=Code.INTERNAL)
