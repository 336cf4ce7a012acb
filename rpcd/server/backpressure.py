"""
The write buffer cap: a peer that does not read its replies stops getting
calls started for it.

While more than C{limits.write_buffer_bytes} wait to be sent to a peer, its
connection stops reading (a Twisted push producer registered with the
transport, L{ReadThrottle}) and its wire protocol stops I{starting} calls:
requests already split from a read are held, not dispatched (see
L{ReadThrottle.room} and L{ReadThrottle.paused}).  Once the buffer has
drained, the wire protocol runs what it held (L{ReadThrottle.on_drained})
and reading resumes.  Calls already running still finish and queue their
replies; there are at most C{limits.max_calls_per_connection} of them.  A
reply larger than the cap still goes out, one at a time.

The throttle also takes part in per-turn fairness (L{rpcd.server.fairness.TurnTaking}):
with a scheduler in C{turns}, each read goes through C{received}, which may
queue the connection; it is then L{paused} (reading stopped, nothing parsed
or started: the bytes wait in C{unread}) until its turn comes, when the
bytes go to the wire protocol and C{on_drained} runs what it held, as after
a drained buffer.

L{calls_ended} serves the half-close: a peer that shuts down its write side
is answered, then the connection closes.
"""

from __future__ import annotations

from typing import Any, Callable, cast

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IConsumer, INegotiated, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from rpcd.core.session import describe_address
from rpcd.server.fairness import TurnTaking
from rpcd.core import twistedcompat
from rpcd.core.twistedcompat import queued_bytes, socket_transport

log = Logger()

UNCAPPED = 1 << 62
"""What L{ReadThrottle.room} says when there is no cap."""


@implementer(IPushProducer)
class ReadThrottle(TurnTaking):
    """
    Stops reading a connection's requests while its transport's write buffer
    is over the cap (the transport calls L{pauseProducing}), and reads again
    once it has drained (L{resumeProducing}).

    A wire protocol asks L{room} once per read how many more bytes of
    replies it may queue; the requests after the one that crosses it, and
    every request read while L{paused}, it gives to L{hold}.  When the
    buffer has drained, L{on_drained} (the protocol's) runs them with
    L{run_held}.

    @ivar paused: whether the peer's replies are over the cap now, or the
        connection waits for its turn (reading is stopped, and no call may
        start).
    @ivar turns: the daemon's turn scheduler, or None.
    @ivar finish: the virtual finish time (the scheduler's).
    @ivar last_cost: the seconds its last piece of work took (the scheduler's).
    @ivar in_queue: whether the connection waits for its turn.
    @ivar backlog: the bytes read when it last asked for a turn (what
        predicts its first one).
    @ivar deliver: the wire protocol's C{dataReceived}, which
        L{received} passes reads on to.
    @ivar unread: reads kept unparsed while the connection waits for its
        turn, or None.
    @ivar pauses: how many times reading was stopped.
    @ivar limit: the cap in bytes (L{UNCAPPED} for none).
    @ivar on_drained: called with no arguments when the buffer has drained,
        before reading resumes; it may write (and so pause again).
    @ivar reading_ended: the peer shut down its write side: reading never
        resumes.
    @ivar held: requests read but not started, in order, or None.
    @ivar held_error: what broke the stream after them, or None.
    """

    # (transport, paused, held and _write_full: TurnTaking's slots.)
    __slots__ = ("peer", "pauses", "limit", "on_drained", "reading_ended", "held_error",
                 "_running_held", "_socket")

    def __init__(self, transport: Any, peer: str | None = None, limit: int = UNCAPPED) -> None:
        """
        @param transport: the connection's transport.
        @param peer: the peer's address text, for the log; None to describe
            the transport's peer when the log needs it.
        @param limit: the cap in bytes.
        """
        self.transport = transport
        self.peer = peer
        self.paused = False
        self.pauses = 0
        self.limit = limit
        self.on_drained: Callable[[], None] | None = None
        self.reading_ended = False
        self.held: list[Any] | None = None
        self.held_error: Any = None
        self._running_held = False
        self._socket = socket_transport(transport)
        self._write_full = False
        self.init_turns()

    def hold(self, requests: list[Any], error: Any = None) -> None:
        """
        Keep requests until the peer has read its replies.

        @param requests: the requests, in order (after any held already).
        @param error: what broke the stream after them, if it broke; the
            requests of later reads are then dropped.
        """
        if self.held_error is not None:
            return
        if self.held is None:
            self.held = requests
        else:
            self.held.extend(requests)
        self.held_error = error

    def run_held(self, run: Callable[[list[Any], Any], None]) -> None:
        """
        Start the held requests, while the peer's replies stay under the
        cap; C{run} gives back to L{hold} those it does not start.

        @param run: called with the held requests and the error after them.
        """
        if self._running_held:
            return  # called from within the loop below: it goes on
        self._running_held = True
        try:
            while self.held is not None and not self.paused and not self.wait_turn():
                held, error = self.held, self.held_error
                self.held = self.held_error = None
                run(held, error)
        finally:
            self._running_held = False

    def queued(self) -> int:
        """
        @return: bytes waiting in the transport's write buffer (0 for a
            transport that does not say).
        """
        sock = self._socket
        if sock is None:
            return 0
        return queued_bytes(sock)

    def room(self) -> int:
        """
        @return: how many more bytes of replies may be queued before calls
            must stop starting (zero or less: none).
        """
        if self.paused:
            return 0
        sock = self._socket
        if sock is None:
            return self.limit
        return self.limit - queued_bytes(sock)

    def pauseProducing(self) -> None:
        if self._write_full:
            return
        self._write_full = True
        self.pauses += 1
        if self.pauses == 1:
            peer = self.peer
            if peer is None:
                peer = describe_address(self.transport.getPeer())[0]
            log.info("{peer} is not reading its replies: no more of its requests are read "
                     "or started until they drain (limits.write_buffer_bytes)", peer=peer)
        if not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self._write_full:
            return
        self._write_full = False
        if not self.in_queue:
            self._resume()

    def _resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        on_drained = self.on_drained
        if on_drained is not None:
            on_drained()
        if self.unread is not None:
            self._feed()
        if not self.paused and not self.reading_ended:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.paused = self._write_full = False
        self.on_drained = self.deliver = self._read_end = None
        self.held = self.held_error = self.unread = None


def set_write_cap(transport: Any, limit: int) -> bool:
    """
    Make a socket transport ask its producer to pause once more than
    C{limit} bytes wait in its write buffer (under TLS: the socket
    transport below it; see L{rpcd.core.twistedcompat.cap_send_buffer}).

    @param transport: the protocol's transport.
    @param limit: the cap in bytes.
    @return: whether the transport is one whose threshold could be set
        (a Twisted C{FileDescriptor}); other transports keep their own.
    """
    sock = socket_transport(transport)
    if sock is None:
        return False
    twistedcompat.cap_send_buffer(sock, limit)
    return True


def drop_unsent(transport: Any) -> None:
    """
    Free the bytes a lost connection never sent.

    Twisted keeps them in the socket transport after the connection is
    lost, until the transport itself is freed; the protocol objects that
    still point at it form reference cycles, which wait for the garbage
    collector.  For a peer that did not read, that is up to the write cap
    and a reply per connection.

    @param transport: the lost connection's transport.
    """
    sock = socket_transport(transport)
    if sock is None or sock.connected:
        return
    twistedcompat.drop_unsent(sock)


def calls_ended(running: dict[Any, Deferred[Any]]) -> Deferred[None]:
    """
    Wait for calls to end, for a half-closed connection that closes once
    it has answered them.

    Call it after the protocol has added its reply callbacks to each call
    (it always has: they are added when the call starts), so that the
    replies are written when this fires.

    @param running: a dispatcher's running calls (call key to Deferred).
    @return: a Deferred firing with None once every call running now has
        ended; it never fails, and leaves the calls' results unchanged.
    """
    waiting = list(running.values())
    done: Deferred[None] = Deferred()
    if not waiting:
        done.callback(None)
        return done
    gathered: Deferred[Any] = DeferredList(waiting)
    gathered.addBoth(lambda _: done.callback(None))
    return done


def lose_connection(transport: Any) -> None:
    """
    Close a connection once its queued bytes are sent, unregistering the
    producer on a TLS transport first (the read throttle): Twisted's TLS
    transport begins its close only once no producer is registered, so an
    idle TLS connection told to close would stay open until its peer
    closed it (a drain would wait for C{shutdown_grace}).

    @param transport: the connection's transport (socket or TLS).
    """
    if INegotiated.providedBy(transport):
        cast(IConsumer, transport).unregisterProducer()
    transport.loseConnection()


def take_over_producer(transport: Any, producer: IPushProducer) -> Any:
    """
    Register a push producer on a transport that may hold one already (the
    read throttle): the one there is unregistered and returned, so that the
    new one can pass every call on to it.

    A socket transport names its producer C{producer}; Twisted's TLS
    transport keeps it wrapped in C{_producer}.

    @param transport: a socket or TLS transport (a consumer, though
        C{ITransport} does not say so).
    @param producer: the streaming producer to register.
    @return: the producer registered before, or None.
    """
    consumer = cast(IConsumer, transport)
    previous = getattr(transport, "producer", None) or getattr(transport, "_producer", None)
    previous = getattr(previous, "_producer", None) or previous
    if previous is not None:
        consumer.unregisterProducer()
    consumer.registerProducer(producer, True)
    return previous
