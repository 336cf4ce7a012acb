"""
What every connection of a daemon shares, and the factory that gives each
new connection its wire protocol.

A listening endpoint serves every protocol rpcd speaks, told apart by the
first bytes (L{rpcd.wire.sniff}), unless the config pins it to some.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.session import Session, describe_address
from rpcd.tlsinfo import peer_identity
from rpcd.wire import sniff

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime, ITransport

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
    @ivar handshake_timeout: seconds a new connection has to identify its
        protocol and finish any preamble (TLS, HTTP head).
    @ivar idle_timeout: seconds without traffic or running calls before a
        connection is closed (0 disables).
    @ivar max_connections: connections open at once, in total.
    @ivar max_connections_per_peer: connections open at once from one host.
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
SERVER_PROTOCOLS: dict[str, str] = {
    sniff.NATIVE: "rpcd.wire.native:NativeServerProtocol",
}


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
    """

    def __init__(self, registry: ServiceRegistry, clock: IReactorTime,
                 limits: Limits = Limits(), authenticator: Any = None) -> None:
        self.registry = registry
        self.clock = clock
        self.limits = limits
        self.authenticator = authenticator
        self.connections = 0

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

    def factory(self, protocols: frozenset[str] = sniff.ALL) -> RPCServerFactory:
        """
        A factory for one listening endpoint.

        @param protocols: the wire protocols this endpoint accepts.
        @return: the factory.
        """
        return RPCServerFactory(self, protocols)


class SniffingProtocol(Protocol):
    """
    Reads a connection's first bytes, then hands the connection to the
    protocol they belong to.  After the hand-over, bytes go straight to that
    protocol (no extra call per read).
    """

    def __init__(self, server: RPCServer, protocols: frozenset[str]) -> None:
        self.server = server
        self.protocols = protocols
        self.inner: Protocol | None = None
        self._buffer = b""
        self._timer: Any = None

    def connectionMade(self) -> None:
        timeout = self.server.limits.handshake_timeout
        if timeout:
            self._timer = self.server.clock.callLater(timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        log.info("closing {peer}: no protocol identified within {timeout} s",
                 peer=describe_address(self.transport.getPeer())[0],
                 timeout=self.server.limits.handshake_timeout)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        name = sniff.sniff(self._buffer)
        if name is None:
            if len(self._buffer) > 64:
                name = sniff.GOB
            else:
                return
        if len(self.protocols) == 1:
            (name,) = self.protocols
        elif name not in self.protocols:
            self._refuse(f"{name} is not served on this endpoint "
                         f"(it serves {', '.join(sorted(self.protocols))})")
            return
        cls = _protocol_class(name)
        if cls is None:
            self._refuse(f"the {name} protocol is not available in this build")
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        inner = cls(self.server)
        self.inner = inner
        buffered, self._buffer = self._buffer, b""
        self.dataReceived = inner.dataReceived  # type: ignore[method-assign]
        inner.makeConnection(self.transport)
        inner.dataReceived(buffered)

    def _refuse(self, why: str) -> None:
        log.info("closing {peer}: {why}", peer=describe_address(self.transport.getPeer())[0], why=why)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.server.connections -= 1
        if self.inner is not None:
            self.inner.connectionLost(reason)

    # Producer and TLS callbacks the transport may make on its protocol.
    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


class RPCServerFactory(Factory):
    """
    Builds a L{SniffingProtocol} for each connection to one endpoint.
    """

    def __init__(self, server: RPCServer, protocols: frozenset[str] = sniff.ALL) -> None:
        self.server = server
        self.protocols = frozenset(protocols)
        unknown = self.protocols - sniff.ALL
        if unknown or not self.protocols:
            raise ValueError(f"unknown wire protocol(s) {sorted(unknown)}; "
                             f"choose from {sorted(sniff.ALL)}")

    def buildProtocol(self, addr: Any) -> Protocol:
        self.server.connections += 1
        protocol = SniffingProtocol(self.server, self.protocols)
        protocol.factory = self
        return protocol
