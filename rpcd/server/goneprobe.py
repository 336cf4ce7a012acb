"""
Notice a peer that closed its socket while its calls still run.

A peer's FIN reads the same whether it shut down only its sending side (a
half-close: it still reads the answers) or closed its socket (it reads
nothing more).  rpcd answers a half-close (L{rpcd.server.sniffer}), so a
connection whose peer has gone stays open while its calls run: a long poll
such as C{KVStoreService.Watch} held it until the call ended or a write to
the dead peer failed, up to a keepalive interval later.

Only bytes sent tell them apart: a closed peer's host answers data with a
reset, a half-closed peer reads it.  Once reading has ended with calls
running, L{GonePeerProbe} pokes the peer every C{interval} seconds with
something its protocol lets it ignore (a native PING: a half-closed
peer cannot answer it, and nothing waits for the answer), and
polls the socket as often for what the kernel learnt: a hang-up or an
error means the peer is gone.  A Unix socket needs no poke: it hangs up as
soon as its peer closes.

Go's gob and jsonrpc, and HTTP, have no such message.  For them the kernel
sends TCP keepalive probes as often instead; a closed peer's host
acknowledges those as long as it keeps the closed socket's state (Linux:
C{tcp_fin_timeout}, 60 s) and resets after, and no answer at all ends the
connection after L{PROBES} probes (a host that vanished).

gRPC and TLS connections take no half-close (they end at the peer's FIN),
so nothing is probed there.
"""

from __future__ import annotations

import select
import socket
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from rpcd.wire.sockopts import set_keepalive_timing

#: Unanswered keepalive probes before the kernel ends the connection.
PROBES = 5

_HAS_POLL = hasattr(select, "poll")  # not on Windows: nothing is noticed there
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL if _HAS_POLL else 0


def handle_of(transport: Any) -> socket.socket | None:
    """
    @param transport: a connection's transport (under TLS: the TLS one).
    @return: the socket under it, or None (test transports, other reactors).
    """
    while True:
        handle = getattr(transport, "getHandle", None)
        if handle is None:
            return None
        found = handle()
        if isinstance(found, socket.socket):
            return found
        inner = getattr(transport, "transport", None)
        if inner is None or inner is transport:
            return None
        transport = inner


def hung_up(sock: socket.socket) -> bool:
    """
    @param sock: a connected stream socket.
    @return: whether the kernel says its peer is gone (reset, timed out, or
        closed a Unix socket), without reading or writing anything (always
        False where there is no C{poll}).
    """
    if not _HAS_POLL:
        return False
    try:
        fileno = sock.fileno()
    except OSError:
        return True
    if fileno < 0:
        return True
    poller = select.poll()
    poller.register(fileno, 0)  # hang-ups and errors are always reported
    return any(events & _GONE for _, events in poller.poll(0))


def probe_often(sock: socket.socket, interval: float) -> None:
    """
    Ask the kernel for a TCP keepalive probe after C{interval} quiet
    seconds and then one every C{interval} seconds (whole seconds, at least
    one; options a platform lacks are skipped).

    @param sock: a connected socket; anything but TCP is left alone.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    seconds = max(1, round(interval))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        return
    set_keepalive_timing(sock, seconds, seconds, PROBES)


def give_up_after(sock: socket.socket, seconds: float) -> None:
    """
    Ask the kernel to end the connection once bytes sent have gone
    unacknowledged for C{seconds} (C{TCP_USER_TIMEOUT}, where the platform
    has it): a host that vanished answers the probe's PINGs with nothing.

    @param sock: a connected socket; anything but TCP is left alone.
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1000, round(seconds * 1000)))
    except OSError:
        pass


class GonePeerProbe:
    """
    Check every C{interval} seconds whether a half-closed connection's peer
    has closed its socket, and say so once.

    @ivar gone: called once, with a reason, when the peer is gone.
    """

    __slots__ = ("_clock", "_sock", "_interval", "gone", "_poke", "_timer")

    def __init__(self, clock: IReactorTime, sock: socket.socket, interval: float,
                 gone: Callable[[str], None], poke: Callable[[], None] | None = None) -> None:
        """
        @param clock: schedules the checks.
        @param sock: the connection's socket.
        @param interval: seconds between checks (and pokes or keepalive
            probes).
        @param gone: see L{gone}.
        @param poke: writes something the peer may ignore (a PING), or None
            to rely on TCP keepalive probes.
        """
        self._clock = clock
        self._sock = sock
        self._interval = interval
        self.gone = gone
        self._poke = poke
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        """
        Poke the peer (or ask for keepalive probes) and schedule the first
        check.
        """
        if self._poke is None:
            probe_often(self._sock, self._interval)
        else:
            self._poke()
        self._timer = self._clock.callLater(self._interval, self._check)

    def stop(self) -> None:
        """
        Check no more (the connection is lost).
        """
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _check(self) -> None:
        self._timer = None
        if hung_up(self._sock):
            self.gone("the peer closed its socket (after ending its requests)")
            return
        if self._poke is not None:
            self._poke()
        self._timer = self._clock.callLater(self._interval, self._check)
