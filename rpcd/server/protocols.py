"""
Which Twisted protocol serves each wire protocol on the server side: the
table the sniffer (L{rpcd.server.sniffer}) and the HTTP protocol's
C{CONNECT /_goRPC_} hand-over (L{rpcd.server.httpserver}) look up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, cast

from twisted.internet.protocol import Protocol

from rpcd.core.loader import load_object
from rpcd.wire import sniff

if TYPE_CHECKING:
    from rpcd.server.factory import RPCServer

__all__ = ["SERVER_PROTOCOLS", "protocol_class"]

# Wire protocol name -> "module:Class" of its server protocol, built as
# Class(server).  Imported on first use so a daemon pays only for what it serves.
#
# What the sniffer asks of such a class (all optional):
#   has_preamble = True   the handshake timeout keeps running after the
#                         hand-over until the protocol calls
#                         server.preamble_done(self) (an HTTP head);
#   dispatcher            a Dispatcher: running handlers keep the connection
#                         from being idle;
#   busy()                true while the protocol has work in progress (open
#                         streams...), which also keeps it from being idle;
#   throttle = None       set to the connection's rpcd.server.backpressure.ReadThrottle
#                         before connectionMade: while throttle.paused, or once
#                         a read's replies exceed throttle.room(), the protocol
#                         holds its requests instead of starting them;
#   replies_drained()     the peer has read its replies: run what was held
#                         (called by the throttle before reading resumes);
#   input_guard = None    set to the connection's rpcd.server.budget.InputGuard before
#                         connectionMade: report unfinished input after each
#                         read with input_guard.update(bytes_held, completed);
#   read_connection_lost()  the peer shut down its write side: answer what was
#                         read, then close (without it, the connection closes
#                         once its queued bytes are sent).
SERVER_PROTOCOLS: dict[str, str] = {
    sniff.NATIVE: "rpcd.server.native:NativeServerProtocol",
    sniff.JSON: "rpcd.server.jsonserver:JSONServerProtocol",
    sniff.HTTP: "rpcd.server.httpserver:HTTPServerProtocol",
    sniff.GOB: "rpcd.server.gobserver:GobServerProtocol",
    sniff.GRPC: "rpcd.server.grpcserver:GrpcServerProtocol",
}


def protocol_class(name: str) -> Callable[[RPCServer], Protocol] | None:
    """
    The server protocol class of a wire protocol, imported on first use.

    @param name: a wire protocol's name (L{rpcd.wire.sniff}).
    @return: its class (called with the L{RPCServer}), or C{None} when
        L{SERVER_PROTOCOLS} has none.
    @raise ValueError: its module or class cannot be imported (L{load_object}).
    """
    path = SERVER_PROTOCOLS.get(name)
    if path is None:
        return None
    return cast("Callable[[RPCServer], Protocol]", load_object(path))
