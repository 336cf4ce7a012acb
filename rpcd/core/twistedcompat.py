"""
Every use of Twisted's private names outside the socket write path, in one
place, each with a fallback that is correct if Twisted changes (and a canary
in C{tests/test_twistedcompat.py} that fails loudly when it does).

The socket write path (C{dataBuffer}, C{_tempDataLen}, C{writeSomeData},
C{_isSendBufferFull}) stays beside the code that needs its speed:
L{rpcd.server.backpressure} checks for each attribute and falls back to
Twisted's own producer API, and the native protocol's direct write checks
them too (C{_SOCKET_INTERNALS} there).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.client import HTTPConnectionPool

__all__ = ["QuietHTTPConnectionPool", "raise_synchronously", "waiting_for_port"]


def waiting_for_port(listener: Any) -> Deferred[Any] | None:
    """
    The Deferred a started C{StreamServerEndpointService} fires with its
    listening port (its private C{_waitingForPort}).

    @param listener: a L{twisted.application.internet.StreamServerEndpointService}.
    @return: the Deferred, or C{None} when the service has not started or
        Twisted no longer keeps it (callers then do without the port: no
        "listening on" line, no registration by port).
    """
    waiting = getattr(listener, "_waitingForPort", None)
    return waiting if isinstance(waiting, Deferred) else None


def raise_synchronously(listener: Any) -> None:
    """
    Make a C{StreamServerEndpointService} raise from
    C{privilegedStartService} when it cannot listen (its private
    C{_raiseSynchronously}), so twistd stops at start-up instead of logging
    the error and running without the port.

    Without the attribute, Twisted logs the failure; the daemon's own
    C{_waitingForPort} errback (see L{waiting_for_port}) still reports it.

    @param listener: a L{twisted.application.internet.StreamServerEndpointService}.
    """
    listener._raiseSynchronously = True


def _quiet_pool() -> type[HTTPConnectionPool]:
    try:
        from twisted.web.client import _HTTP11ClientFactory
    except ImportError:
        return HTTPConnectionPool  # correct, only noisier: a log line per connection
    if not isinstance(getattr(HTTPConnectionPool, "_factory", None), type):
        return HTTPConnectionPool

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False

    class QuietPool(HTTPConnectionPool):
        """
        One connection per request, without Twisted's "Starting factory" and
        "Stopping factory" log lines for each.
        """

        _factory = QuietFactory

    return QuietPool


QuietHTTPConnectionPool: type[HTTPConnectionPool] = _quiet_pool()
"""An C{HTTPConnectionPool} whose connections do not log their start and stop
(its private C{_factory}, a subclass of C{_HTTP11ClientFactory}); the plain
pool where Twisted has neither."""
