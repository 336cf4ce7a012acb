"""
The first thing every accepted (or dialled) connection runs: it applies the
per-connection limits, reads the first bytes, then hands the connection to
the wire protocol they belong to (L{rpcd.wire.sniff}, L{rpcd.server.protocols.SERVER_PROTOCOLS}).

The limits it applies:

  - B{the handshake timeout}: a new connection must finish TLS, show which
    protocol it speaks and finish that protocol's preamble (an HTTP head; see
    L{rpcd.server.RPCServer.preamble_done}) within C{handshake_timeout}
    seconds in all, however slowly it dribbles its bytes;
  - B{the idle timeout}: a connection with no traffic and no running calls
    for C{idle_timeout} seconds is closed;
  - B{the write buffer cap} (L{rpcd.server.backpressure}): it gives the wire
    protocol a L{ReadThrottle} (its C{throttle} attribute, when its class
    has one) that says when calls must stop starting;
  - B{the input budget and the message deadline} (L{rpcd.server.budget}): it gives
    the wire protocol an L{InputGuard} (its C{input_guard} attribute, when
    its class has one) to report unfinished messages to;
  - B{half-close}: when the peer shuts down its write side, the wire
    protocol's C{read_connection_lost()} is called (it answers the calls it
    has read, then closes); a protocol without one is closed at once, once
    its queued bytes are sent.

It also says why a TLS connection failed, and answers a TLS client on an
endpoint without TLS in plain text.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Callable, Literal, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.server.backpressure import ReadThrottle, drop_unsent, lose_connection, set_write_cap
from rpcd.server.budget import InputGuard
from rpcd.core.session import describe_address
from rpcd.server import protocols
from rpcd.wire import sniff
from rpcd.core.keepalive import KeepAlive, always
from rpcd.server.goneprobe import GonePeerProbe, give_up_after, handle_of
from rpcd.wire.sockopts import set_keepalive, set_no_delay

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from rpcd.server.factory import RPCServer

log = Logger()

# The first bytes of a TLS handshake record: content type 22, major version 3.
_TLS_RECORD = b"\x16\x03"
_NOT_TLS_ANSWER = b"rpcd: this endpoint does not speak TLS\r\n"



class Phase(Enum):
    """
    Where a connection is in its life.  L{SniffingProtocol._enter} makes
    every change, along L{NEXT_PHASES}.
    """

    HANDSHAKE = "TLS handshake"  # a TLS connection whose handshake is not done
    SNIFFING = "sniffing"  # its first bytes are read
    HANDED_OVER = "handed over"  # a wire protocol has it
    DRAINING = "draining"  # handed over; the wire protocol answers what it read, reads no more
    CLOSING = "closing"  # rpcd closes it (why: SniffingProtocol.closing_why)
    LOST = "lost"


NEXT_PHASES: dict[Phase, frozenset[Phase]] = {
    Phase.HANDSHAKE: frozenset({Phase.SNIFFING, Phase.CLOSING, Phase.LOST}),
    Phase.SNIFFING: frozenset({Phase.HANDED_OVER, Phase.CLOSING, Phase.LOST}),
    Phase.HANDED_OVER: frozenset({Phase.DRAINING, Phase.CLOSING, Phase.LOST}),
    Phase.DRAINING: frozenset({Phase.CLOSING, Phase.LOST}),
    Phase.CLOSING: frozenset({Phase.CLOSING, Phase.LOST}),  # a later reason replaces the first
    Phase.LOST: frozenset(),
}
"""The phases each phase may go to."""


def _ignore(data: bytes) -> None:
    """
    Drop bytes read from a draining connection.
    """


def _is_tls_error(error: BaseException | None) -> bool:
    from OpenSSL.SSL import Error
    from service_identity.exceptions import VerificationError
    return isinstance(error, (Error, VerificationError))


class _Rare:
    """
    A connection's state for what most connections never do (close on
    rpcd's initiative, drain, half-close, age out, have someone wait for
    them), made the first time one of them happens: an idle connection
    holds none of it.

    @ivar closing_why: why rpcd closes it, once L{Phase.CLOSING}.
    @ivar lost_reason: why it was lost, once L{Phase.LOST}.
    @ivar ready: Deferreds waiting for the hand-over (L{SniffingProtocol.when_ready}).
    @ivar gone: Deferreds waiting for the end (L{SniffingProtocol.when_gone}).
    @ivar draining: the reason of a drain asked before the hand-over, or None.
    @ivar age: the C{max_connection_age} timer, or None.
    @ivar busy_at: when the idle check last found calls running.
    @ivar read_ended: the peer shut down its write side.
    @ivar probe: once reading has ended, what notices the peer closing its
        socket (L{GonePeerProbe}), or None.
    """

    __slots__ = ("closing_why", "lost_reason", "ready", "gone", "draining", "age", "busy_at",
                 "read_ended", "probe")

    def __init__(self) -> None:
        self.closing_why: str | None = None
        self.lost_reason: Failure | None = None
        self.ready: list[Deferred[Protocol]] = []
        self.gone: list[Deferred[None]] = []
        self.draining: str | None = None
        self.age: IDelayedCall | None = None
        self.busy_at = 0.0
        self.read_ended = False
        self.probe: GonePeerProbe | None = None


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class SniffingProtocol(Protocol):
    """
    Applies the per-connection limits, reads a connection's first bytes,
    then hands the connection to the protocol they belong to.

    After the hand-over, L{dataReceived} passes bytes on to that protocol
    (noting the time of each read when an idle timeout or keepalive is set).

    @ivar phase: where the connection is in its life (L{Phase}).
    @ivar inner: the wire protocol, once chosen.
    @ivar throttle: the producer that stops reading when the peer does not
        read its replies, or None if the wire protocol registered its own.
    @ivar input_guard: the guard of the wire protocol's unfinished messages
        (L{rpcd.server.budget.InputGuard}), once handed over.
    """

    transport: ITCPTransport

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
        # Every connection lives as long as this object: it holds only what
        # an idle connection needs (each attribute costs every connection
        # 8 bytes), the rest in _rare, made on first need.
        self.server = server
        self.protocols = protocols
        self.host = host
        self.dialled = dialled
        self.inner: Protocol | None = None
        self.throttle: ReadThrottle | None = None
        self.input_guard: InputGuard | None = None
        self.phase = Phase.SNIFFING
        # After the hand-over: where bytes go (the wire protocol's
        # dataReceived, or _ignore once draining), and the clock whose time
        # each read notes (for the idle timeout and keepalive), if any.
        self._received: Callable[[bytes], None] | None = None
        self._read_clock: Callable[[], float] | None = None
        self._last_read = 0.0
        self._buffer = b""
        self._deadline: IDelayedCall | None = None
        self._idle: IDelayedCall | None = None
        self._keepalive: KeepAlive | None = None
        self._rare: _Rare | None = None

    @property
    def peer(self) -> str:
        """
        The peer's address text (for the log; described when asked).
        """
        transport = self.transport
        if transport is None:
            return "?"
        return describe_address(transport.getPeer())[0]

    @property
    def closing_why(self) -> str | None:
        """
        Why rpcd closes the connection, once L{Phase.CLOSING}.
        """
        rare = self._rare
        return None if rare is None else rare.closing_why

    def _more(self) -> _Rare:
        """
        @return: the connection's rarer state, made now if need be.
        """
        rare = self._rare
        if rare is None:
            rare = self._rare = _Rare()
        return rare

    def when_ready(self) -> Deferred[Protocol]:
        """
        @return: a Deferred firing with the wire protocol once the connection
            is handed over to it (after any TLS handshake), or failing with
            the reason the connection was lost first.
        """
        d: Deferred[Protocol] = Deferred()
        rare = self._more()
        if self.inner is not None:
            d.callback(self.inner)
        elif rare.lost_reason is not None:
            d.errback(rare.lost_reason)
        else:
            rare.ready.append(d)
        return d

    def _enter(self, phase: Phase) -> bool:
        """
        Go to another phase, if the phase now may go there (L{NEXT_PHASES}).

        @return: whether the connection is in C{phase} now.
        """
        if phase in NEXT_PHASES[self.phase]:
            self.phase = phase
        return self.phase is phase

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        set_keepalive(self.transport)
        self.server.caps.opened(self.host)
        self.server.open_connections.add(self)
        self.start_deadline()
        age = self.server.limits.max_connection_age
        if age and not self.dialled:
            # Up to 10% less, so that connections made together go apart.
            age *= 1 - 0.1 * self.server.jitter()
            self._more().age = self.server.clock.callLater(age, self._aged)
        if INegotiated.providedBy(self.transport):
            self.phase = Phase.HANDSHAKE  # the first phase of a TLS connection
        elif len(self.protocols) == 1:
            self._hand_over(next(iter(self.protocols)))

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done: a pinned endpoint hands over now, so that
        a protocol that speaks first (native) may do so.
        """
        if self._enter(Phase.SNIFFING) and len(self.protocols) == 1:
            self._hand_over(next(iter(self.protocols)))

    def start_deadline(self) -> None:
        """
        (Re)start the handshake timeout.
        """
        self.stop_deadline()
        timeout = self.server.limits.handshake_timeout
        if timeout and self.phase is not Phase.LOST:
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
        phase = self.phase
        if self.dialled and phase is Phase.SNIFFING:
            # A reverse connection: the caller speaks first, when it has a
            # call to make; the daemon dialled it and waits.
            return
        timeout = self.server.limits.handshake_timeout
        if phase is Phase.HANDSHAKE:
            what = "the TLS handshake did not finish"
        elif self.inner is None:
            what = "no protocol identified"
        else:
            what = f"the {getattr(self.inner, 'protocol_name', 'protocol')} preamble did not finish"
        self._close(f"{what} within {timeout:g} s (limits.handshake_timeout)", abort=True)

    def _close(self, why: str, abort: bool = False) -> None:
        if not self._enter(Phase.CLOSING):
            return  # lost already
        self._more().closing_why = why
        log.info("closing {peer}: {why}", peer=self.peer, why=why)
        if abort:
            self.transport.abortConnection()
        else:
            lose_connection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        received = self._received
        if received is not None:  # handed over
            read_clock = self._read_clock
            if read_clock is not None:
                self._last_read = read_clock()
            received(data)
            return
        self._sniff(data)

    def _sniff(self, data: bytes) -> None:
        if self.phase is Phase.HANDSHAKE:
            self._enter(Phase.SNIFFING)  # bytes came through TLS: its handshake is done
        if self.phase is not Phase.SNIFFING:
            return  # closing already (e.g. TLS data decrypted after the refusal)
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
        try:
            cls = protocols.protocol_class(name)
        except ValueError:
            log.failure("cannot load the {name} protocol", name=name)
            cls = None
        if cls is None:
            self._close(f"the {name} protocol is not available in this build")
            return
        try:
            inner = cls(self.server)
        except Exception:
            log.failure("cannot build the {name} protocol for {peer}", name=name, peer=self.peer)
            self._close(f"rpcd could not start its {name} protocol (see the log above)", abort=True)
            return
        self.inner = inner
        self._enter(Phase.HANDED_OVER)
        if getattr(cls, "has_preamble", False):
            self.server.watch_preamble(inner, self)
        else:
            self.stop_deadline()
        buffered, self._buffer = self._buffer, b""
        limits = self.server.limits
        idle = 0.0 if self.dialled else limits.idle_timeout
        ping = getattr(inner, "send_ping", None)
        keepalive = limits.keepalive_interval if ping is not None else 0.0
        if idle or keepalive:
            self._read_clock = self.server.clock.seconds
            self._last_read = self._read_clock()
            if idle:
                self._idle = self.server.clock.callLater(idle, self._check_idle)
            if keepalive:
                assert ping is not None
                self._keepalive = KeepAlive(self.server.clock, keepalive, limits.keepalive_timeout,
                                            self._last_read_at, ping, self._close_abusive,
                                            self._busy if idle else always)
                self._keepalive.start()
        self._received = inner.dataReceived
        throttle = ReadThrottle(self.transport, None, self.server.limits.write_buffer_bytes)
        throttle.turns = self.server.turns
        if hasattr(inner, "throttle"):
            inner.throttle = throttle
            throttle.on_drained = getattr(inner, "replies_drained", None)
        if hasattr(inner, "input_guard"):
            self.input_guard = self.server.input_guard(self._close_abusive)
            inner.input_guard = self.input_guard
        inner.makeConnection(self.transport)
        self._throttle(throttle)
        if self.throttle is throttle and getattr(inner, "throttle", None) is throttle:
            # Reads take turns (rpcd.server.fairness): they go through the throttle.
            throttle.deliver = inner.dataReceived
            self._received = throttle.received
        rare = self._rare
        if rare is not None and rare.ready:
            ready, rare.ready = rare.ready, []
            for d in ready:
                d.callback(inner)
        if buffered and self.phase is not Phase.LOST:
            if throttle.deliver is not None:
                throttle.received(buffered)
            else:
                inner.dataReceived(buffered)
        if rare is not None and rare.draining is not None and self.phase is not Phase.LOST:
            why, rare.draining = rare.draining, None
            self.drain(why)

    def drain(self, why: str) -> Deferred[None]:
        """
        Go away gracefully: the wire protocol stops taking new calls (a
        native or gRPC GOAWAY; HTTP, gob and JSON-RPC answer what was read,
        HTTP with C{Connection: close}, and read no more), and the
        connection closes once the calls and streams running now have
        ended.  A connection not handed over yet closes at once.

        @param why: the reason, for the GOAWAY and the log.
        @return: a Deferred firing with None once the connection is closed.
        """
        gone = self.when_gone()
        rare = self._more()
        if self.phase is Phase.LOST or rare.draining is not None:
            return gone
        rare.draining = why
        inner = self.inner
        if inner is None:
            if self.phase is Phase.HANDSHAKE:
                rare.draining = why  # handed over (and drained) after the handshake
            else:
                self._close(why)
            return gone
        drain = getattr(inner, "drain", None)
        if drain is not None:
            drain(why)
            return gone
        ended = getattr(inner, "read_connection_lost", None)
        if ended is None:
            self._close(why)
            return gone
        if hasattr(inner, "draining"):
            inner.draining = True  # HTTP: answers say Connection: close
        self._enter(Phase.DRAINING)
        self._received = _ignore
        if self.throttle is not None:
            self.throttle.reading_ended = True
        ended()
        return gone

    def stop_now(self, why: str) -> None:
        """
        The grace is over: fail what still runs (UNAVAILABLE where the
        protocol can say so), cancel the handlers and close.

        @param why: the reason, for the errors and the log.
        """
        if self.phase is Phase.LOST:
            return
        inner = self.inner
        stop = getattr(inner, "stop_now", None)
        if stop is not None:
            stop(why)
            return
        dispatcher = getattr(inner, "dispatcher", None)
        if dispatcher is not None:
            for d in list(dispatcher.running.values()):
                d.cancel()
        if self.phase is not Phase.LOST:
            self._close(why)

    def when_gone(self) -> Deferred[None]:
        """
        @return: a Deferred firing with None once the connection is closed.
        """
        d: Deferred[None] = Deferred()
        if self.phase is Phase.LOST:
            d.callback(None)
        else:
            self._more().gone.append(d)
        return d

    def _aged(self) -> None:
        self._more().age = None
        limits = self.server.limits
        why = (f"the connection is {limits.max_connection_age:g} s old "
               "(limits.max_connection_age): reconnect")
        log.info("{peer}: {why}", peer=self.peer, why=why)
        self.drain(why)
        grace = limits.max_connection_age_grace
        late = self.server.clock.callLater(grace, self.stop_now,
                                           f"the connection outlived limits.max_connection_age "
                                           f"+ max_connection_age_grace ({grace:g} s)")
        self.when_gone().addCallback(lambda _: late.cancel() if late.active() else None)

    def _throttle(self, throttle: ReadThrottle) -> None:
        inner = self.inner
        try:
            if self.phase is Phase.LOST:
                raise RuntimeError("lost")
            cast(IConsumer, self.transport).registerProducer(throttle, True)
        except RuntimeError:
            # The wire protocol registered a producer of its own.
            if getattr(inner, "throttle", None) is throttle:
                inner.throttle = None  # type: ignore[union-attr]
            return
        self.throttle = throttle
        set_write_cap(self.transport, self.server.limits.write_buffer_bytes)

    def _close_abusive(self, why: str) -> None:
        if self.phase is not Phase.CLOSING and self.phase is not Phase.LOST:
            self._close(why, abort=True)

    def readConnectionLost(self) -> None:
        """
        The peer shut down its write side (TCP half-close): the wire
        protocol answers what it has read, then closes
        (C{read_connection_lost}); before the hand-over, or for a protocol
        that cannot, the connection closes once its queued bytes are sent.
        """
        rare = self._more()
        if rare.read_ended or self.phase is Phase.LOST:
            return
        rare.read_ended = True
        if self.throttle is not None:
            self.throttle.reading_ended = True
        inner = self.inner
        ended = getattr(inner, "read_connection_lost", None) if inner is not None else None
        if ended is None:
            lose_connection(self.transport)
        elif self.throttle is not None:
            self.throttle.end_reading(ended)
        else:
            ended()
        self._probe_gone_peer(rare)

    def _probe_gone_peer(self, rare: _Rare) -> None:
        """
        While the calls read before the half-close run, notice the peer
        closing its socket (L{rpcd.server.goneprobe}) and close the
        connection then, which cancels them.
        """
        interval = self.server.limits.half_close_check_interval
        transport = self.transport
        if (not interval or self.phase is Phase.CLOSING or self.phase is Phase.LOST
                or getattr(transport, "disconnecting", False)):
            return  # nothing was running: closing already
        sock = handle_of(transport)
        if sock is None:
            return
        ping = getattr(self.inner, "send_ping", None)
        poke = None
        if ping is not None:
            def poke() -> None:
                if not getattr(transport, "disconnecting", False):
                    ping(0)
        rare.probe = GonePeerProbe(self.server.clock, sock, interval,
                                   lambda why: self._close(why, abort=True), poke)
        rare.probe.start()
        keepalive = self._keepalive
        if keepalive is not None and ping is not None:
            # A half-closed peer cannot answer the keepalive's PING, which
            # would end a live one's calls: the probe watches the peer now,
            # and the kernel ends the connection of a host that vanished
            # (its PINGs unacknowledged) after as long as the keepalive would.
            keepalive.stop()
            self._keepalive = None
            give_up_after(sock, keepalive.interval + keepalive.timeout)

    def writeConnectionLost(self) -> None:
        """
        rpcd never shuts down only its write side: nothing to do.
        """

    def _last_read_at(self) -> float:
        """
        @return: the clock time of the last read (for the keepalive).
        """
        return self._last_read

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
        busy_at = 0.0
        if self._busy():
            busy_at = self._more().busy_at = now
        elif self._rare is not None:
            busy_at = self._rare.busy_at
        left = max(self._last_read, busy_at) + timeout - now
        if left <= 0:
            stuck = self.throttle is not None and self.throttle.paused
            self._close(f"idle for {timeout:g} s (limits.idle_timeout)", abort=stuck)
            return
        self._idle = self.server.clock.callLater(left, self._check_idle)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        before = self.phase
        self._enter(Phase.LOST)
        rare = self._more()
        rare.lost_reason = reason
        self.stop_deadline()
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        if self._keepalive is not None:
            self._keepalive.stop()
        if rare.age is not None and rare.age.active():
            rare.age.cancel()
        rare.age = None
        if rare.probe is not None:
            rare.probe.stop()
            rare.probe = None
        self.server.caps.closed(self.host)
        self.server.open_connections.discard(self)
        if self.input_guard is not None:
            self.input_guard.stop()
        if self.throttle is not None:
            self.throttle.on_drained = self.throttle.deliver = None
            self.throttle.held = self.throttle.unread = None
        drop_unsent(self.transport)
        if self.inner is not None:
            self.server.forget_preamble(self.inner)
        if before is not Phase.CLOSING and INegotiated.providedBy(self.transport) and (
                before is Phase.HANDSHAKE or _is_tls_error(reason.value)):
            self._log_tls_failure(reason)
        ready, rare.ready = rare.ready, []
        for d in ready:
            d.errback(reason)
        if self.inner is not None:
            self.inner.connectionLost(reason)
        gone, rare.gone = rare.gone, []
        for g in gone:
            g.callback(None)

    def _log_tls_failure(self, reason: Failure) -> None:
        from rpcd.tls.tlsinfo import describe_tls_failure
        side: Literal["client", "server"] = "client" if self.dialled else "server"
        why = describe_tls_failure(reason, side=side, transport=self.transport)
        log.warn("TLS with {peer} failed: {why}", peer=self.peer, why=why)
