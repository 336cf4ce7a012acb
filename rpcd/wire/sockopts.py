"""
Socket options rpcd sets on every connection.
"""

from __future__ import annotations

from typing import Any


def set_no_delay(transport: Any) -> None:
    """
    Turn Nagle's algorithm off, as Go does on every TCP connection.

    RPC peers keep calls in flight and wait for small replies, which Nagle's
    algorithm would hold back until the previous segment is acknowledged.
    rpcd already writes each read's replies at once, so nothing is lost.

    @param transport: a connection's transport; anything that is not a TCP
        socket (a Unix socket, TLS over a test transport) is left alone.
    """
    set_option = getattr(transport, "setTcpNoDelay", None)
    if set_option is not None:
        try:
            set_option(True)
        except Exception:
            pass


#: TCP keepalive: first probe after this many idle seconds, then one every
#: C{KEEPALIVE_PROBE_INTERVAL}, the connection dropped after
#: C{KEEPALIVE_PROBES} unanswered (about 3 minutes to notice a dead peer).
KEEPALIVE_IDLE = 120
KEEPALIVE_PROBE_INTERVAL = 15
KEEPALIVE_PROBES = 4


def set_keepalive(transport: Any) -> None:
    """
    Turn TCP keepalive on, with probes after two minutes of silence rather
    than the kernel's two hours, so that a peer that vanished (power loss,
    a firewall that dropped the connection's state) is noticed on every
    connection kind, even where no protocol-level PING exists.

    @param transport: a connection's transport; anything that is not a TCP
        socket is left alone.
    """
    set_option = getattr(transport, "setTcpKeepAlive", None)
    if set_option is None:
        return
    try:
        set_option(True)
    except Exception:
        return
    handle = getattr(transport, "getHandle", None)
    sock = handle() if handle is not None else None
    if sock is None or not hasattr(sock, "setsockopt"):
        return
    set_keepalive_timing(sock, KEEPALIVE_IDLE, KEEPALIVE_PROBE_INTERVAL, KEEPALIVE_PROBES)


def set_keepalive_timing(sock: Any, idle: int, interval: int, probes: int) -> None:
    """
    Set when a TCP socket's keepalive probes go (the options a platform
    lacks, or refuses, are skipped).

    @param sock: a TCP socket with keepalive on.
    @param idle: quiet seconds before the first probe.
    @param interval: seconds between probes.
    @param probes: unanswered probes before the connection is dropped.
    """
    import socket
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", probes)):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass
