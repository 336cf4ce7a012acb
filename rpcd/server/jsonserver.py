"""
The server side of JSON on a raw connection: a stream of concatenated JSON
values, each one a request in one of two styles, answered in its own style.

  - Go's net/rpc/jsonrpc (C{jsonrpc.Dial}, C{jsonrpc.ServeConn}'s peers,
    seed 002's Python socket client): an object without a C{"jsonrpc"}
    member, C{{"method": "Svc.M", "params": [ARG], "id": ID}}, answered
    C{{"id":ID,"result":...,"error":null}} or
    C{{"id":ID,"result":null,"error":"TEXT"}} plus a newline, exactly as Go
    writes them, the id echoed byte for byte.
  - JSON-RPC 2.0: an object with a C{"jsonrpc"} member, or an array (a
    batch), answered with 2.0 responses and error objects (see
    L{rpcd.server.jsoncalls}), each followed by a newline; a batch is
    answered with one array once all its calls have ended; notifications
    get nothing.

Replies go out in the order calls end.  Every reply a single read produces
is written with one C{write}.  While the peer's replies are over
C{limits.write_buffer_bytes}, no new request is started (the stream keeps
them; L{rpcd.server.backpressure}), and a batch's reply is bounded by
L{answer_payload}'s limits.  A peer that shuts down its write side is
answered, then the connection closes.

A stream that breaks (not JSON, NaN, a duplicate key, too big or too deep
a value, or a value Go's server cannot read) is closed with the reason
logged, once the calls already running have answered, as Go's server does.
Unless the peer has spoken Go's style, it is first answered with a JSON-RPC
2.0 parse error (C{-32700}, id null) saying what was wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.server.backpressure import UNCAPPED, ReadThrottle
from rpcd.core.dispatch import Dispatcher
from rpcd.errors import RPCError
from rpcd.server.jsoncalls import (
    answer_payload,
    encode_go_failure,
    encode_go_result,
    parse_error,
)
from rpcd.wire.jsonrpc import (
    GoProtocolError,
    decode_go_request,
    encode_go_response,
    parse_request_value,
)
from rpcd.wire.jsonstream import JSONStream, JSONStreamError

if TYPE_CHECKING:
    from rpcd.server.budget import InputGuard
    from rpcd.server.factory import RPCServer

log = Logger()


class JSONServerProtocol(Protocol):
    """
    Serves one connection speaking JSON (Go's jsonrpc or JSON-RPC 2.0).

    @ivar dispatcher: runs this connection's calls.
    @ivar broken: why the stream broke, once it has; the connection closes
        when the calls still running have answered.
    """

    transport: ITCPTransport

    protocol_name = "json"
    throttle: ReadThrottle | None = None
    input_guard: InputGuard | None = None

    def __init__(self, server: RPCServer) -> None:
        """
        @param server: what every connection shares (registry, limits, clock).
        """
        self.server = server
        self.stream = JSONStream(server.limits.max_frame_bytes)
        self.dispatcher: Dispatcher | None = None
        self.broken: str | None = None
        self._go_spoken = False
        self._lost = False
        self._batch: list[bytes] | None = None
        # Values completed but not answered while the peer's replies are
        # over the cap (the stream holds them), and the half-close state.
        self._waiting = False
        self._draining = False
        self._read_ended = False

    def connectionMade(self) -> None:
        self.session = self.server.new_session(self.transport, self.protocol_name)
        self.dispatcher = Dispatcher(self.session, self.server.clock,
                                     self.server.limits.max_calls_per_connection)

    def dataReceived(self, data: bytes) -> None:
        if self.broken is not None or self._read_ended:
            return
        stream = self.stream
        stream.feed(data)
        throttle = self.throttle
        if throttle is not None and (throttle.paused or self._waiting):
            # The stream keeps the values until the peer reads its replies.
            self._report_input(False)
            return
        completed = self._values_received()
        self._report_input(completed)

    def _report_input(self, completed: bool) -> None:
        guard = self.input_guard
        if guard is not None and self.broken is None:
            guard.update(self.stream.buffered, completed)

    def _values_received(self) -> bool:
        """
        Answer the values the stream has completed, until the peer's replies
        are over the cap (see L{rpcd.server.backpressure}); the stream keeps the rest.

        @return: whether any value was taken.
        """
        throttle = self.throttle
        room = throttle.room() if throttle is not None else UNCAPPED
        queued = 0
        taken = False
        self._waiting = False
        out: list[bytes] = []
        self._batch = out
        try:
            for value, raw in self.stream.values_and_bytes():
                taken = True
                before = len(out)
                if type(value) is list or (type(value) is dict and "jsonrpc" in value):
                    self._json2(value, out)
                else:
                    self._go(value, raw, out)
                for reply in out[before:]:
                    queued += len(reply)
                if queued > room:
                    self._waiting = True
                    break
        except JSONStreamError as e:
            if not self._go_spoken:
                out.append(parse_error(str(e)) + b"\n")
            self._break(f"malformed JSON: {e}")
        except GoProtocolError as e:
            self._break(str(e))
        finally:
            self._batch = None
        if out:
            self.transport.write(b"".join(out))
        if self.broken is not None or self._read_ended:
            self._close_when_idle()
        elif self._waiting and throttle is not None and not throttle.paused:
            self.replies_drained()  # they fit after all (the peer reads)
        return taken

    def replies_drained(self) -> None:
        """
        The peer has read its replies: answer the values waiting for it,
        until they are done or its replies are over the cap again.
        """
        if self._draining:
            return  # called from within the loop below: it goes on
        self._draining = True
        throttle = self.throttle
        try:
            while self._waiting and self.broken is None and not self._lost and not (
                    throttle is not None and (throttle.paused or throttle.wait_turn())):
                self._values_received()
        finally:
            self._draining = False
        if self._read_ended:
            self._close_when_idle()

    def read_connection_lost(self) -> None:
        """
        The peer shut down its write side (Go's C{CloseWrite}): answer
        every request it sent (those waiting once it reads), then close, as
        Go's C{jsonrpc.ServeConn} does.  A value left unfinished is a parse
        error.
        """
        if self._read_ended:
            return
        self._read_ended = True
        if self.input_guard is not None:
            self.input_guard.stop()
        if self.broken is not None:
            return
        self.stream.close()
        throttle = self.throttle
        if throttle is not None and (throttle.paused or self._waiting):
            self._waiting = True
            return
        self._values_received()

    def _go(self, value: Any, raw: bytes, out: list[bytes]) -> None:
        request = decode_go_request(value, raw)
        self._go_spoken = True
        if request.error is not None:
            # Go resolves the method before it reads the params.
            if self.session.lookup(request.method) is None:
                error = self.session.registry.unknown(request.method).message
            else:
                error = request.error
            out.append(encode_go_response(request.id, error=error))
            return
        dispatcher = self.dispatcher
        assert dispatcher is not None  # set by connectionMade, before any data
        try:
            result = dispatcher.call(request.method, request.arg)
        except RPCError as e:
            out.append(encode_go_response(request.id, error=e.message))
            return
        if isinstance(result, Deferred):
            result.addCallbacks(self._go_later, self._go_failed,
                                callbackArgs=(request.id, request.method),
                                errbackArgs=(request.id,))
            return
        out.append(encode_go_result(request.id, request.method, result))

    def _go_later(self, result: Any, request_id: bytes, method: str) -> None:
        self._write(encode_go_result(request_id, method, result))

    def _go_failed(self, failure: Failure, request_id: bytes) -> None:
        self._write(encode_go_failure(request_id, failure))

    def _json2(self, value: Any, out: list[bytes]) -> None:
        dispatcher = self.dispatcher
        assert dispatcher is not None  # set by connectionMade, before any data
        limits = self.server.limits
        reply = answer_payload(dispatcher, parse_request_value(value),
                               max_calls=limits.max_batch_calls,
                               max_reply_bytes=limits.max_frame_bytes)
        if isinstance(reply, Deferred):
            reply.addCallback(self._json2_later)
        elif reply is not None:
            out.append(reply + b"\n")

    def _json2_later(self, reply: bytes | None) -> None:
        if reply is not None:
            self._write(reply + b"\n")
        elif self.broken is not None or self._read_ended:
            self._close_when_idle()

    def _write(self, data: bytes) -> None:
        if self._lost:
            return
        batch = self._batch
        if batch is not None:
            # A call in the read being handled finished this one (a Set
            # waking a Watch): it joins that read's one write.
            batch.append(data)
            return
        self.transport.write(data)
        if self.broken is not None or self._read_ended:
            self._close_when_idle()

    def _break(self, why: str) -> None:
        self.broken = why
        if self.input_guard is not None:
            self.input_guard.stop()
        log.info("closing {peer}: {why}", peer=self.session.peer, why=why)

    def _close_when_idle(self) -> None:
        dispatcher = self.dispatcher
        assert dispatcher is not None  # only called once data has arrived
        if not self._lost and not dispatcher.running and not (
                self._waiting and self.broken is None):
            self.transport.loseConnection()

    def busy(self) -> bool:
        """
        @return: whether calls are running (the connection is not idle).
        """
        return bool(self.dispatcher is not None and self.dispatcher.running)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self.stream.close()
        if self.dispatcher is not None:
            self.dispatcher.close()
