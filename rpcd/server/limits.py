"""
The limits against abuse, and the connection caps that apply two of them.

L{Limits} is plain configuration (L{rpcd.daemon.config} builds it from C{[limits]});
L{ConnectionCaps} counts the connections open now and decides whether one
more may open.  The other limits are applied per connection by
L{rpcd.server.sniffer.SniffingProtocol} and the wire protocols.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

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
    @ivar max_connection_age: seconds after which a connection is told to
        go away (native and gRPC GOAWAY; HTTP, gob and JSON-RPC close once
        what they sent is answered), so that long-lived clients rebalance
        onto new servers (0 disables); each connection's age gets up to 10%
        of random jitter so that connections made together do not all go
        at once.
    @ivar max_connection_age_grace: seconds an aged connection has to
        finish its running calls and streams before they are cancelled
        (UNAVAILABLE) and it is closed.
    @ivar max_connections: connections open at once, in total.
    @ivar max_connections_per_peer: connections open at once from one host
        (Unix socket peers count only against C{max_connections}).
    @ivar write_buffer_bytes: bytes of replies queued for a peer that does
        not read them before rpcd stops reading its requests and starting
        its calls (L{rpcd.server.backpressure}).
    @ivar input_budget_bytes: bytes held in unfinished messages (frames,
        gob messages, JSON values) across all connections; a connection
        that would hold more is closed (0: no budget; L{rpcd.server.budget}).
    @ivar message_timeout: seconds a message has to be complete after its
        first byte arrived, however slowly the rest comes (0 disables).
    @ivar max_batch_calls: requests in one JSON-RPC 2.0 batch; a longer
        batch is refused as a whole (0: no limit).
    @ivar turn_slice: seconds of calls the daemon starts for connections
        in one reactor iteration before it queues the connections that ask
        to start more, and serves them in later iterations in fair order
        (0: never; L{rpcd.server.fairness}).
    @ivar keepalive_interval: seconds a native connection may be quiet (no
        bytes read) before the daemon sends it a PING (0 disables;
        L{rpcd.core.keepalive}).
    @ivar keepalive_timeout: seconds after that PING within which the peer
        must send something (a PONG) before the connection is closed, its
        calls, streams and long polls cancelled.
    @ivar keepalive_min_ping_interval: the least seconds between two PINGs
        from a peer that are not a strike (0: no check).
    @ivar keepalive_max_ping_strikes: strikes in a row allowed before the
        peer gets a GOAWAY (RESOURCE_EXHAUSTED, "too many pings").
    @ivar half_close_check_interval: once a peer has ended its requests
        (a FIN) with calls still running, seconds between checks that it
        has not closed its socket altogether: if it has, the connection
        closes and its calls (a long poll) are cancelled at once rather than
        when they end (a native connection is sent a PING as often, the
        others get TCP keepalive probes, whole seconds; 0 disables;
        L{rpcd.server.goneprobe}).
    """

    max_frame_bytes: int = 4 * 1024 * 1024
    max_calls_per_connection: int = 1000
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    max_connections: int = 10000
    max_connections_per_peer: int = 1000
    write_buffer_bytes: int = 1024 * 1024
    input_budget_bytes: int = 256 * 1024 * 1024
    message_timeout: float = 30.0
    max_batch_calls: int = 1000
    turn_slice: float = 0.01
    keepalive_interval: float = 60.0
    keepalive_timeout: float = 20.0
    keepalive_min_ping_interval: float = 10.0
    keepalive_max_ping_strikes: int = 2
    half_close_check_interval: float = 1.0
    max_connection_age: float = 0.0
    max_connection_age_grace: float = 30.0


class ConnectionCaps:
    """
    Counts a daemon's open connections, in total and per peer host, and
    applies C{max_connections} and C{max_connections_per_peer}.

    @ivar limits: the L{Limits}.
    @ivar clock: the clock that throttles the refusal log lines.
    @ivar connections: connections open now (accepted and dialled).
    @ivar connections_by_host: accepted connections open now, by peer host.
    @ivar refused: connections refused by the caps since start.
    """

    def __init__(self, limits: Limits, clock: IReactorTime) -> None:
        self.limits = limits
        self.clock = clock
        self.connections = 0
        self.connections_by_host: dict[str, int] = {}
        self.refused = 0
        self._refusal_logged_at: float | None = None
        self._refusals_unlogged = 0
        self._refusal_flush: IDelayedCall | None = None

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
            if self._refusal_flush is None:
                # Report the tail of a flood too, not only when the next one comes.
                self._refusal_flush = self.clock.callLater(
                    1.0 - (now - self._refusal_logged_at), self._flush_refusals, why)
            return
        unlogged, self._refusals_unlogged = self._refusals_unlogged, 0
        self._refusal_logged_at = now
        if self._refusal_flush is not None and self._refusal_flush.active():
            self._refusal_flush.cancel()
        self._refusal_flush = None
        if unlogged:
            log.warn("refusing connection from {peer}: {why} "
                     "({unlogged} more refused since the last such line)",
                     peer=peer, why=why, unlogged=unlogged)
        else:
            log.warn("refusing connection from {peer}: {why}", peer=peer, why=why)

    def _flush_refusals(self, why: str) -> None:
        self._refusal_flush = None
        unlogged, self._refusals_unlogged = self._refusals_unlogged, 0
        if unlogged:
            self._refusal_logged_at = self.clock.seconds()
            log.warn("refused {unlogged} more connection(s) in the last second (last reason: {why})",
                     unlogged=unlogged, why=why)
