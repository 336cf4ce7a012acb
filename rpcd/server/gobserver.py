"""
The server side of Go's C{net/rpc} gob protocol: what C{rpc.Dial} and
C{rpc.DialHTTP} (after C{CONNECT /_goRPC_}) talk to.

Requests are decoded with L{GobServerCodec}; each argument is decoded into
the Go type of the method's parameter hint (L{type_from_hint}), so a Go
client that sends the wrong type gets Go's own C{gob: ...} error, and each
reply is encoded as the Go type of the method's return hint (guessed from the
value when the method has no hint; C{None} from a method hinted C{-> None},
or from one without a hint, is Go's empty C{struct{}}, what
C{Set(kv [2]string, reply *struct{})} expects).

Errors are sent as their message alone, which is what the Go client's
C{err.Error()} shows: C{please login}, C{not found}, C{timeout}, and for
unknown names Go's own C{rpc: can't find service Nope.Method}.

Replies go out in the order their handlers finish; every reply one read
produces (including handlers that a call in that read finished, e.g. the
Watches a Set wakes) is written with one C{write}.  A malformed gob stream
cannot be resynchronised: the connection is closed and the reason logged.
While the peer's replies are over C{limits.write_buffer_bytes}, requests
already decoded are held, not started (L{rpcd.server.backpressure}); a peer that
shuts down its write side is answered, then the connection closes.

L{GobServerProtocol.take_over} is the entry point for gob after an HTTP
C{CONNECT /_goRPC_}.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.server.replies import unencodable
from rpcd.server.backpressure import UNCAPPED, ReadThrottle, calls_ended
from rpcd.core.dispatch import Dispatcher
from rpcd.errors import RPCError, code_name
from rpcd.wire.gob import (
    DISCARD,
    Array,
    GobEncodeError,
    GobError,
    GoType,
    Map,
    Slice,
    Struct,
    type_from_hint,
)
from rpcd.wire.gobrpc import INVALID_REQUEST, GobServerCodec

if TYPE_CHECKING:
    from twisted.internet.interfaces import ITCPTransport, ITransport

    from rpcd.server.budget import InputGuard
    from rpcd.server.factory import RPCServer
    from rpcd.core.service import MethodSpec

log = Logger()

EMPTY_STRUCT = INVALID_REQUEST
"""Go's C{struct{}}: the reply type of methods that return nothing."""

_NO_HINT = (Any, object)


class _MethodTypes:
    """
    The Go types of one method, worked out once per L{MethodSpec}.

    @ivar spec: a weak reference to the method.
    @ivar arg: what to decode the argument into: a L{GoType}, None (by its
        wire type) or L{DISCARD} (the method takes no argument).
    @ivar result: the reply's L{GoType}, or None to guess it per value.
    @ivar adapt: turns a converted result into what the gob encoder takes,
        or None when it takes it as it is (see L{_adapter}).
    """

    __slots__ = ("spec", "arg", "result", "adapt")

    def __init__(self, spec: MethodSpec) -> None:
        self.spec = weakref.ref(spec)
        hint = spec.arg_hint
        if hint is None:
            self.arg: Any = DISCARD
        elif hint in _NO_HINT:
            self.arg = None
        else:
            self.arg = _go_type(hint)
        hint = spec.result_hint
        self.result: GoType | None
        if hint is None or hint is type(None):
            self.result = EMPTY_STRUCT
        elif hint in _NO_HINT:
            self.result = None
        else:
            self.result = _go_type(hint)
        self.adapt = None if self.result is None else _adapter(self.result, {})


def _go_type(hint: Any) -> GoType | None:
    try:
        return type_from_hint(hint)
    except GobError:
        return None  # a hint gob cannot express: go by the value


_TYPES: dict[int, _MethodTypes] = {}


def method_types(spec: MethodSpec) -> _MethodTypes:
    """
    @param spec: a method's spec.
    @return: its L{_MethodTypes}, cached.
    """
    types = _TYPES.get(id(spec))
    if types is None or types.spec() is not spec:
        types = _TYPES[id(spec)] = _MethodTypes(spec)
        # The entry goes with its spec (a per-connection service's, say).
        weakref.finalize(spec, _TYPES.pop, id(spec), None)
    return types


def _adapter(t: GoType, memo: dict[int, Any]) -> Callable[[Any], Any] | None:
    """
    A converted result is plain data: a dataclass became a dict keyed by its
    Python field names, while the gob encoder reads a dict by Go field name.
    Where the two differ (C{service_method} / C{ServiceMethod}), this builds
    a function that turns such dicts into tuples of the field values in Go
    order, all the way down.

    @param t: the reply's Go type.
    @param memo: types already seen (recursive types).
    @return: the function, or None when no struct in C{t} needs it.
    """
    key = id(t)
    if key in memo:
        cell = memo[key]
        if cell is None or cell[0] is not None:
            return None if cell is None else cell[0]
        return lambda v: cell[0](v)  # recursive: bound once built
    if isinstance(t, Struct):
        cell = memo[key] = [None]
        fields = [(py, _adapter(f.type, memo)) for py, f in zip(t.py_names, t.fields)]
        if t.py_names == tuple(f.name for f in t.fields) and not any(a for _, a in fields):
            memo[key] = None
            return None

        def struct(v: Any) -> Any:
            if type(v) is not dict:
                return v  # a GoStruct, a dataclass instance, a tuple, None
            get = v.get
            return tuple(get(py) if a is None or get(py) is None else a(get(py))
                         for py, a in fields)
        cell[0] = struct
        return struct
    if isinstance(t, (Slice, Array, Map)) and t.elem is not None:
        elem = _adapter(t.elem, memo)
        if elem is not None:
            return _each(elem, isinstance(t, Map))
    return None


def _each(elem: Callable[[Any], Any], mapping: bool) -> Callable[[Any], Any]:
    """Apply an element adapter to each element of a list, or value of a dict."""
    if mapping:
        return lambda v: v if v is None else {k: elem(x) for k, x in v.items()}
    return lambda v: v if v is None else [elem(x) for x in v]


def _error_text(error: BaseException) -> str:
    """
    What a Go client's C{err.Error()} shows for a failed call: the message
    alone.  Never empty: an empty error string means success in net/rpc.
    """
    if isinstance(error, RPCError):
        return error.message or code_name(error.code).lower()
    return f"{type(error).__name__}: {error}"


class GobServerProtocol(Protocol):
    """
    Serves one connection in Go's net/rpc gob protocol.

    @ivar dispatcher: runs this connection's calls.
    @ivar session: the connection's session (after C{connectionMade}).
    """

    transport: ITCPTransport
    throttle: ReadThrottle | None = None
    input_guard: InputGuard | None = None

    def __init__(self, server: RPCServer, protocol_name: str = "gob") -> None:
        """
        @param server: what every connection shares (registry, limits, clock).
        @param protocol_name: the session's protocol name.
        """
        self.server = server
        self.protocol_name = protocol_name
        self.dispatcher: Dispatcher | None = None
        self.codec = GobServerCodec(self._arg_type_for,
                                    max_message_size=max(128, server.limits.max_frame_bytes))
        self._batch: list[bytes] | None = None
        self._batch_bytes = 0
        self._done = False
        self._read_ended = False
        self._ending = False
        # Service.Method -> its Go types, for the methods this connection
        # has called (only names that exist, so the map stays small).
        self._known: dict[str, _MethodTypes] = {}

    @classmethod
    def take_over(cls, server: RPCServer, transport: ITransport, data: bytes = b"",
                  protocol_name: str = "gob", *, throttle: ReadThrottle | None = None,
                  input_guard: InputGuard | None = None) -> GobServerProtocol:
        """
        Serve gob on a connection another protocol has read from already:
        the HTTP server calls this after answering C{CONNECT /_goRPC_} with
        C{HTTP/1.0 200 Connected to Go RPC}.

        The caller then passes every later C{dataReceived} and the
        C{connectionLost} of the connection on to the returned protocol (and
        may answer the idle check with its C{dispatcher.running}).

        @param server: the daemon's shared state.
        @param transport: the connected transport.
        @param data: bytes already received after the HTTP head.
        @param protocol_name: the session's protocol name.
        @param throttle: the connection's write cap (the one the sniffer gave
            the HTTP protocol), which gob then answers to: it holds requests
            while the peer's replies are over the cap.
        @param input_guard: the connection's input guard (likewise), which
            gob then reports its unfinished messages to.
        @return: the protocol, connected.
        """
        protocol = cls(server, protocol_name)
        if throttle is not None:
            protocol.throttle = throttle
            throttle.on_drained = protocol.replies_drained
        protocol.input_guard = input_guard
        protocol.makeConnection(transport)
        if data:
            protocol.dataReceived(data)
        return protocol

    def connectionMade(self) -> None:
        self.session = self.server.new_session(self.transport, self.protocol_name)
        self.dispatcher = Dispatcher(self.session, self.server.clock,
                                     self.server.limits.max_calls_per_connection)

    def _types(self, name: str) -> _MethodTypes | None:
        types = self._known.get(name)
        if types is None:
            method = self.session.lookup(name)
            if method is None:
                return None
            types = self._known[name] = method_types(method.spec)
        return types

    def _arg_type_for(self, name: str) -> Any:
        types = self._types(name)
        if types is None:
            return DISCARD  # Go reads and drops the body of an unknown method
        return types.arg

    def dataReceived(self, data: bytes) -> None:
        if self._done or self._ending:
            return
        try:
            requests = self.codec.feed(data)
        except GobError as e:
            self._broken(str(e))
            return
        guard = self.input_guard
        if guard is not None and not guard.update(self.codec.buffered, bool(requests)):
            return
        throttle = self.throttle
        if throttle is not None and (throttle.paused or throttle.held is not None):
            throttle.hold(requests)
            return
        self._requests_received(requests)

    def replies_drained(self) -> None:
        """
        The peer has read its replies: start the requests held for it,
        until they are done or its replies are over the cap again.
        """
        throttle = self.throttle
        if throttle is None:
            return
        if not self._done:
            throttle.run_held(self._requests_received)
        if self._read_ended and throttle.held is None:
            self._close_after_calls()

    def _requests_received(self, requests: list[tuple[int, str, Any]], _: Any = None) -> None:
        throttle = self.throttle
        room = throttle.room() if throttle is not None else UNCAPPED
        out: list[bytes] = []
        self._batch = out
        self._batch_bytes = 0
        left = iter(requests)
        try:
            for seq, name, value in left:
                reply = self._call(seq, name, value)
                if reply:
                    out.append(reply)
                    self._batch_bytes += len(reply)
                if self._batch_bytes > room:
                    # The peer's replies are over the cap: the rest waits.
                    assert throttle is not None  # room is finite
                    throttle.hold(list(left))
                    break
        finally:
            self._batch = None
            if out:
                self.transport.write(b"".join(out))
        if throttle is not None and throttle.held is not None and not throttle.paused:
            self.replies_drained()  # they fit after all (the peer reads)

    def read_connection_lost(self) -> None:
        """
        The peer shut down its write side (Go's C{CloseWrite}): answer
        every call it sent (the held ones once it reads), then close, as
        Go's C{rpc.ServeConn} does.  An unfinished request is dropped.
        """
        self._read_ended = True
        if self.input_guard is not None:
            self.input_guard.stop()
        if self.throttle is None or self.throttle.held is None:
            self._close_after_calls()

    def _close_after_calls(self) -> None:
        if self._ending or self._done:
            return
        self._ending = True
        dispatcher = self.dispatcher
        calls_ended(dispatcher.running if dispatcher is not None else {}).addCallback(
            lambda _: self.transport.loseConnection())

    def _call(self, seq: int, name: str, value: Any) -> bytes:
        if isinstance(value, GobError):
            return self.codec.encode_response(seq, name, str(value))
        dispatcher = self.dispatcher
        assert dispatcher is not None
        key = seq if seq not in dispatcher.running else object()
        try:
            result = dispatcher.call(name, value, key)
        except RPCError as e:
            return self.codec.encode_response(seq, name, _error_text(e))
        if isinstance(result, Deferred):
            result.addCallbacks(self._reply_later, self._fail_later,
                                callbackArgs=(seq, name), errbackArgs=(seq, name))
            return b""
        return self._reply(seq, name, result)

    def _reply(self, seq: int, name: str, result: Any) -> bytes:
        types = self._types(name)
        gotype = types.result if types is not None else None
        if gotype is None and result is None:
            gotype = EMPTY_STRUCT
        try:
            if types is not None and types.adapt is not None:
                result = types.adapt(result)
            return self.codec.encode_response(seq, name, None, result, gotype)
        except (GobEncodeError, TypeError, AttributeError, ValueError) as e:
            return self.codec.encode_response(seq, name, unencodable(name, "gob", e).message)

    def _send_later(self, data: bytes) -> None:
        if self._done:
            return
        batch = self._batch
        if batch is not None:
            # A call in the read being handled finished this one: keep the
            # encoder's order (type definitions before their first use).
            batch.append(data)
            self._batch_bytes += len(data)
        else:
            self.transport.write(data)

    def _reply_later(self, result: Any, seq: int, name: str) -> None:
        if not self._done:
            self._send_later(self._reply(seq, name, result))

    def _fail_later(self, failure: Failure, seq: int, name: str) -> None:
        error = failure.value
        assert error is not None  # Failure() raises rather than hold no exception
        if not self._done:
            self._send_later(self.codec.encode_response(seq, name, _error_text(error)))

    def _broken(self, why: str) -> None:
        self._done = True
        if self.throttle is not None:
            self.throttle.held = None
        log.info("closing {protocol} connection from {peer}: malformed gob stream: {why}",
                 protocol=self.protocol_name, peer=self.session.peer, why=why)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._done = True
        self.codec.close()
        if self.dispatcher is not None:
            self.dispatcher.close()


__all__ = ["GobServerProtocol", "EMPTY_STRUCT", "method_types"]
