"""
Keepalive: noticing a peer that vanished, and a peer that pings too often.

A connection whose peer vanished without a FIN or RST (a firewall dropped
its state, a host lost power) looks, from this side, like a quiet one; one
that holds an open stream or a long-poll C{Watch} is busy, not idle, so the
idle timeout never closes it.  L{KeepAlive} pings such a connection once it
has been quiet for C{keepalive_interval} seconds and closes it when nothing
comes back within C{keepalive_timeout}.  A connection with nothing running
is left to the idle timeout, where there is one: the PONG is a read, and
would keep an idle connection open for ever.  Any bytes read prove the peer
alive (the PONG among them), so the cost on the hot path is the time of the
last read, which the sniffer notes already for the idle timeout; one timer
per connection checks it, rescheduled only when it fires.

L{PingStrikes} is the other side (gRPC's ping strikes): a peer whose PINGs
come less than C{keepalive_min_ping_interval} apart more than
C{keepalive_max_ping_strikes} times in a row gets a GOAWAY.

Both are plain objects on a clock, tested without a reactor.  TCP keepalive
(L{rpcd.wire.sockopts.set_keepalive}) is the kernel's version for every
connection kind; it takes hours by default and needs no peer cooperation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from rpcd.errors import ProtocolError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["KeepAlive", "PingStrikes", "TooManyPings", "always"]


def always() -> bool:
    """
    @return: True (a L{KeepAlive} whose connection always needs PINGs when quiet).
    """
    return True


class KeepAlive:
    """
    Pings a quiet connection and closes it when no answer comes.

    @ivar pings_sent: PINGs sent since the start.
    """

    __slots__ = ("clock", "interval", "timeout", "last_read", "ping", "expired", "needed",
                 "pings_sent", "_ping_at", "_timer")

    def __init__(self, clock: IReactorTime, interval: float, timeout: float,
                 last_read: Callable[[], float], ping: Callable[[int], None],
                 expired: Callable[[str], None],
                 needed: Callable[[], bool] = always) -> None:
        """
        @param clock: the reactor's clock.
        @param interval: seconds of quiet before a PING (C{keepalive_interval}).
        @param timeout: seconds to wait for any bytes after it
            (C{keepalive_timeout}).
        @param last_read: the clock time of the connection's last read.
        @param ping: sends a PING with this opaque value.
        @param expired: closes the connection, logging the reason given.
        @param needed: whether a quiet connection needs a PING now; the
            sniffer says no for one without calls or streams that the idle
            timeout will close (a PONG is a read, so pinging it would keep
            it open for ever).
        """
        self.clock = clock
        self.interval = interval
        self.timeout = timeout
        self.last_read = last_read
        self.ping = ping
        self.expired = expired
        self.needed = needed
        self.pings_sent = 0
        self._ping_at: float | None = None
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        """
        Start watching (the connection has just been handed over).
        """
        if self.interval > 0 and self._timer is None:
            self._timer = self.clock.callLater(self.interval, self._check)

    def stop(self) -> None:
        """
        Stop watching (the connection is lost).
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _check(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        last = self.last_read()
        if self._ping_at is not None:
            if last >= self._ping_at:
                self._ping_at = None  # the peer answered, or sent anything
            elif now >= self._ping_at + self.timeout:
                self.expired(f"no answer to a PING within {self.timeout:g} s after "
                             f"{self.interval:g} s of quiet (limits.keepalive_timeout)")
                return
            else:
                self._timer = self.clock.callLater(self._ping_at + self.timeout - now, self._check)
                return
        quiet = now - last
        if quiet >= self.interval and not self.needed():
            self._timer = self.clock.callLater(self.interval, self._check)
        elif quiet >= self.interval:
            self._ping_at = now
            self.pings_sent += 1
            self.ping(self.pings_sent)  # the opaque value: 1, 2, ...
            self._timer = self.clock.callLater(self.timeout if self.timeout > 0 else self.interval,
                                               self._check)
        else:
            self._timer = self.clock.callLater(self.interval - quiet, self._check)


class TooManyPings(ProtocolError):
    """
    A peer pinged more often than C{keepalive_min_ping_interval} allows;
    answered with a GOAWAY (RESOURCE_EXHAUSTED).
    """


class PingStrikes:
    """
    Counts the PINGs of a peer that come too close together.
    """

    def __init__(self, clock: IReactorTime, min_interval: float, max_strikes: int) -> None:
        """
        @param clock: the reactor's clock.
        @param min_interval: the least seconds between two PINGs that is not
            a strike (C{keepalive_min_ping_interval}; 0: no check).
        @param max_strikes: strikes in a row allowed
            (C{keepalive_max_ping_strikes}).
        """
        self.clock = clock
        self.min_interval = min_interval
        self.max_strikes = max_strikes
        self.strikes = 0
        self._last: float | None = None

    def ping(self) -> None:
        """
        Count a PING from the peer.

        @raise TooManyPings: one strike too many.
        """
        if not self.min_interval:
            return
        now = self.clock.seconds()
        last, self._last = self._last, now
        if last is None or now - last >= self.min_interval:
            self.strikes = 0
            return
        self.strikes += 1
        if self.strikes > self.max_strikes:
            raise TooManyPings(f"too many pings: more than {self.max_strikes} in a row less than "
                               f"{self.min_interval:g} s apart (limits.keepalive_min_ping_interval)")
