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
