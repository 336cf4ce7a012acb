"""
What every connection of a daemon shares, and the factory that gives each
new connection its wire protocol.

A listening endpoint serves every protocol rpcd speaks, told apart by the
first bytes (L{rpcd.wire.sniff}), unless the config pins it to some.

The L{Limits} against abuse are applied the same for every wire protocol:
the connection caps (L{rpcd.server.limits.ConnectionCaps}) in
L{RPCServerFactory.buildProtocol}, before anything is built for the
connection; the handshake and idle timeouts by L{SniffingProtocol}
(L{rpcd.server.sniffer}); the write buffer cap by L{rpcd.server.backpressure}; the
daemon-wide budget for unfinished input and the message deadline by
L{rpcd.server.budget} (L{RPCServer.input_budget}, L{RPCServer.input_guard}).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.address import UNIXAddress
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol

from rpcd.server.budget import InputBudget, InputGuard
from rpcd.server.limits import ConnectionCaps, Limits
from rpcd.core.session import Session, describe_address
from rpcd.server.protocols import SERVER_PROTOCOLS
from rpcd.server.sniffer import SniffingProtocol
from rpcd.tls.tlsinfo import peer_identity
from rpcd.server.fairness import TurnScheduler
from rpcd.wire import sniff

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime, ITransport

    from rpcd.core.service import ServiceRegistry

__all__ = ["Limits", "RPCServer", "RPCServerFactory", "SERVER_PROTOCOLS", "SniffingProtocol"]

class RPCServer:
    """
    The state a daemon's connections share.

    @ivar registry: the services.
    @ivar clock: the reactor's clock.
    @ivar limits: the L{Limits}.
    @ivar authenticator: checks logins, or None when there are no users.
    @ivar caps: the L{ConnectionCaps}, which count the connections open now.
    @ivar turns: the L{TurnScheduler} every connection's calls take turns
        in (L{rpcd.server.fairness}).
    @ivar input_budget: the L{InputBudget}: bytes held in unfinished messages
        across all connections.
    @ivar metrics: the daemon's L{rpcd.server.metrics.Metrics}, or None when it
        keeps none (C{[http] metrics = false}).
    @ivar open_connections: every connection open now (their
        L{SniffingProtocol}s), for L{rpcd.daemon.drain}.
    @ivar jitter: a source of random numbers in [0, 1) (the spread of
        C{limits.max_connection_age}).
    """

    metrics: Any = None

    def __init__(self, registry: ServiceRegistry, clock: IReactorTime,
                 limits: Limits = Limits(), authenticator: Any = None) -> None:
        self.registry = registry
        self.clock = clock
        self.limits = limits
        self.authenticator = authenticator
        self.caps = ConnectionCaps(limits, clock)
        self.input_budget = InputBudget(limits.input_budget_bytes)
        self.turns = TurnScheduler(clock, limits.turn_slice)
        self._preambles: dict[Protocol, SniffingProtocol] = {}
        self.open_connections: set[SniffingProtocol] = set()
        self.jitter: Callable[[], float] = random.random

    def new_session(self, transport: ITransport, protocol_name: str) -> Session:
        """
        Make the session for a new connection.

        @param transport: the connection's transport.
        @param protocol_name: the wire protocol it speaks.
        @return: a fresh L{Session}.
        """
        peer, host = describe_address(transport.getPeer())
        identity = peer_identity(transport)
        session = Session(self.registry, peer, host, self.authenticator, identity, protocol_name)
        if self.metrics is not None:
            self.metrics.connection_opened(session)
        return session

    def input_guard(self, close: Callable[[str], None]) -> InputGuard:
        """
        Make the guard of one connection's unfinished messages: they count
        against L{input_budget} and must be complete within
        C{limits.message_timeout} of their first byte (L{rpcd.server.budget}).

        A wire protocol reports to it after each read
        (C{guard.update(bytes_held, completed)}) and calls C{guard.stop()}
        when its connection is lost.

        @param close: closes the connection, logging the reason it is given
            (the sniffer's, for the protocols it hands over to).
        @return: the guard.
        """
        return InputGuard(self.input_budget, self.clock, self.limits.message_timeout, close)

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

    @property
    def connections(self) -> int:
        """
        Connections open now (accepted and dialled).
        """
        return self.caps.connections

    @property
    def connections_by_host(self) -> dict[str, int]:
        """
        Accepted connections open now, by peer host.
        """
        return self.caps.connections_by_host

    @property
    def refused(self) -> int:
        """
        Connections refused by the caps since start.
        """
        return self.caps.refused

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

    def watch_preamble(self, protocol: Protocol, sniffer: SniffingProtocol) -> None:
        """
        Let a protocol with a preamble reach its connection's handshake
        deadline through L{preamble_done} and L{expect_preamble}.

        @param protocol: the wire protocol.
        @param sniffer: its connection's sniffer.
        """
        self._preambles[protocol] = sniffer

    def forget_preamble(self, protocol: Protocol) -> None:
        """
        The connection is gone.

        @param protocol: the wire protocol.
        """
        self._preambles.pop(protocol, None)

    def _sniffer_of(self, protocol: Protocol) -> SniffingProtocol | None:
        return self._preambles.get(protocol)


class _Refused(Protocol):
    """
    What a refused connection gets: closed as soon as it is made.  (A TCP
    port would take None from the factory, but Twisted's TLS wrapper needs a
    protocol to wrap.)
    """

    transport: ITCPTransport

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
            why = self.server.caps.admit(host)
            if why is not None:
                self.server.caps.note_refusal(peer, why)
                return _Refused()
        protocol = SniffingProtocol(self.server, self.protocols, host, self.dialled)
        protocol.factory = self
        return protocol
