"""
Every use of Twisted's private names, in one place, each with a fallback
that is correct if Twisted changes (and a canary in
C{tests/test_twistedcompat.py} that fails loudly when it does).

The socket write path of C{twisted.internet.abstract.FileDescriptor}
(C{dataBuffer}, C{offset}, C{_tempDataBuffer}, C{_tempDataLen},
C{_isSendBufferFull}, C{writeSomeData}) serves the write buffer cap
(L{rpcd.server.backpressure}) and the native server's direct send
(L{direct_writer}); without it the cap falls back to Twisted's own
threshold and writes go through C{transport.write}.

The log publisher's observer list (C{LogPublisher._observers}), the file a
C{FileLogObserver} writes (C{_outFile}), the observer a
C{FilteringLogObserver} wraps (C{_observer}) and the time format held in
the closure of C{textFileLogObserver}'s formatter serve twistd's log
handling (L{rpcd.daemon.reload}, L{rpcd.daemon.logtext}); without them the
level filter, log reopening and the faster text log are skipped.
"""

from __future__ import annotations

from types import MethodType
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.tcp import Connection
from twisted.logger import FileLogObserver, FilteringLogObserver, timeFormatRFC3339
from twisted.protocols.policies import ProtocolWrapper

if TYPE_CHECKING:
    from twisted.web.client import HTTPConnectionPool

__all__ = [
    "QuietHTTPConnectionPool",
    "SOCKET_WRITE_INTERNALS",
    "cap_send_buffer",
    "filtered_observer",
    "log_observers",
    "observer_file",
    "text_log_time_format",
    "direct_writer",
    "drop_unsent",
    "queued_bytes",
    "raise_synchronously",
    "socket_transport",
    "waiting_for_port",
]

SOCKET_WRITE_INTERNALS = ("dataBuffer", "offset", "_tempDataBuffer", "_tempDataLen",
                          "_isSendBufferFull", "writeSomeData")
"""The private names of Twisted's socket write path rpcd reads or sets."""


def socket_transport(transport: Any) -> Any:
    """
    @param transport: a protocol's transport (under TLS: the TLS one).
    @return: the Twisted C{FileDescriptor} under it (under TLS: the socket
        transport below), when it has every name of
        L{SOCKET_WRITE_INTERNALS}; None otherwise (test transports, other
        reactors, a Twisted that renamed them).
    """
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    for name in SOCKET_WRITE_INTERNALS:
        if not hasattr(transport, name):
            return None
    if not callable(transport._isSendBufferFull):
        return None
    return transport


def queued_bytes(sock: Any) -> int:
    """
    @param sock: a transport from L{socket_transport}.
    @return: the bytes waiting in its write buffer.
    """
    return len(sock.dataBuffer) - sock.offset + sock._tempDataLen


def cap_send_buffer(sock: Any, limit: int) -> None:
    """
    Make a socket transport ask its streaming producer to pause once more
    than C{limit} bytes wait in its write buffer.

    Twisted pauses at C{bufferSize} bytes (64 KiB), which is also how much
    each read asks for, so raising C{bufferSize} would make every C{recv}
    allocate C{limit} bytes; Twisted offers no other knob.  So this
    replaces C{_isSendBufferFull} on this one transport: the one method
    rpcd still sets on an instance, here, with its canary.

    The check is one function per distinct C{limit}, shared by every
    connection, bound to the transport (a bound method: 64 bytes per
    connection, where a closure over it cost 288).

    @param sock: a transport from L{socket_transport}.
    @param limit: the cap in bytes.
    """
    sock._isSendBufferFull = MethodType(_cap_check(limit), sock)


_CAP_CHECKS: dict[int, Callable[[Any], bool]] = {}


def _cap_check(limit: int) -> Callable[[Any], bool]:
    """
    @param limit: the cap in bytes.
    @return: C{is_full(sock)}, the same function for the same limit.
    """
    known = _CAP_CHECKS.get(limit)
    if known is not None:
        return known

    def is_full(sock: Any) -> bool:
        return (len(sock.dataBuffer) - sock.offset + sock._tempDataLen) > limit

    if len(_CAP_CHECKS) < 64:  # a few limits in a process's life (reloads)
        _CAP_CHECKS[limit] = is_full
    return is_full


def drop_unsent(sock: Any) -> None:
    """
    Free the bytes a lost socket transport never sent (Twisted keeps them
    until the transport itself is freed).

    @param sock: a transport from L{socket_transport}, no longer connected.
    """
    sock.dataBuffer = b""
    sock.offset = 0
    sock._tempDataBuffer = []
    sock._tempDataLen = 0


def direct_writer(transport: Any) -> Callable[[bytes], None] | None:
    """
    A write for a TCP (or Unix) socket transport that sends at once when
    nothing is queued.

    C{transport.write} only queues the bytes and asks the reactor to
    report the socket writable; the send then costs a second reactor
    iteration and two C{epoll_ctl} calls.  Sending with Twisted's own
    C{writeSomeData} while nothing is queued keeps the order of everything
    written; whatever is not sent at once, every write on a closing
    connection, and writes larger than one send (C{SEND_LIMIT}: most of
    them would be queued anyway, after a copy) go through
    C{transport.write}.

    The write is a function shared by every connection (one per distinct
    C{SEND_LIMIT}) bound to the transport: 64 bytes per connection, where
    a closure over it cost 400.

    @param transport: a protocol's transport.
    @return: the write, or None for a transport that is not a Twisted
        socket C{Connection} with the internals it needs (then use
        C{transport.write}).
    """
    if not isinstance(transport, Connection) or socket_transport(transport) is None:
        return None
    return MethodType(_direct_send(transport.SEND_LIMIT), transport)


_DIRECT_SENDS: dict[int, Callable[[Any, bytes], None]] = {}


def _direct_send(send_limit: int) -> Callable[[Any, bytes], None]:
    """
    @param send_limit: the transport's C{SEND_LIMIT}.
    @return: C{send(sock, data)} for L{direct_writer}, the same function
        for the same limit.
    """
    known = _DIRECT_SENDS.get(send_limit)
    if known is not None:
        return known

    def send(sock: Any, data: bytes) -> None:
        if not sock._tempDataLen and not sock.dataBuffer and sock.connected \
                and not sock.disconnecting and len(data) <= send_limit:
            sent = sock.writeSomeData(data)
            if type(sent) is int:
                if sent == len(data):
                    return
                data = data[sent:]
            # else the connection is lost: transport.write drops the bytes
            # or queues them for the doWrite that finds out.
        sock.write(data)

    if len(_DIRECT_SENDS) < 64:
        _DIRECT_SENDS[send_limit] = send
    return send


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
    from twisted.web.client import HTTPConnectionPool
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


if TYPE_CHECKING:
    QuietHTTPConnectionPool: type[HTTPConnectionPool]
    """An C{HTTPConnectionPool} whose connections do not log their start and
    stop (its private C{_factory}, a subclass of C{_HTTP11ClientFactory}); the
    plain pool where Twisted has neither."""


TEXT_FORMATTER = "textFileLogObserver.<locals>.formatEvent"
"""The C{__qualname__} of the formatter C{textFileLogObserver} builds."""

NOT_TEXT = object()
"""What L{text_log_time_format} returns for an observer it cannot read."""


def log_observers(publisher: Any) -> list[Any] | None:
    """
    @return: a C{LogPublisher}'s own list of observers (its private
        C{_observers}), to be changed in place; None where it has none.
    """
    observers = getattr(publisher, "_observers", None)
    return observers if isinstance(observers, list) else None


def filtered_observer(observer: Any) -> Any:
    """
    @return: the observer under any C{FilteringLogObserver}s (their private
        C{_observer}); the filter itself where that name is gone.
    """
    while isinstance(observer, FilteringLogObserver):
        inner = getattr(observer, "_observer", None)
        if inner is None:
            return observer
        observer = inner
    return observer


def observer_file(observer: Any) -> Any | None:
    """
    @return: the file a C{FileLogObserver} writes (its private
        C{_outFile}), or None.
    """
    if not isinstance(observer, FileLogObserver):
        return None
    return getattr(observer, "_outFile", None)


def text_log_time_format(observer: Any) -> Any:
    """
    @return: the time format (a C{strftime} string, or None for C{"-"}) of
        an observer made by C{textFileLogObserver}, read from its
        formatter's closure; L{NOT_TEXT} for any other observer.
    """
    if not isinstance(observer, FileLogObserver):
        return NOT_TEXT
    formatter = getattr(observer, "formatEvent", None)
    if getattr(formatter, "__qualname__", None) != TEXT_FORMATTER:
        return NOT_TEXT
    code = getattr(formatter, "__code__", None)
    cells = getattr(formatter, "__closure__", None) or ()
    names = code.co_freevars if code is not None else ()
    values = dict(zip(names, (cell.cell_contents for cell in cells)))
    time_format = values.get("timeFormat", timeFormatRFC3339)
    if time_format is not None and not isinstance(time_format, str):
        return NOT_TEXT
    return time_format


def __getattr__(name: str) -> Any:
    # QuietHTTPConnectionPool is built on first use: twisted.web.client (and
    # with it twisted.web.http and h2) is not imported by every daemon and
    # command that loads this module, only by what makes HTTP requests.
    if name == "QuietHTTPConnectionPool":
        pool = globals()[name] = _quiet_pool()
        return pool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
