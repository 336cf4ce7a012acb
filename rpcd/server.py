"""
What every connection of a daemon shares, and the factory that gives each
new connection its wire protocol.

A listening endpoint serves every protocol rpcd speaks, told apart by the
first bytes (L{rpcd.wire.sniff}), unless the config pins it to some.

The L{Limits} against abuse are applied here, the same for every wire
protocol:

  - B{connection caps}, in total and per peer host, checked in
    L{RPCServerFactory.buildProtocol} before anything is built for the
    connection;
  - B{the handshake timeout}: a new connection must finish TLS, show which
    protocol it speaks and finish that protocol's preamble (an HTTP head; see
    L{RPCServer.preamble_done}) within C{handshake_timeout} seconds in all,
    however slowly it dribbles its bytes;
  - B{the idle timeout}: a connection with no traffic and no running calls
    for C{idle_timeout} seconds is closed;
  - B{the write buffer cap}: while more than C{write_buffer_bytes} wait to be
    sent to a peer that does not read them, the connection stops reading
    that peer's requests (a Twisted push producer registered with the
    transport), and reads again once the buffer has drained.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, INegotiated, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.session import Session, describe_address
from rpcd.tlsinfo import peer_identity
from rpcd.wire import sniff
from rpcd.wire.sockopts import set_no_delay

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport

    from rpcd.service import ServiceRegistry

log = Logger()


@dataclasses.dataclass(frozen=True)
class Limits:
    """
    Limits against abuse; every one is configurable in C{[limits]}.

    @ivar max_frame_bytes: the largest frame (native), message (gob), JSON
        value or HTTP body accepted.
    @ivar max_calls_per_connection: handlers running at once on one
        connection; more calls fail with RESOURCE_EXHAUSTED.
    @ivar handshake_timeout: seconds a new connection has to finish TLS,
        identify its protocol and finish any preamble (an HTTP head), in all
        (0 disables).
    @ivar idle_timeout: seconds without traffic or running calls before a
        connection is closed (0 disables).
    @ivar max_connections: connections open at once, in total.
    @ivar max_connections_per_peer: connections open at once from one host
        (Unix socket peers count only against C{max_connections}).
    @ivar write_buffer_bytes: bytes queued for a peer that does not read
        before rpcd stops reading its requests.
    """

    max_frame_bytes: int = 4 * 1024 * 1024
    max_calls_per_connection: int = 1000
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    max_connections: int = 10000
    max_connections_per_peer: int = 1000
    write_buffer_bytes: int = 4 * 1024 * 1024


# Wire protocol name -> "module:Class" of its server protocol, built as
# Class(server).  Imported on first use so a daemon pays only for what it serves.
#
# What the sniffer asks of such a class (all optional):
#   has_preamble = True   the handshake timeout keeps running after the
#                         hand-over until the protocol calls
#                         server.preamble_done(self) (an HTTP head);
#   dispatcher            a Dispatcher: running handlers keep the connection
#                         from being idle;
#   busy()                true while the protocol has work in progress (open
#                         streams...), which also keeps it from being idle.
SERVER_PROTOCOLS: dict[str, str] = {
    sniff.NATIVE: "rpcd.wire.native:NativeServerProtocol",
    sniff.JSON: "rpcd.wire.jsonserver:JSONServerProtocol",
    sniff.HTTP: "rpcd.wire.httpserver:HTTPServerProtocol",
    sniff.GOB: "rpcd.wire.gobserver:GobServerProtocol",
}

# The first bytes of a TLS handshake record: content type 22, major version 3.
_TLS_RECORD = b"\x16\x03"
_NOT_TLS_ANSWER = b"rpcd: this endpoint does not speak TLS\r\n"


def _protocol_class(name: str) -> Callable[[RPCServer], Protocol] | None:
    path = SERVER_PROTOCOLS.get(name)
    if path is None:
        return None
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


class RPCServer:
    """
    The state a daemon's connections share.

    @ivar registry: the services.
    @ivar clock: the reactor's clock.
    @ivar limits: the L{Limits}.
    @ivar authenticator: checks logins, or None when there are no users.
    @ivar connections: connections open now (accepted and dialled).
    @ivar connections_by_host: accepted connections open now, by peer host.
    @ivar refused: connections refused by the caps since start.
    """

    def __init__(self, registry: ServiceRegistry, clock: IReactorTime,
                 limits: Limits = Limits(), authenticator: Any = None) -> None:
        self.registry = registry
        self.clock = clock
        self.limits = limits
        self.authenticator = authenticator
        self.connections = 0
        self.connections_by_host: dict[str, int] = {}
        self.refused = 0
        self._preambles: dict[Protocol, SniffingProtocol] = {}
        self._refusal_logged_at: float | None = None
        self._refusals_unlogged = 0

    def new_session(self, transport: ITransport, protocol_name: str) -> Session:
        """
        Make the session for a new connection.

        @param transport: the connection's transport.
        @param protocol_name: the wire protocol it speaks.
        @return: a fresh L{Session}.
        """
        peer, host = describe_address(transport.getPeer())
        identity = peer_identity(transport)
        return Session(self.registry, peer, host, self.authenticator, identity, protocol_name)

    def factory(self, protocols: frozenset[str] = sniff.ALL, *,
                dialled: bool = False) -> RPCServerFactory:
        """
        A factory for one listening endpoint, or for connections the daemon
        dials (reverse connections).

        @param protocols: the wire protocols this endpoint accepts.
        @param dialled: the connections are ones the daemon made: they are
            not subject to the connection caps nor the idle timeout, and
            their TLS failures are described from the client's side.
        @return: the factory.
        """
        return RPCServerFactory(self, protocols, dialled=dialled)

    def admit(self, host: str) -> str | None:
        """
        Decide whether a new connection from a host may open, by the caps.

        @param host: the peer's host (C{"unix"} for a Unix socket peer).
        @return: None to admit it, or why it is refused.
        """
        limits = self.limits
        if self.connections >= limits.max_connections:
            return (f"{self.connections} connections are open, the limit "
                    f"(limits.max_connections = {limits.max_connections})")
        if host != "unix":
            count = self.connections_by_host.get(host, 0)
            if count >= limits.max_connections_per_peer:
                return (f"{count} connections from {host} are open, the limit "
                        f"(limits.max_connections_per_peer = {limits.max_connections_per_peer})")
        return None

    def opened(self, host: str | None) -> None:
        """
        Count a connection that opened.

        @param host: the peer host it counts against, or None (dialled).
        """
        self.connections += 1
        if host is not None:
            by_host = self.connections_by_host
            by_host[host] = by_host.get(host, 0) + 1

    def closed(self, host: str | None) -> None:
        """
        Count a connection that closed.

        @param host: what was given to L{opened}.
        """
        self.connections -= 1
        if host is not None:
            by_host = self.connections_by_host
            left = by_host.get(host, 0) - 1
            if left > 0:
                by_host[host] = left
            else:
                by_host.pop(host, None)

    def note_refusal(self, peer: str, why: str) -> None:
        """
        Log a refused connection, at most one line a second so that a flood
        does not flood the log too.

        @param peer: the peer's address text.
        @param why: the reason from L{admit}.
        """
        self.refused += 1
        now = self.clock.seconds()
        if self._refusal_logged_at is not None and now - self._refusal_logged_at < 1.0:
            self._refusals_unlogged += 1
            return
        unlogged, self._refusals_unlogged = self._refusals_unlogged, 0
        self._refusal_logged_at = now
        if unlogged:
            log.warn("refusing connection from {peer}: {why} "
                     "({unlogged} more refused since the last such line)",
                     peer=peer, why=why, unlogged=unlogged)
        else:
            log.warn("refusing connection from {peer}: {why}", peer=peer, why=why)

    def expect_preamble(self, protocol: Protocol) -> None:
        """
        A wire protocol starts waiting for a preamble (another HTTP head on a
        kept-alive connection): it must end within C{handshake_timeout}
        seconds, or the connection is closed.

        @param protocol: the wire protocol, as built from L{SERVER_PROTOCOLS}.
        """
        sniffer = self._sniffer_of(protocol)
        if sniffer is not None:
            sniffer.start_deadline()

    def preamble_done(self, protocol: Protocol) -> None:
        """
        A wire protocol whose class sets C{has_preamble} (HTTP) says that its
        preamble (the request head) is complete: the handshake timeout stops.

        @param protocol: the wire protocol, as built from L{SERVER_PROTOCOLS}.
        """
        sniffer = self._sniffer_of(protocol)
        if sniffer is not None:
            sniffer.stop_deadline()

    def _sniffer_of(self, protocol: Protocol) -> SniffingProtocol | None:
        return self._preambles.get(protocol)


@implementer(IPushProducer)
class _ReadThrottle:
    """
    Stops reading a connection's requests while its transport's write buffer
    is over the cap (the transport calls L{pauseProducing}), and reads again
    once it has drained (L{resumeProducing}).

    @ivar paused: whether reading is stopped now.
    @ivar pauses: how many times reading was stopped.
    """

    def __init__(self, transport: Any, peer: str) -> None:
        self.transport = transport
        self.peer = peer
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        self.pauses += 1
        if self.pauses == 1:
            log.info("{peer} is not reading its replies: no more requests are read "
                     "from it until they drain (limits.write_buffer_bytes)", peer=self.peer)
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.paused = False


def _set_write_cap(transport: Any, limit: int) -> bool:
    """
    Make a socket transport ask its producer to pause once more than
    C{limit} bytes wait in its write buffer.

    Twisted pauses at C{bufferSize} bytes (64 KiB), which is also how much
    each read asks for; raising C{bufferSize} would make every C{recv}
    allocate C{limit} bytes.  So the check itself is replaced on this one
    transport (under TLS: the socket transport below it).

    @param transport: the protocol's transport.
    @param limit: the cap in bytes.
    @return: whether the transport is one whose check could be replaced
        (a Twisted C{FileDescriptor}); other transports keep their own
        threshold.
    """
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    if not callable(getattr(transport, "_isSendBufferFull", None)) or \
            not hasattr(transport, "dataBuffer") or not hasattr(transport, "_tempDataLen"):
        return False

    def is_full() -> bool:
        return (len(transport.dataBuffer) - transport.offset
                + transport._tempDataLen) > limit

    transport._isSendBufferFull = is_full
    return True


def _is_tls_error(error: BaseException) -> bool:
    from OpenSSL.SSL import Error
    from service_identity.exceptions import VerificationError
    return isinstance(error, (Error, VerificationError))


@implementer(IHandshakeListener)
class SniffingProtocol(Protocol):
    """
    Applies the per-connection limits, reads a connection's first bytes,
    then hands the connection to the protocol they belong to.

    After the hand-over, bytes go straight to that protocol (when an idle
    timeout is set, through one small method that notes the time).

    @ivar inner: the wire protocol, once chosen.
    @ivar peer: the peer's address text.
    @ivar throttle: the producer that stops reading when the peer does not
        read its replies, or None if the wire protocol registered its own.
    """

    def __init__(self, server: RPCServer, protocols: frozenset[str],
                 host: str | None = None, dialled: bool = False) -> None:
        """
        @param server: the shared state.
        @param protocols: the wire protocols this endpoint serves.
        @param host: the peer host this connection counts against in
            L{RPCServer.connections_by_host}, or None.
        @param dialled: the daemon made this connection (see
            L{RPCServer.factory}).
        """
        self.server = server
        self.protocols = protocols
        self.host = host
        self.dialled = dialled
        self.inner: Protocol | None = None
        self.peer = "?"
        self.throttle: _ReadThrottle | None = None
        self._buffer = b""
        self._deadline: IDelayedCall | None = None
        self._idle: IDelayedCall | None = None
        self._last_read = 0.0
        self._tls = False
        self._tls_done = False
        self._closing: str | None = None
        self._lost = False
        self._ready: list[Deferred[Protocol]] = []

    def when_ready(self) -> Deferred[Protocol]:
        """
        @return: a Deferred firing with the wire protocol once the connection
            is handed over to it (after any TLS handshake), or failing with
            the reason the connection was lost first.
        """
        d: Deferred[Protocol] = Deferred()
        if self.inner is not None:
            d.callback(self.inner)
        else:
            self._ready.append(d)
        return d

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        self.peer = describe_address(self.transport.getPeer())[0]
        self.server.opened(self.host)
        self.start_deadline()
        self._tls = INegotiated.providedBy(self.transport)
        if not self._tls and len(self.protocols) == 1:
            self._hand_over(next(iter(self.protocols)))

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done: a pinned endpoint hands over now, so that
        a protocol that speaks first (native) may do so.
        """
        self._tls_done = True
        if self.inner is None and len(self.protocols) == 1 and not self._lost:
            self._hand_over(next(iter(self.protocols)))

    def start_deadline(self) -> None:
        """
        (Re)start the handshake timeout.
        """
        self.stop_deadline()
        timeout = self.server.limits.handshake_timeout
        if timeout and not self._lost:
            self._deadline = self.server.clock.callLater(timeout, self._too_slow)

    def stop_deadline(self) -> None:
        """
        Stop the handshake timeout.
        """
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        timeout = self.server.limits.handshake_timeout
        if self._tls and not self._tls_done:
            what = "the TLS handshake did not finish"
        elif self.inner is None:
            what = "no protocol identified"
        else:
            what = f"the {getattr(self.inner, 'protocol_name', 'protocol')} preamble did not finish"
        self._close(f"{what} within {timeout:g} s (limits.handshake_timeout)", abort=True)

    def _close(self, why: str, abort: bool = False) -> None:
        self._closing = why
        log.info("closing {peer}: {why}", peer=self.peer, why=why)
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        buffered = self._buffer
        if buffered[:1] == _TLS_RECORD[:1]:
            if len(buffered) < 2:
                return
            if buffered[:2] == _TLS_RECORD:
                self.transport.write(_NOT_TLS_ANSWER)
                self._close("it began a TLS handshake, but this endpoint does not speak TLS "
                            "(point TLS clients at an rpcd-tls: or mtls: endpoint)")
                return
        name = sniff.sniff(buffered)
        if name is None:
            if len(buffered) > 64:
                name = sniff.GOB
            else:
                return
        if name not in self.protocols:
            self._close(f"{name} is not served on this endpoint "
                        f"(it serves {', '.join(sorted(self.protocols))})")
            return
        self._hand_over(name)

    def _hand_over(self, name: str) -> None:
        cls = _protocol_class(name)
        if cls is None:
            self._close(f"the {name} protocol is not available in this build")
            return
        inner = cls(self.server)
        self.inner = inner
        if getattr(cls, "has_preamble", False):
            self.server._preambles[inner] = self
        else:
            self.stop_deadline()
        buffered, self._buffer = self._buffer, b""
        idle = 0.0 if self.dialled else self.server.limits.idle_timeout
        if idle:
            self._seconds = self.server.clock.seconds
            self._last_read = self._seconds()
            self._inner_received = inner.dataReceived
            self.dataReceived = self._relay  # type: ignore[method-assign]
            self._idle = self.server.clock.callLater(idle, self._check_idle)
        else:
            self.dataReceived = inner.dataReceived  # type: ignore[method-assign]
        inner.makeConnection(self.transport)
        self._throttle()
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(inner)
        if buffered and not self._lost:
            inner.dataReceived(buffered)

    def _relay(self, data: bytes) -> None:
        self._last_read = self._seconds()
        self._inner_received(data)

    def _throttle(self) -> None:
        if self._lost:
            return
        throttle = _ReadThrottle(self.transport, self.peer)
        try:
            self.transport.registerProducer(throttle, True)
        except RuntimeError:
            return  # The wire protocol registered a producer of its own.
        self.throttle = throttle
        _set_write_cap(self.transport, self.server.limits.write_buffer_bytes)

    def _busy(self) -> bool:
        inner = self.inner
        busy = getattr(inner, "busy", None)
        if busy is not None:
            return bool(busy())
        dispatcher = getattr(inner, "dispatcher", None)
        return bool(dispatcher is not None and dispatcher.running)

    def _check_idle(self) -> None:
        self._idle = None
        timeout = self.server.limits.idle_timeout
        now = self.server.clock.seconds()
        if self._busy():
            self._last_read = now
        left = self._last_read + timeout - now
        if left <= 0:
            stuck = self.throttle is not None and self.throttle.paused
            self._close(f"idle for {timeout:g} s (limits.idle_timeout)", abort=stuck)
            return
        self._idle = self.server.clock.callLater(left, self._check_idle)

    def connectionLost(self, reason: Failure) -> None:
        self._lost = True
        self.stop_deadline()
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self.server.closed(self.host)
        if self.inner is not None:
            self.server._preambles.pop(self.inner, None)
        if self._tls and self._closing is None and (
                not self._tls_done or _is_tls_error(reason.value)):
            self._log_tls_failure(reason)
        ready, self._ready = self._ready, []
        for d in ready:
            d.errback(reason)
        if self.inner is not None:
            self.inner.connectionLost(reason)

    def _log_tls_failure(self, reason: Failure) -> None:
        from rpcd.tlsinfo import describe_tls_failure
        side = "client" if self.dialled else "server"
        why = describe_tls_failure(reason, side=side, transport=self.transport)
        log.warn("TLS with {peer} failed: {why}", peer=self.peer, why=why)

    # Producer and TLS callbacks the transport may make on its protocol.
    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


class _Refused(Protocol):
    """
    What a refused connection gets: closed as soon as it is made.  (A TCP
    port would take None from the factory, but Twisted's TLS wrapper needs a
    protocol to wrap.)
    """

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class RPCServerFactory(Factory):
    """
    Builds a L{SniffingProtocol} for each connection to one endpoint, after
    checking the connection caps.
    """

    def __init__(self, server: RPCServer, protocols: frozenset[str] = sniff.ALL, *,
                 dialled: bool = False) -> None:
        self.server = server
        self.protocols = frozenset(protocols)
        self.dialled = dialled
        unknown = self.protocols - sniff.ALL
        if unknown or not self.protocols:
            raise ValueError(f"unknown wire protocol(s) {sorted(unknown)}; "
                             f"choose from {sorted(sniff.ALL)}")

    def buildProtocol(self, addr: Any) -> Protocol:
        if self.dialled:
            host = None
        else:
            peer, host = describe_address(addr)
            if isinstance(addr, UNIXAddress):
                host = "unix"
            why = self.server.admit(host)
            if why is not None:
                self.server.note_refusal(peer, why)
                return _Refused()
        protocol = SniffingProtocol(self.server, self.protocols, host, self.dialled)
        protocol.factory = self
        return protocol
