"""
The client library: connect to an rpcd (or Go net/rpc) server from an
endpoint string and call methods.

With a reactor running::

    client = await connect("tcp:127.0.0.1:1234")
    product = await client.call("Arith.Multiply", {"A": 7, "B": 8}, timeout=5)
    product = await client.Arith.Multiply(A=7, B=8)      # the same call
    await client.close()

In a script or REPL without a reactor, L{BlockingClient} blocks (doing its
own socket IO for the native codec over tcp: and unix:, else running the
reactor in a background thread)::

    with BlockingClient("tcp:127.0.0.1:1234") as client:
        print(client.Arith.Multiply(A=7, B=8))
"""

from __future__ import annotations

import threading
from _thread import allocate_lock as _allocate_lock
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.core.context import current_deadline, shorten
from rpcd.core.interfaces import ICaller
from rpcd.core.loader import load_object
from rpcd.errors import NotRun, Unavailable
from rpcd.client.blocking import AVAILABLE as DIRECT_AVAILABLE
from rpcd.client.blocking import DirectClient
from rpcd.client.plainsocket import direct_address
from rpcd.client.channel import ClientChannel, PendingCall, when_fired
from rpcd.wire.fields import check_timeout

if TYPE_CHECKING:
    from twisted.internet.interfaces import IProtocol, IStreamClientEndpoint

    from rpcd.client.streams import ClientStream

# Codec name -> "module:Class" of its ClientChannel, built as Class(clock).
CLIENT_CODECS: dict[str, str] = {
    "native": "rpcd.client.native:NativeClientProtocol",
    "gob": "rpcd.client.gobclient:GobClientChannel",
    "gob-http": "rpcd.client.gobclient:GobHTTPClientChannel",
    "jsonrpc": "rpcd.client.jsonclient:JSONRPCClientChannel",
    "jsonrpc2": "rpcd.client.jsonclient:JSONRPC2ClientChannel",
    "grpc": "rpcd.client.grpc:GRPCClientChannel",
}


def codec_class(codec: str) -> type[ClientChannel]:
    """
    The client channel class of a codec, imported on first use.

    @param codec: a key of L{CLIENT_CODECS}.
    @return: its L{ClientChannel} subclass.
    @raise ValueError: an unknown codec, naming the known ones.
    """
    try:
        path = CLIENT_CODECS[codec]
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; choose from {', '.join(sorted(CLIENT_CODECS))}") from None
    return cast("type[ClientChannel]", load_object(path))


def reactor_or_global(reactor: Any) -> Any:
    """
    @param reactor: the reactor a caller passed, or C{None}.
    @return: that reactor, or the global one when it is C{None}.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor
        return global_reactor
    return reactor


def client_from_string(reactor: Any, description: str) -> IStreamClientEndpoint:
    """
    C{clientFromString}, with C{tls:} strings parsed by rpcd's C{rpcd-tls:}
    client parser: the same syntax and options as Twisted's, plus a TLS 1.2
    floor and the verification watch that lets a failed handshake say
    exactly what was wrong with the server's certificate (see
    L{rpcd.tls.endpoints}).

    @param reactor: the reactor.
    @param description: a Twisted client endpoint string.
    @return: the endpoint.
    @raise ValueError: a bad description.
    @raise OSError: a certificate or key file could not be read.
    """
    if description.startswith("tls:"):
        description = "rpcd-tls:" + description[len("tls:"):]
    return clientFromString(reactor, description)


def parse_endpoint(endpoint: Any, parse: Callable[[Any, str], Any], reactor: Any) -> Any:
    """
    An endpoint object from an endpoint string (or the object itself).

    @param endpoint: an endpoint string or object.
    @param parse: L{client_from_string} or C{serverFromString}.
    @param reactor: the reactor.
    @return: the endpoint object.
    @raise ValueError: the string does not parse; the message names it.
    """
    if not isinstance(endpoint, str):
        return endpoint
    try:
        return parse(reactor, endpoint)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"bad endpoint {endpoint!r}: {e}") from e


class _ChannelFactory(Factory):
    def __init__(self, make: Callable[[], ClientChannel]) -> None:
        self.make = make

    def buildProtocol(self, addr: Any) -> ClientChannel:
        return self.make()


def connect(endpoint: str | IStreamClientEndpoint, *, codec: str = "native",
            reactor: Any = None, default_timeout: float | None = None,
            connect_timeout: float | None = 30.0, proto: Any = None,
            interceptors: Sequence[Any] = (),
            keepalive_interval: float | None = None,
            keepalive_timeout: float = 20.0,
            redial: bool = True) -> Deferred[Client]:
    """
    Connect to a server.

    @param endpoint: a Twisted client endpoint string (C{tcp:127.0.0.1:1234},
        C{unix:/run/rpcd.sock}, C{tls:host=localhost:port=1234:trustRoots=DIR})
        or an endpoint object.
    @param codec: the wire protocol: C{native} (rpcd's own), and where
        installed C{gob}, C{gob-http}, C{jsonrpc} (Go's net/rpc), C{jsonrpc2},
        C{grpc} (any gRPC server; see L{rpcd.client.grpc}).
    @param reactor: the reactor (the global one by default).
    @param default_timeout: a timeout applied to calls that give none.
    @param connect_timeout: seconds to wait for the connection and its
        handshake (TLS, the server's preface); None waits forever.
    @param proto: for codec C{grpc}: the server's C{.proto} file (a path, a
        list of paths, or a loaded L{rpcd.client.grpc_protos.ProtoSet}).
    @param interceptors: the client's interceptors, in chain order (see
        L{rpcd.core.interceptors}): objects with C{intercept(call, proceed)}.
    @param keepalive_interval: for codec C{native}: seconds the connection
        may be quiet before the client PINGs the server (None: never; the
        server refuses PINGs closer than its
        C{limits.keepalive_min_ping_interval}, 10 s by default).
    @param keepalive_timeout: seconds to wait for the answer before every
        call fails with L{rpcd.errors.Unavailable} and the connection drops.
    @param redial: when the server goes away gracefully (a native GOAWAY:
        it drains for a restart, or the connection reached its
        C{max_connection_age}), send new calls, and the calls it did not
        run, on a new connection to the same endpoint, without the caller
        seeing an error; False: they fail with L{rpcd.errors.NotRun}
        (L{rpcd.cluster.balancer} uses that to send them to another endpoint).
    @return: a Deferred firing with a L{Client} once the connection (and any
        handshake) is up; it fails with the endpoint's connection error,
        L{rpcd.errors.Unavailable} when C{connect_timeout} passes,
        C{ValueError} for a bad endpoint string, codec, timeout or C{proto},
        or C{TypeError} for a timeout that is not a number.
    """
    reactor = reactor_or_global(reactor)
    where = _endpoint_text(endpoint)
    try:
        check_timeout(default_timeout, "default_timeout")
        check_timeout(connect_timeout, "connect_timeout")
        cls = codec_class(codec)
        if keepalive_interval is not None and (
                codec != "native" or not keepalive_interval > 0 or not keepalive_timeout > 0):
            raise ValueError("keepalive_interval and keepalive_timeout are positive seconds, "
                             "for the native codec")
        client_endpoint: IStreamClientEndpoint = parse_endpoint(endpoint, client_from_string, reactor)
    except (TypeError, ValueError) as e:
        return fail(e)
    # A codec may prepare what all its connections share (gRPC: the .proto).
    prepare = getattr(cls, "prepare", None)
    if prepare is not None:
        made: Deferred[Callable[[], ClientChannel]] = prepare(reactor, proto=proto)
    elif proto is not None:
        return fail(ValueError(f"proto= is for the grpc codec, not {codec}"))
    else:
        made = succeed(lambda: cls(reactor))

    def dial(make: Callable[[], ClientChannel]) -> Deferred[ClientChannel]:
        connecting = client_endpoint.connect(_ChannelFactory(make))
        handshaken = connecting.addCallback(_handshake_done)
        if keepalive_interval is not None:
            handshaken.addCallback(_with_keepalive, keepalive_interval, keepalive_timeout)
        if connect_timeout is not None:
            handshaken.addTimeout(connect_timeout, reactor,
                                  _connect_timed_out(where, codec, connect_timeout))
        return handshaken

    def connected(channel: ClientChannel, make: Callable[[], ClientChannel]) -> Client:
        client = Client(channel, default_timeout=default_timeout, interceptors=interceptors,
                        codec=codec, peer=where)
        if redial:
            client.redial = lambda: dial(make)
        return client

    return made.addCallback(lambda make: dial(make).addCallback(connected, make))


def _handshake_done(protocol: IProtocol) -> Deferred[ClientChannel]:
    # The endpoint fires with the protocol _ChannelFactory built: a ClientChannel.
    return cast(ClientChannel, protocol).connected_d


def _with_keepalive(channel: Any, interval: float, timeout: float) -> Any:
    channel.start_keepalive(interval, timeout)
    return channel


def _connect_timed_out(where: str, codec: str, seconds: float) -> Callable[[Any, float], Any]:
    def timed_out(result: Any, timeout: float) -> Any:
        if isinstance(result, Failure) and result.check(CancelledError):
            return Failure(Unavailable(
                f"no {codec} connection to {where} within {seconds:g} s "
                "(is the server up, and does it speak this protocol?)"))
        return result
    return timed_out


log = Logger()

# How often one call is sent again on a new connection after a server that
# went away did not run it.
_REDIALS = 3


def _endpoint_text(endpoint: Any) -> str:
    return endpoint if isinstance(endpoint, str) else repr(endpoint)


class ServiceAttributes:
    """
    Attribute access builds service proxies, for anything with a C{call}
    method (L{Client}, L{BlockingClient}, L{rpcd.cluster.balancer.Balancer},
    L{rpcd.cluster.retry.RetryingClient}): C{x.Arith.Multiply(A=7, B=8)} is
    C{x.call("Arith.Multiply", {"A": 7, "B": 8})}.
    """

    call: Callable[..., Any]

    def __getattr__(self, service: str) -> ServiceProxy:
        if service.startswith("_"):
            raise AttributeError(service)
        return ServiceProxy(self.call, service)


@implementer(ICaller)
class Client(ServiceAttributes):
    """
    Calls over one connection; many may be in flight at once.

    Attribute access builds proxies: C{client.Arith.Multiply(A=7, B=8)} is
    C{client.call("Arith.Multiply", {"A": 7, "B": 8})}, and
    C{client.Cal.Square(12)} is C{client.call("Cal.Square", 12)}.
    """

    def __init__(self, channel: ClientChannel, default_timeout: float | None = None, *,
                 interceptors: Sequence[Any] = (), codec: str = "native",
                 peer: str = "") -> None:
        """
        @param channel: a connected L{ClientChannel}.
        @param default_timeout: applied to calls that give no timeout.
        @param interceptors: the client's interceptors, in chain order (see
            L{rpcd.core.interceptors}).
        @param codec: the wire protocol's name (for interceptors).
        @param peer: the endpoint (for interceptors).
        @raise TypeError: a default timeout that is not a number.
        @raise ValueError: a default timeout out of range (see
            L{rpcd.wire.fields.check_timeout}).
        """
        self.channel = channel
        self.default_timeout = check_timeout(default_timeout, "default_timeout")
        self.interceptors = tuple(interceptors)
        self.codec = codec
        self.peer = peer
        self._redial: Callable[[], Deferred[ClientChannel]] | None = None
        self._dialling: list[Deferred[ClientChannel]] | None = None

    def call(self, method: str, args: Any = None, *, timeout: float | None = None,
             metadata: dict[str, Any] | None = None) -> Deferred[Any]:
        """
        Call a remote method.

        @param method: C{Service.Method}.
        @param args: the argument value (a dict for a struct argument).
        @param timeout: seconds before the call fails with
            L{rpcd.errors.DeadlineExceeded} and is cancelled on the server.
        @param metadata: key/value metadata for the server.
        @return: a Deferred firing with the result, or failing with an
            L{rpcd.errors.RPCError} (remote error, timeout, lost connection).
            Cancelling it cancels the call on the server.  Made while a
            handler with a deadline runs, the timeout is at most what is left
            of that deadline (L{rpcd.core.context.shorten}).
        @raise TypeError: a method, timeout or metadata of the wrong type;
            nothing is sent and the connection is untouched.
        @raise ValueError: a timeout that is negative, not finite or over
            L{rpcd.wire.fields.MAX_TIMEOUT}, or metadata over its bounds;
            nothing is sent.
        """
        if timeout is None:
            timeout = self.default_timeout
        if current_deadline.get() is not None:
            timeout = shorten(timeout)
        if self.interceptors:
            from rpcd.core.interceptors import client_call
            return client_call(self.interceptors, self.channel.clock, self.codec, self.peer,
                               method, args, timeout, metadata, self._send)
        # The common case inline (what _send does, one frame fewer): no
        # interceptor, a connection not going away.  A call its server does
        # not run is sent again by _resend, which the channel calls.
        channel = self.channel
        if channel.going_away is None or self._redial is None:
            return channel.call(method, args, timeout, metadata)
        return self._call(method, args, timeout, metadata, _REDIALS)

    @property
    def redial(self) -> Callable[[], Deferred[ClientChannel]] | None:
        """
        How to dial the endpoint again (None: calls the server did not run
        fail with L{NotRun}).
        """
        return self._redial

    @redial.setter
    def redial(self, redial: Callable[[], Deferred[ClientChannel]] | None) -> None:
        self._redial = redial
        self.channel.resend = None if redial is None else self._resend

    def _send(self, method: str, args: Any, timeout: float | None,
              metadata: dict[str, Any] | None) -> Deferred[Any]:
        """
        Send a call on the current connection (through L{_call} when the
        client redials a server that goes away).
        """
        if self._redial is None or self.channel.going_away is None:
            return self.channel.call(method, args, timeout, metadata)
        return self._call(method, args, timeout, metadata, _REDIALS)

    def _call(self, method: str, args: Any, timeout: float | None,
              metadata: dict[str, Any] | None, tries: int) -> Deferred[Any]:
        """
        Call on the current connection, or on a new one when the server is
        going away; a call it did not run is sent again on a new one (up to
        C{tries} times), within the call's timeout.
        """
        channel = self.channel
        if channel.going_away is not None:
            return self._new_channel().addCallback(
                lambda _: self._call(method, args, timeout, metadata, tries))
        d = channel.call(method, args, timeout, metadata)
        if isinstance(d, PendingCall):
            d.tries = tries  # what _resend may use if this one is not run either
        return d

    def _resend(self, d: PendingCall, error: NotRun) -> None:
        """
        The channel's server went away without running call C{d}: send it
        again on a new connection with what is left of its timeout (up to
        L{_REDIALS} times), or fail it with C{error}.
        """
        method, args, metadata, deadline = d.request
        tries = getattr(d, "tries", _REDIALS)
        left = None
        if deadline is not None:
            left = deadline - self.channel.clock.seconds()
            if left <= 0:
                tries = 0
        if tries <= 0 or self._redial is None:
            d.errback(error)
            return
        d.move_to(self._call(method, args, left, metadata, tries - 1))

    def _new_channel(self) -> Deferred[ClientChannel]:
        """
        Dial the endpoint again (once for every caller waiting).

        @return: a Deferred firing with the new channel, now
            L{Client.channel}; it fails with L{rpcd.errors.Unavailable}
            naming why the old one was left and the dial's error.
        """
        d: Deferred[ClientChannel] = Deferred()
        if self._dialling is not None:
            self._dialling.append(d)
            return d
        waiting = self._dialling = [d]
        old = self.channel
        assert self._redial is not None
        why = old.going_away

        def done(result: Any) -> None:
            self._dialling = None
            if isinstance(result, Failure):
                result = Failure(Unavailable(f"{old.peer_name} went away ({why}) and "
                                             f"reconnecting failed: {result.getErrorMessage()}"))
            else:
                self.channel = result
                result.resend = self._resend if self._redial is not None else None
                log.info("reconnected to {peer} ({why})", peer=result.peer_name, why=why)
            for w in waiting:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)
        self._redial().addBoth(done)
        return d

    def stream(self, method: str, args: Any = None, *, timeout: float | None = None,
               metadata: dict[str, Any] | None = None,
               window: int | None = None) -> ClientStream:
        """
        Open a streaming call (native and grpc codecs); see
        L{rpcd.client.streams} and L{rpcd.client.grpc_streams}.

        @param method: C{Service.Method}.
        @param args: the request of a server-streaming method; None for
            client- and bidirectional-streaming methods.
        @param timeout: seconds the whole stream may take (the client's
            default timeout when None).
        @param metadata: key/value metadata for the server.
        @param window: messages the server may send ahead of the application.
        @return: a L{rpcd.client.streams.ClientStream}: C{async for} its
            messages, C{send}, C{close_send}, C{cancel}, C{result}.
        @raise ValueError: the connection does not speak the native protocol.
        """
        if timeout is None:
            timeout = self.default_timeout
        if current_deadline.get() is not None:
            timeout = shorten(timeout)
        if self.interceptors:
            from rpcd.core.interceptors import client_stream
            return client_stream(
                self.interceptors, self.channel.clock, self.codec, self.peer, method, args,
                timeout, metadata,
                lambda m, a, t, md: self._open_stream(m, a, t, md, window))
        return self._open_stream(method, args, timeout, metadata, window)

    def _open_stream(self, method: str, args: Any, timeout: float | None,
                     metadata: dict[str, Any] | None, window: int | None) -> ClientStream:
        from rpcd.client.streams import open_stream
        own = getattr(self.channel, "open_stream", None)
        if own is not None:
            return own(method, args, timeout=timeout, metadata=metadata,
                       window=window)
        return open_stream(self.channel, method, args, timeout=timeout,  # type: ignore[arg-type]
                           metadata=metadata, window=window)

    def close(self) -> Deferred[None]:
        """
        Close the connection; pending calls fail with
        L{rpcd.errors.ConnectionLost}.

        @return: a Deferred firing once closed.
        """
        streams = getattr(self.channel, "streams", None)
        if streams is not None:
            streams.unregister()
        return self.channel.close()

    @property
    def closed(self) -> Deferred[None]:
        """
        @return: a Deferred firing when the connection closes, for any reason.
        """
        return when_fired(self.channel.closed_d)


class ServiceProxy:
    """
    C{client.Service}: each attribute is a method of the service, called
    with keyword arguments through the C{call} it was given.
    """

    def __init__(self, call: Callable[..., Any], service: str) -> None:
        self._call = call
        self._service = service

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        name = f"{self._service}.{method}"
        call = self._call

        def remote(*args: Any, **kwargs: Any) -> Any:
            return call(name, _argument(name, args, kwargs))
        remote.__name__ = method
        remote.__qualname__ = name
        return remote


def _argument(name: str, args: tuple, kwargs: dict) -> Any:
    if args and kwargs:
        raise TypeError(f"{name}: pass one argument value or keyword arguments, not both")
    if kwargs:
        return kwargs
    if len(args) > 1:
        return list(args)
    return args[0] if args else None


class _ReactorThread:
    """The global reactor, run once in a daemon thread for blocking callers."""

    _lock = threading.Lock()
    _started = False

    @classmethod
    def ensure(cls) -> Any:
        from twisted.internet import reactor
        with cls._lock:
            if not cls._started and not reactor.running:
                thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                                          name="rpcd-reactor", daemon=True)
                thread.start()
                cls._started = True
        return reactor


class BlockingClient(ServiceAttributes):
    """
    A client for code that runs no reactor (scripts, REPLs, threads): every
    call blocks until it has an answer.

    For the native codec over C{tcp:} and C{unix:} endpoints, each call does
    its own socket IO in the calling thread (L{rpcd.client.blocking}): no
    reactor, no second thread; threads sharing one client share its
    connection, many calls in flight.  Other codecs and endpoints (C{tls:},
    gob, JSON-RPC, gRPC) run the global reactor in a background daemon
    thread, started on first use.  Use it as a context manager, or call
    L{close}.
    """

    def __init__(self, endpoint: str, *, codec: str = "native",
                 timeout: float | None = 30.0, proto: Any = None) -> None:
        """
        @param endpoint: a client endpoint string.
        @param codec: the wire protocol (see L{connect}).
        @param proto: the C{.proto} file(s) for codec C{grpc}.
        @param timeout: the default timeout per call, in seconds.
        @raise Exception: the connection error, raised from the constructor.
        """
        self._direct: DirectClient | None = None
        address = (direct_address(endpoint)
                   if codec == "native" and proto is None and DIRECT_AVAILABLE else None)
        if address is not None:
            self._direct = DirectClient(address, check_timeout(timeout, "default_timeout"))
            return
        from twisted.internet.threads import blockingCallFromThread
        self._blocking = blockingCallFromThread
        self._reactor = _ReactorThread.ensure()
        reactor = self._reactor
        # mypy infers no result type from blockingCallFromThread's parameter
        # (Callable[P, R] | Callable[P, Deferred[R]]) for a function returning
        # a Deferred: it solves R as Never.  The call is right at runtime.
        self._client: Client = self._blocking(
            reactor,
            lambda: connect(endpoint, codec=codec, reactor=reactor, default_timeout=timeout,
                            proto=proto),  # type: ignore[arg-type]
        )

    def call(self, method: str, args: Any = None, *, timeout: float | None = None,
             metadata: dict[str, Any] | None = None) -> Any:
        """
        Call a remote method and wait for the answer.

        @return: the result.
        @raise rpcd.errors.RPCError: the remote error, timeout or lost
            connection.
        """
        direct = self._direct
        if direct is not None:
            return direct.call(method, args, timeout, metadata)
        # blockingCallFromThread's work, lighter: no Queue (a lock is the
        # latch), no maybeDeferred, a Failure only for an error.
        latch = _allocate_lock()
        latch.acquire()
        box: list[Any] = []

        def done(result: Any) -> None:
            box.append(result)
            latch.release()

        def start() -> None:
            try:
                d = self._client.call(method, args, timeout=timeout, metadata=metadata)
            except BaseException:
                done(Failure())
            else:
                d.addBoth(done)

        self._reactor.callFromThread(start)
        latch.acquire()
        result = box[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result

    def close(self) -> None:
        """
        Close the connection; calls in flight fail with
        L{rpcd.errors.ConnectionLost}.
        """
        if self._direct is not None:
            self._direct.close()
            return
        # As in __init__: mypy cannot solve R for a function returning Deferred[None].
        self._blocking(self._reactor, self._client.close)  # type: ignore[arg-type]

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

# The old names, for code written before they were public.
_codec_class = codec_class
_reactor = reactor_or_global
_ServiceProxy = ServiceProxy
