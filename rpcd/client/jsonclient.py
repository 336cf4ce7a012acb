"""
The client side of JSON on a raw connection, for L{rpcd.client.connect}:

  - codec C{jsonrpc}: Go's net/rpc/jsonrpc, as C{jsonrpc.Dial} speaks it
    (C{{"method":"Svc.M","params":[ARG],"id":N}}); it calls stock Go
    C{jsonrpc.ServeConn} servers and rpcd.  Go's errors are text only: a
    remote error is an L{RPCError} with code UNKNOWN and Go's text.
  - codec C{jsonrpc2}: JSON-RPC 2.0 over a raw connection (not HTTP), one
    request per call, newline-separated, as rpcd's C{json} protocol reads
    it.  The argument value is sent as C{params}: a C{dict} as named
    parameters, C{None} as no C{params}, anything else as the one
    positional parameter C{[value]} (call a method of several parameters
    with a C{dict}).  Error objects are mapped back to rpcd's codes (see
    L{rpcd.core.jsonerrors.rpc_error}).

Neither protocol can cancel a call: a timeout or a cancelled Deferred only
stops waiting, and a late answer is dropped.  Metadata is not sent.  A reply
the client cannot read (not JSON, an unknown shape) fails every pending call
and closes the connection, as Go's client does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from rpcd.errors import ProtocolError, go_error
from rpcd.client.channel import ClientChannel
from rpcd.core.jsonerrors import json_data, rpc_error
from rpcd.wire.jsonrpc import (
    GoProtocolError,
    JSONRPCProtocolError,
    decode_go_response,
    encode_call,
    encode_go_request,
    parse_responses,
)
from rpcd.wire.jsonstream import DEFAULT_MAX_SIZE, JSONStream, JSONStreamError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

log = Logger()


class _JSONChannel(ClientChannel):
    """
    What both JSON codecs share: the stream of replies, and failing
    everything when it breaks.
    """

    def __init__(self, clock: IReactorTime, max_size: int = DEFAULT_MAX_SIZE) -> None:
        """
        @param clock: for call deadlines.
        @param max_size: the largest reply accepted, in bytes.
        """
        super().__init__(clock)
        self.stream = JSONStream(max_size)
        self._broken = False

    def dataReceived(self, data: bytes) -> None:
        if self._broken:
            return
        self.stream.feed(data)
        try:
            for value in self.stream.values():
                self.reply_received(value)
        except (JSONStreamError, GoProtocolError, JSONRPCProtocolError) as e:
            self._broken = True
            why = f"{self.peer_name} sent a reply the {self.codec_name} codec cannot read: {e}"
            log.warn("{why}; closing the connection", why=why)
            self.fail_all(ProtocolError(why))
            self.transport.loseConnection()

    def reply_received(self, value: Any) -> None:
        """
        Handle one decoded reply.

        @param value: the JSON value.
        @raise GoProtocolError: or L{JSONRPCProtocolError}: it is malformed.
        """
        raise NotImplementedError()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.stream.close()
        super().connectionLost(reason)


def _encodable(value: Any, encode: Any) -> bytes:
    try:
        return encode(value)
    except TypeError:
        return encode(json_data(value))


class JSONRPCClientChannel(_JSONChannel):
    """
    Calls in Go's net/rpc/jsonrpc format (codec C{jsonrpc}).
    """

    codec_name = "jsonrpc"

    def send_call(self, call_id: int, method: str, value: Any, timeout: float | None,
                  metadata: dict[str, Any] | None) -> None:
        self.transport.write(_encodable(value, lambda v: encode_go_request(call_id, method, v)))

    def reply_received(self, value: Any) -> None:
        seq, result, error = decode_go_response(value)
        if error is not None:
            self.reject(seq, go_error(error))  # the same code as over gob
        else:
            self.resolve(seq, result)


class JSONRPC2ClientChannel(_JSONChannel):
    """
    Calls in JSON-RPC 2.0 over a raw connection (codec C{jsonrpc2}).
    """

    codec_name = "jsonrpc2"

    def send_call(self, call_id: int, method: str, value: Any, timeout: float | None,
                  metadata: dict[str, Any] | None) -> None:
        params: dict[str, Any] | list[Any] | None
        if value is None:
            params = None
        elif type(value) is dict:
            params = value
        else:
            params = [value]
        self.transport.write(_encodable(params, lambda p: encode_call(call_id, method, p)) + b"\n")

    def reply_received(self, value: Any) -> None:
        for response in parse_responses(value):
            if response.error is None:
                if type(response.id) is int:
                    self.resolve(response.id, response.result)
                continue
            error = rpc_error(response.error)
            if type(response.id) is int:
                self.reject(response.id, error)
            else:
                # The server could not tell which request it answers (a
                # parse error): it will close; fail everything with why.
                self.fail_all(error)


__all__ = ["JSONRPCClientChannel", "JSONRPC2ClientChannel"]
