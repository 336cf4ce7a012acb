"""
Interceptors: code that runs around every call, on the server and on the
client, as one ordered chain (grpc-go's interceptors, connect's
C{Interceptor}, grpcio's C{ServerInterceptor}, made Twisted-native).

How to write one
================

An interceptor is any object with an C{intercept(call, proceed)} method
(L{rpcd.core.interfaces.IServerInterceptor} on the server,
L{rpcd.core.interfaces.IClientInterceptor} on the client; one object may be
both, looking at C{call.side})::

    class Timing:
        def __init__(self, clock=None):
            self.clock = clock

        async def intercept(self, call, proceed):
            if call.method == "Admin.Shutdown" and call.user != "root":
                raise PermissionDenied("root only")      # refuse with a code
            call.metadata["seen-by"] = "timing"           # add metadata
            try:
                result = await proceed(call)              # the rest of the chain
            except RPCError as e:
                log.info("{m} failed: {code}", m=call.method, code=e.code.name)
                raise
            log.info("{m} took {s}", m=call.method, s=call.elapsed())
            return result

  - C{intercept} may return a value, a L{Deferred}, or be a coroutine
    (C{async def}); rpcd never runs it in a thread, so it must not block.
  - C{proceed(call)} runs the next interceptor (and finally the handler,
    or on the client the wire call) and B{always returns a Deferred}: it
    fires with the result (on the server: plain data, after the result
    converter) or fails with an L{rpcd.errors.RPCError} whose C{code} says
    what happened (a handler's unexpected exception is already mapped to
    INTERNAL, a deadline to DEADLINE_EXCEEDED, a cancel to CANCELLED).  Call
    it at most once.  Not calling it refuses the call: raise an
    L{RPCError} (C{ResourceExhausted}, C{PermissionDenied}, ...); the
    caller gets that code, message and C{details}.  An interceptor may also
    return a result without proceeding (a cache).
  - Whatever C{intercept} raises that is not an L{RPCError} reaches the
    caller as INTERNAL and is logged.
  - The order is the configured order: the first interceptor is the
    outermost (it sees the call first and the result last).
  - Streams go through the same C{intercept}: C{call.kind} is
    C{"server_stream"}, C{"client_stream"} or C{"bidi_stream"}, C{proceed}
    fires with the stream's final value when it ends, and
    C{call.wrap_messages(received=f, sent=g)} (before proceeding) runs
    C{f(message)} on each message the handler receives (server) or the
    application receives (client), and C{g(message)} on each one sent;
    each returns the message to pass on (or a replacement) or raises an
    L{RPCError} to end the stream with that error.  C{received} filters run
    outermost first; C{sent} filters innermost first.
  - Time a call with C{call.elapsed()} (seconds since the call reached the
    chain, on the reactor's clock).  C{call.data} is a dict the chain's
    interceptors share for one call (the tracing built-in leaves
    C{call.data["trace_id"]} there for the access log).
  - On the server, the handler (and an async interceptor's code after
    C{proceed}) runs in the contextvars context the interceptor set up
    before calling C{proceed}: setting a C{ContextVar} (or attaching an
    OpenTelemetry context) around the synchronous C{proceed(call)} call
    makes it visible to the handler and to the calls it makes.

The call object
===============

L{ServerCall} (server) and L{ClientCall} (client) share: C{side}
(C{"server"} or C{"client"}), C{method} (C{"Service.Method"}), C{kind},
C{protocol} (the wire: C{native}, C{gob}, C{jsonrpc}, C{jsonrpc2},
C{http}, ... on the server; the codec on the client), C{peer}
(C{host:port} of the other side; the endpoint on the client),
C{metadata} (a dict: on the server what the caller sent, and what
interceptors add is what the handler's L{rpcd.core.context.CallContext} sees;
on the client what is sent), C{deadline} (the clock time by which the call
must end, or None), C{time_remaining()}, C{value} (the request argument),
C{clock}, C{data}, C{elapsed()}.  A L{ServerCall} adds C{session},
C{user}, C{tls_identity}, C{peer_host}, and C{known} (False for a method
the server does not have: the chain sees those calls too, and C{proceed}
fails with UNIMPLEMENTED).  A L{ClientCall} adds C{timeout} (seconds; an
interceptor may shorten it).

Configuring
===========

In the daemon's TOML, in chain order::

    [[interceptors]]
    use = "access_log"                    # a built-in, by name
    options = { slow_ms = 250 }

    [[interceptors]]
    use = "mypackage.mw:make_audit"       # your own: module:factory
    options = { table = "audit" }         # keyword arguments of the factory

From Python: C{ServiceRegistry(interceptors=[...])} (or
C{registry.interceptors = [...]}) on the server; C{connect(...,
interceptors=[...])} and C{connect_balanced(..., interceptors=[...])} on the
client (on a balancer the chain runs once per logical call, around its
retries).  A factory is called as C{factory(**options)}; a built-in's
factory also gets C{clock=} (the reactor) when it accepts one.

With no interceptor configured, nothing of this runs: the dispatcher's hot
path is the same as without this module.
"""

from __future__ import annotations

import inspect
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.core.loader import load_object
from rpcd.errors import RPCError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from rpcd.core.session import Session

log = Logger()

BUILTINS: dict[str, str] = {
    "access_log": "rpcd.middleware.accesslog:AccessLog",
    "rate_limit": "rpcd.middleware.ratelimit:RateLimit",
    "tracing": "rpcd.middleware.tracing:Tracing",
}
"""Built-in interceptors by config name: C{module:factory}."""

Filter = Callable[[Any], Any]

TRACE_HEADERS = "rpcd.trace_headers"
"""The key in C{session.data} under which the HTTP server leaves a JSON-RPC
request's W3C trace context headers (C{traceparent}, C{tracestate})."""


class _Call:
    """What server and client calls share (see the module docstring)."""

    side = ""

    method: str
    kind: str
    protocol: str
    peer: str
    metadata: dict[str, Any]
    deadline: float | None
    value: Any
    clock: IReactorTime
    data: dict[str, Any]
    started: float
    received_filters: list[Filter]
    sent_filters: list[Filter]

    def time_remaining(self) -> float | None:
        """
        @return: seconds left before the deadline (never negative), or None.
        """
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.clock.seconds())

    def elapsed(self) -> float:
        """
        @return: seconds since the call entered the chain.
        """
        return self.clock.seconds() - self.started

    def wrap_messages(self, received: Filter | None = None, sent: Filter | None = None) -> None:
        """
        Filter a stream's messages (ignored for unary calls).

        @param received: called with each message received; returns the
            message to pass on, or raises L{RPCError}.
        @param sent: the same for each message sent.
        """
        if received is not None:
            self.received_filters.append(received)
        if sent is not None:
            self.sent_filters.insert(0, sent)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.kind} {self.protocol} {self.peer}>"


class ServerCall(_Call):
    """
    One call as the server's interceptors see it.

    @ivar session: the connection's L{rpcd.core.session.Session}.
    @ivar known: whether the server has the method.
    """

    side = "server"
    _step: Any = None
    """The dispatcher's state for its innermost step."""

    def __init__(self, session: Session, method: str, kind: str, value: Any,
                 metadata: dict[str, Any] | None, deadline: float | None,
                 clock: IReactorTime, known: bool = True) -> None:
        self.session = session
        self.method = method
        self.kind = kind
        self.protocol = session.protocol
        self.peer = session.peer
        self.value = value
        self.metadata = dict(metadata) if metadata else {}
        self.deadline = deadline
        self.clock = clock
        self.known = known
        self.data = {}
        self.started = clock.seconds()
        self.received_filters = []
        self.sent_filters = []

    @property
    def peer_host(self) -> str:
        """
        @return: the peer's host alone.
        """
        return self.session.peer_host

    @property
    def user(self) -> str | None:
        """
        @return: the logged-in user of the connection, or None.
        """
        return self.session.user

    @property
    def tls_identity(self) -> Any:
        """
        @return: the peer's verified certificate identity, or None.
        """
        return self.session.tls_identity


class ClientCall(_Call):
    """
    One call as the client's interceptors see it.

    @ivar timeout: seconds the call may take, or None; an interceptor may
        shorten it before proceeding.
    """

    side = "client"

    def __init__(self, method: str, kind: str, value: Any, metadata: dict[str, Any] | None,
                 timeout: float | None, clock: IReactorTime, protocol: str, peer: str) -> None:
        self.method = method
        self.kind = kind
        self.value = value
        self.metadata = dict(metadata) if metadata else {}
        self.clock = clock
        self.protocol = protocol
        self.peer = peer
        self.data = {}
        self.started = clock.seconds()
        self.timeout = timeout
        self.received_filters = []
        self.sent_filters = []
        self.user = None
        self.tls_identity = None

    @property
    def deadline(self) -> float | None:  # type: ignore[override]
        """
        @return: the clock time by which the call must end, or None.
        """
        return None if self.timeout is None else self.started + self.timeout


_PLAIN = frozenset({int, str, float, bool, bytes, type(None), list, dict, tuple})


def as_deferred(result: Any) -> Deferred[Any]:
    """
    @param result: a value, a Deferred or a coroutine.
    @return: a Deferred of it.
    """
    kind = type(result)
    if kind is Deferred:
        return result
    if kind in _PLAIN:
        return succeed(result)
    if isinstance(result, Deferred):
        return result
    if isinstance(result, Coroutine):
        return Deferred.fromCoroutine(result)
    return succeed(result)


def run_chain(interceptors: Sequence[Any], call: _Call,
              final: Callable[[Any], Any]) -> Deferred[Any]:
    """
    Run a call through a chain of interceptors.

    @param interceptors: in order, the first outermost.
    @param call: the call.
    @param final: the innermost step, C{final(call)}: runs the handler (or
        the wire call); returns a value, a Deferred or a coroutine, or
        raises.
    @return: a Deferred firing with the outermost interceptor's result or
        failing with its error (a non-L{RPCError} error is passed on as
        it is; the dispatcher maps it).
    """
    n = len(interceptors)

    def at(i: int, current: Any) -> Deferred[Any]:
        try:
            if i == n:
                return as_deferred(final(current))
            return as_deferred(interceptors[i].intercept(current, lambda c: at(i + 1, c)))
        except BaseException:
            return fail(Failure())
    return at(0, call)


def settled(d: Deferred[Any]) -> Any:
    """
    The result of a Deferred that has fired already, else the Deferred.

    @param d: a Deferred.
    @return: its result, or C{d} while it is pending.
    @raise Exception: its error, when it failed already.
    """
    # Fired and not waiting on another Deferred: every callback has run and
    # the result is final.
    if d.called and not d.paused:
        result = d.result
        if isinstance(result, Failure):
            d.addErrback(lambda f: None)  # handled: raised here
            error = result.value
            assert error is not None
            raise error
        return result
    return d


def filter_messages(filters: Sequence[Filter]) -> Filter:
    """
    @param filters: message filters, in the order they run.
    @return: one filter running them all.
    """
    if len(filters) == 1:
        return filters[0]

    def run(message: Any) -> Any:
        for f in filters:
            message = f(message)
        return message
    return run


class FilteredMessages:
    """
    An async iterator of messages passed through filters (the server's
    L{rpcd.server.streams.StreamMessages}, as the handler sees it).
    """

    def __init__(self, messages: Any, received: Filter) -> None:
        self._messages = messages
        self._received = received

    def __aiter__(self) -> FilteredMessages:
        return self

    def __anext__(self) -> Deferred[Any]:
        return as_deferred(self._messages.__anext__()).addCallback(self._received)


def client_call(interceptors: Sequence[Any], clock: IReactorTime, protocol: str, peer: str,
                method: str, value: Any, timeout: float | None, metadata: dict[str, Any] | None,
                send: Callable[[str, Any, float | None, dict[str, Any] | None], Deferred[Any]]
                ) -> Deferred[Any]:
    """
    A unary call through the client's interceptors.

    @param interceptors: the chain.
    @param clock: the reactor.
    @param protocol: the codec's name.
    @param peer: the endpoint (or C{"balanced"}).
    @param method: C{Service.Method}.
    @param value: the argument.
    @param timeout: seconds, or None.
    @param metadata: the caller's metadata.
    @param send: makes the call on the wire: C{send(method, value,
        timeout, metadata)}.
    @return: a Deferred firing with the result or failing with the error.
        Cancelling it cancels the chain's pending step (the call on the
        wire, when it is running).
    """
    call = ClientCall(method, "unary", value, metadata, timeout, clock, protocol, peer)
    return run_chain(interceptors, call,
                     lambda c: send(c.method, c.value, c.timeout, c.metadata or None))


def client_stream(interceptors: Sequence[Any], clock: IReactorTime, protocol: str, peer: str,
                  method: str, value: Any, timeout: float | None,
                  metadata: dict[str, Any] | None,
                  open_stream: Callable[[str, Any, float | None, dict[str, Any] | None], Any]
                  ) -> Any:
    """
    Open a stream through the client's interceptors.

    The chain runs at once: each interceptor must call C{proceed} before it
    first waits (an C{async def} one awaiting C{proceed(call)} does), since
    the stream is handed back synchronously.  C{proceed} fires with the
    stream's final value (its C{result()}).  C{call.kind} is C{"stream"}
    (a client does not know which kind the server's method is).

    @param open_stream: opens it: C{open_stream(method, value, timeout,
        metadata)} returns the stream object.
    @return: the stream (wrapped when interceptors filter its messages).
    @raise RPCError: an interceptor refused the stream.
    """
    call = ClientCall(method, "stream", value, metadata, timeout, clock, protocol, peer)
    opened: list[Any] = []

    def final(c: ClientCall) -> Deferred[Any]:
        stream = open_stream(c.method, c.value, c.timeout, c.metadata or None)
        if c.received_filters or c.sent_filters:
            stream = FilteredStream(stream, c.received_filters, c.sent_filters)
        opened.append(stream)
        return stream.result()

    d = run_chain(interceptors, call, final)
    if not opened:
        outcome = settled(d)
        if isinstance(outcome, Deferred):
            outcome.cancel()
            outcome.addErrback(lambda f: None)
            raise RPCError(f"{method}: an interceptor waited before opening the stream; "
                           "client stream interceptors must call proceed() at once")
        raise RPCError(f"{method}: an interceptor answered a stream without opening it")
    d.addErrback(lambda f: None)  # the stream's own result() reports it
    return opened[0]


class FilteredStream:
    """
    A client stream whose messages pass through interceptors' filters;
    everything else is the stream's own.
    """

    def __init__(self, stream: Any, received: Sequence[Filter], sent: Sequence[Filter]) -> None:
        self._stream = stream
        self._received = filter_messages(received) if received else None
        self._sent = filter_messages(sent) if sent else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __aiter__(self) -> FilteredStream:
        return self

    def __anext__(self) -> Deferred[Any]:
        d = as_deferred(self._stream.__anext__())
        if self._received is not None:
            d.addCallback(self._received)
        return d

    def send(self, value: Any) -> Deferred[None]:
        """
        Send one message, through the filters.

        @return: as the stream's C{send}; fails with the filter's error.
        """
        if self._sent is not None:
            try:
                value = self._sent(value)
            except Exception:
                return fail(Failure())
        return self._stream.send(value)


def load(spec: str, options: dict[str, Any] | None = None, clock: Any = None) -> Any:
    """
    Build one interceptor from its config.

    @param spec: a built-in's name (L{BUILTINS}) or C{package.module:factory}.
    @param options: keyword arguments for the factory.
    @param clock: the reactor, passed as C{clock=} to factories accepting it.
    @return: the interceptor.
    @raise ValueError: the name is unknown, the factory cannot be imported,
        or it rejected the options (the message says which).
    """
    path = BUILTINS.get(spec, spec)
    if ":" not in path:
        raise ValueError(f"unknown interceptor {spec!r}: use a built-in "
                         f"({', '.join(sorted(BUILTINS))}) or 'package.module:factory'")
    try:
        factory: Any = load_object(path)
    except ValueError as e:
        raise ValueError(f"cannot load interceptor {spec!r}: {e}") from None
    kwargs = dict(options or {})
    if clock is not None and "clock" not in kwargs:
        try:
            accepts = "clock" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            accepts = False
        if accepts:
            kwargs["clock"] = clock
    try:
        made = factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"interceptor {spec!r}: {e}") from None
    if not callable(getattr(made, "intercept", None)):
        raise ValueError(f"interceptor {spec!r}: {path} made {made!r}, which has no intercept(call, proceed)")
    return made


def load_all(configs: Iterable[Any], clock: Any = None) -> tuple[Any, ...]:
    """
    Build the interceptors of a config.

    @param configs: L{rpcd.daemon.config.InterceptorConfig}s, in chain order.
    @param clock: the reactor.
    @return: the interceptors.
    @raise ValueError: as L{load}, with the entry's index.
    """
    made = []
    for i, entry in enumerate(configs):
        try:
            made.append(load(entry.use, dict(entry.options), clock))
        except ValueError as e:
            raise ValueError(f"interceptors[{i}]: {e}") from None
    return tuple(made)


__all__ = ["ServerCall", "ClientCall", "run_chain", "settled", "load", "load_all", "BUILTINS",
           "RPCError"]
