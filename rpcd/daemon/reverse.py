"""
Reverse connections (seed 001, 4.3.3): the daemon dials out and serves its
services over the connections it made; the side it dials listens and calls.

The daemon's side is L{reverse_services}: one Twisted C{ClientService} per
configured connection, which keeps it up and reconnects with exponential
backoff and jitter.  The listening side is L{accept} (a client for every
daemon that dials in, the seed's C{clientChan}) and L{accept_one} (what
C{rpcd call --accept} uses)::

    listener = await accept("tcp:1234", reactor=reactor)
    async for client in listener:
        print(await client.call("Arith.Multiply", {"A": 7, "B": 8}))

Both sides take Twisted endpoint strings: the daemon a client string
(C{tcp:relay.example:1234}, or C{tls:host=relay.example:port=1234:
trustRoots=DIR:certificate=client.pem:privateKey=client.key}, which checks
the listener's name), the listener a server string (C{tcp:1234},
C{mtls:1234:certKey=...:privateKey=...:caCerts=ca.pem}).

The listening side has the daemon's own listener limits (L{Limits}): a
daemon dialling in must finish TLS and its protocol's handshake within
C{handshake_timeout}; C{max_connections} and C{max_connections_per_peer} cap
the connections open at once; and at most C{max_waiting} clients wait to be
taken -- beyond that, new connections are refused with a logged reason.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable, Iterable

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, DeferredQueue, fail, succeed
from twisted.internet.defer import TimeoutError as TwistedTimeoutError
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IHandshakeListener, INegotiated, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.client.client import Client, client_from_string, codec_class, parse_endpoint, reactor_or_global
from rpcd.daemon.config import ConfigError, ConnectConfig
from rpcd.server.limits import ConnectionCaps, Limits
from rpcd.core.session import describe_address
from rpcd.server.sniffer import SniffingProtocol
from rpcd.wire import sniff

if TYPE_CHECKING:
    from twisted.application.service import IService
    from twisted.internet.interfaces import IDelayedCall, IListeningPort, IStreamServerEndpoint

    from rpcd.server.factory import RPCServer, RPCServerFactory
    from rpcd.client.channel import ClientChannel

log = Logger()

#: Seconds before the first retry; each retry waits 1.5 times longer, up to
#: L{MAX_DELAY}, plus up to a second of random jitter.
INITIAL_DELAY = 1.0
MAX_DELAY = 60.0

#: What a reverse connection with no C{protocol} serves, told apart by the
#: caller's first bytes (each of them has the caller speak first).
DIALLED_PROTOCOLS = frozenset({sniff.NATIVE, sniff.GOB, sniff.JSON})

#: How many clients of daemons that dialled in may wait to be taken from a
#: L{ReverseListener} by default.
MAX_WAITING = 100


class _Backoff:
    """
    The retry policy of one reverse connection.

    C{ClientService} counts failed attempts only until a connection is made,
    but a connection the listener rejects during the TLS handshake is made
    and then lost at once; those count here too, until a connection is
    handed to its wire protocol.

    @ivar early_losses: connections lost before being handed over, in a row.
    """

    def __init__(self, policy: Callable[[int], float]) -> None:
        self.policy = policy
        self.early_losses = 0

    def __call__(self, attempt: int) -> float:
        return self.policy(max(attempt, self.early_losses))


class _DialledFactory(Factory):
    """
    Builds the server side for a connection the daemon dialled, and tells
    the backoff whether it got as far as the wire protocol.
    """

    def __init__(self, factory: RPCServerFactory, backoff: _Backoff, endpoint: str) -> None:
        self.factory = factory
        self.backoff = backoff
        self.endpoint = endpoint

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = self.factory.buildProtocol(addr)
        # A dialled factory skips the connection caps: it never builds a _Refused.
        assert isinstance(protocol, SniffingProtocol)
        protocol.when_ready().addCallbacks(self._ready, self._lost_early,
                                           callbackArgs=(protocol,))
        return protocol

    def _ready(self, inner: Protocol, protocol: Any) -> None:
        self.backoff.early_losses = 0
        log.info("reverse connection to {endpoint} is up ({peer}); serving over it",
                 endpoint=self.endpoint, peer=protocol.peer)

    def _lost_early(self, failure: Failure) -> None:
        self.backoff.early_losses += 1


def reverse_services(connects: Iterable[ConnectConfig], server: RPCServer, reactor: Any, *,
                     retry_policy: Callable[[int], float] | None = None) -> list[IService]:
    """
    The services that keep a daemon's reverse connections up.

    @param connects: the config's C{server.connect} entries.
    @param server: the daemon's shared state; each connection is served by
        C{server.factory(frozenset({protocol}), dialled=True)}, or, with
        no C{protocol}, L{DIALLED_PROTOCOLS} told apart by the caller's
        first bytes.
    @param reactor: to dial with and for the retry timers.
    @param retry_policy: maps the number of failed attempts in a row to the
        seconds to wait; exponential backoff from L{INITIAL_DELAY} to
        L{MAX_DELAY} with up to a second of jitter by default.
    @return: one C{ClientService} per connection to keep up (an entry with
        C{connections = N} gives N), not started.
    @raise ConfigError: an endpoint string cannot be parsed.
    """
    services: list[IService] = []
    for index, item in enumerate(connects):
        try:
            endpoint = client_from_string(reactor, item.endpoint)
        except Exception as e:
            raise ConfigError(f"server.connect[{index}]: bad client endpoint "
                              f"{item.endpoint!r}: {e}") from None
        factory = server.factory(frozenset({item.protocol}) if item.protocol else DIALLED_PROTOCOLS,
                                 dialled=True)
        for _ in range(item.connections):
            backoff = _Backoff(retry_policy or backoffPolicy(
                INITIAL_DELAY, MAX_DELAY, 1.5, random.random))
            services.append(ClientService(
                endpoint, _DialledFactory(factory, backoff, item.endpoint),
                retryPolicy=backoff, clock=reactor))
    return services


class ReverseListener:
    """
    Listens for daemons that dial in, and gives a L{Client} for each one.

    Iterate with C{async for client in listener}, or call L{next_client}.

    @ivar port: the listening port.
    @ivar clients: the clients not taken yet.
    """

    def __init__(self, port: IListeningPort, clients: DeferredQueue[Client]) -> None:
        self.port = port
        self.clients = clients

    def next_client(self) -> Deferred[Client]:
        """
        @return: a Deferred firing with the client for the next daemon that
            dials in (or one that did and was not taken yet).
        """
        return self.clients.get()

    def __aiter__(self) -> ReverseListener:
        return self

    def __anext__(self) -> Deferred[Client]:
        return self.next_client()

    def close(self) -> Deferred[None]:
        """
        Stop listening; connections already made stay open.

        @return: a Deferred firing once the port is closed.
        """
        stopped = self.port.stopListening()
        # IListeningPort allows None; a port that stops at once may give it.
        return stopped if stopped is not None else succeed(None)


def _channel_with_handshake(codec: str) -> type:
    base = codec_class(codec)
    cached = _HANDSHAKE_CLASSES.get(base)
    if cached is None:
        @implementer(IHandshakeListener)
        class Channel(base):  # type: ignore[valid-type, misc]
            handshake_done: Deferred[None]

            def handshakeCompleted(self) -> None:
                if not self.handshake_done.called:
                    self.handshake_done.callback(None)

        Channel.__name__ = Channel.__qualname__ = f"Reverse{base.__name__}"
        _HANDSHAKE_CLASSES[base] = cached = Channel
    return cached


_HANDSHAKE_CLASSES: dict[type[ClientChannel], type] = {}


class _Refused(Protocol):
    """
    What a refused connection gets: closed as soon as it is made (Twisted's
    TLS wrapper needs a protocol to wrap, so the factory cannot give None).
    """

    transport: ITCPTransport

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class _AcceptFactory(Factory):
    """
    Builds a client channel for each daemon that dials in, within the
    limits: a handshake deadline, the connection caps and a bounded queue
    of clients not taken yet.

    @ivar caps: the connections open now (handshaking, waiting and taken).
    @ivar max_waiting: the most clients that wait in C{clients}.
    """

    def __init__(self, codec: str, reactor: Any, clients: DeferredQueue[Client], *,
                 limits: Limits | None = None, max_waiting: int = MAX_WAITING) -> None:
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be at least 1, not {max_waiting!r}")
        self.cls = _channel_with_handshake(codec)
        self.reactor = reactor
        self.clients = clients
        self.limits = limits or Limits()
        self.caps = ConnectionCaps(self.limits, reactor)
        self.max_waiting = max_waiting

    def buildProtocol(self, addr: Any) -> Protocol:
        peer, host = describe_address(addr)
        why = self.caps.admit(host)
        if why is None and len(self.clients.pending) >= self.max_waiting:
            why = self._queue_full()
        if why is not None:
            self.caps.note_refusal(peer, why)
            return _Refused()
        self.caps.opened(host)
        channel = self.cls(self.reactor)
        channel.handshake_done = Deferred()
        channel.connected_d.addCallback(self._connected)
        channel.connected_d.addErrback(self._failed, channel)
        timeout = self.limits.handshake_timeout
        timer: IDelayedCall | None = None
        if timeout > 0:
            timer = self.reactor.callLater(timeout, self._too_slow, channel, peer, timeout)
        channel.arrival_timer = timer
        channel.closed_d.addCallback(self._closed, channel, host)
        return channel

    def _queue_full(self) -> str:
        return (f"{len(self.clients.pending)} daemons that dialled in wait to be "
                f"taken, the limit (max_waiting = {self.max_waiting})")

    def _too_slow(self, channel: Any, peer: str, timeout: float) -> None:
        channel.arrival_timer = None
        log.warn("closing the connection from a daemon dialling in from {peer}: it did not "
                 "finish its handshake within {timeout:g} s (limits.handshake_timeout)",
                 peer=peer, timeout=timeout)
        if channel.transport is not None:
            channel.transport.abortConnection()

    def _stop_timer(self, channel: Any) -> None:
        timer, channel.arrival_timer = channel.arrival_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _closed(self, _: None, channel: Any, host: str) -> None:
        self._stop_timer(channel)
        self.caps.closed(host)
        client = getattr(channel, "client", None)
        if client is not None and client in self.clients.pending:
            # Nobody will want a dead connection: it leaves the queue.
            self.clients.pending.remove(client)

    def _connected(self, channel: Any) -> Deferred[None] | None:
        if INegotiated.providedBy(channel.transport):
            waiting = channel.handshake_done
            channel.closed_d.addCallback(lambda _: waiting.called or waiting.errback(
                channel.lost_reason or Failure(ConnectionError("closed"))))
            waiting.addCallback(lambda _: self._arrived(channel))
            waiting.addErrback(self._failed, channel)
            return None
        self._arrived(channel)
        return None

    def _arrived(self, channel: Any) -> None:
        self._stop_timer(channel)
        if channel.lost_reason is not None:
            return
        if len(self.clients.pending) >= self.max_waiting:
            why = self._queue_full()
            log.warn("closing the connection from a daemon dialling in from {peer}: {why}",
                     peer=channel.peer_name, why=why)
            channel.transport.abortConnection()
            return
        log.info("a daemon dialled in from {peer}", peer=channel.peer_name)
        channel.client = Client(channel)
        self.clients.put(channel.client)

    def _failed(self, failure: Failure, channel: Any) -> None:
        from rpcd.tls.tlsinfo import describe_tls_failure
        if INegotiated.providedBy(channel.transport):
            why = describe_tls_failure(failure, side="server", transport=channel.transport)
            log.warn("TLS with a daemon dialling in from {peer} failed: {why}",
                     peer=channel.peer_name, why=why)


def accept(endpoint: str | IStreamServerEndpoint, *, codec: str = "native",
           reactor: Any = None, limits: Limits | None = None,
           max_waiting: int = MAX_WAITING) -> Deferred[ReverseListener]:
    """
    Listen for daemons that dial in (their C{server.connect}), and make a
    client for each.

    @param endpoint: a Twisted server endpoint string (C{tcp:1234},
        C{mtls:1234:certKey=...:privateKey=...:caCerts=...}) or an endpoint.
    @param codec: the wire protocol the daemons speak (their C{protocol}).
    @param reactor: the reactor (the global one by default).
    @param limits: the daemon's listener limits that apply here:
        C{handshake_timeout} (seconds a daemon dialling in has to finish TLS
        and its protocol's handshake; 0 disables), C{max_connections} and
        C{max_connections_per_peer} (connections open at once, waiting or
        taken, in total and per host); C{Limits()}'s by default.
    @param max_waiting: the most clients that wait to be taken; a daemon
        that dials in beyond that is refused, with a logged reason (it
        retries with its backoff).
    @return: a Deferred firing with a L{ReverseListener} once listening; it
        fails with the endpoint's error (C{CannotListenError}), or
        C{ValueError} for a bad endpoint string, codec or C{max_waiting}.
    """
    reactor = reactor_or_global(reactor)
    try:
        codec_class(codec)
        server_endpoint: IStreamServerEndpoint = parse_endpoint(endpoint, serverFromString, reactor)
        clients: DeferredQueue[Client] = DeferredQueue()
        factory = _AcceptFactory(codec, reactor, clients, limits=limits, max_waiting=max_waiting)
    except ValueError as e:
        return fail(e)
    listening = server_endpoint.listen(factory)
    return listening.addCallback(ReverseListener, clients)


def accept_one(endpoint: str | IStreamServerEndpoint, *, codec: str = "native",
               reactor: Any = None, timeout: float | None = None) -> Deferred[Client]:
    """
    Wait for one daemon to dial in, then stop listening.

    @param endpoint: see L{accept}.
    @param codec: see L{accept}.
    @param reactor: the reactor (the global one by default).
    @param timeout: seconds to wait for a daemon, or None for ever.
    @return: a Deferred firing with the L{Client} for the first daemon that
        dials in; it fails as L{accept} does, or with
        the built-in C{TimeoutError} when no daemon dialled in in time.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor
        reactor = global_reactor

    async def wait() -> Client:
        listener = await accept(endpoint, codec=codec, reactor=reactor)
        try:
            waiting = listener.next_client()
            if timeout is not None:
                waiting.addTimeout(timeout, reactor)
            try:
                return await waiting
            except TwistedTimeoutError:
                raise TimeoutError(f"no daemon dialled in within {timeout:g} s") from None
        finally:
            await listener.close()

    return Deferred.fromCoroutine(wait())
