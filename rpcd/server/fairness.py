"""
Per-turn fairness: one connection's burst cannot hold the reactor.

Every wire protocol asks L{TurnScheduler.may_run} before it starts the
calls of a read (and before each further batch of requests it held), and
says L{TurnScheduler.done} after.  Work runs at once while the current
I{turn} has lasted less than C{slice_seconds}.  Once work overran the slice
(noticed by L{TurnScheduler.done}), a connection that asks is queued
instead, until the next reactor iteration (C{callLater(0)}, so after the
reactor has polled every socket once): it stops reading and keeps what it
read unparsed (L{TurnTaking}, the half of
L{rpcd.backpressure.ReadThrottle} that does this), and the next iteration
grants turns to the queued ones.  An unloaded daemon sets no timer.

Queued connections are served in weighted fair queueing order: each
connection is charged the time from its check to the end of its work (its
virtual finish time grows by it), and the queued connection whose turn
would I{end} first in virtual time goes first, its turn's cost predicted by
its last one.  A connection never charged is predicted by the requests it
has waiting (its C{backlog}): a slice for each L{FAIR_CHUNK} bytes of them,
from L{NEW_MIN_SLICES} to L{NEW_MAX_SLICES} slices.  So a connection that
sends one small call (a health probe) while fifty others wait to have a
3 MB reply encoded goes ahead of them, instead of waiting behind a round of
them, even when they all connected at once (a flood's new connections,
each with a pipeline of requests waiting, are predicted heavy before their
first turn has shown it); and a connection that has had more than its
share waits behind those that had less.  A single call is never split:
the slice bounds how long the queue waits beyond the call running when the
slice ends.  While others wait, a read is passed on in pieces
(L{FAIR_CHUNK}), since parsing many pipelined requests is work too.

With C{slice_seconds} 0 nothing is ever queued.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime


FAIR_CHUNK = 4096
"""The least bytes of a read passed to the wire protocol at a time while
other connections wait for their turn (L{TurnTaking.received}); the
piece doubles while parsing it stays cheap (bulk bytes of a large frame),
up to L{FAIR_CHUNK_MAX}."""

FAIR_CHUNK_MAX = 1 << 20
"""The most bytes passed on at a time while others wait."""

NEW_MIN_SLICES = 1 / 16
"""The least turn predicted for a connection never charged (one small
request waiting), in slices."""

NEW_MAX_SLICES = 4.0
"""The longest turn predicted for a connection never charged (a pipeline
of requests waiting), in slices: a turn can last a whole call past the
slice, and one call can encode a reply of megabytes."""


class Participant(Protocol):
    """
    What the scheduler needs of a connection (L{rpcd.backpressure.ReadThrottle},
    L{Waiter}).

    @ivar finish: the connection's virtual finish time (the scheduler's).
    @ivar last_cost: the seconds its last piece of work took, or None
        (the scheduler's).
    @ivar in_queue: whether it waits for a turn now (the scheduler's).
    @ivar backlog: the bytes of requests it has waiting (read, not yet
        served), as it last said before asking for a turn: what predicts
        its first turn (the connection's).
    """

    finish: float
    last_cost: float | None
    in_queue: bool
    backlog: int

    def turn_granted(self) -> None:
        """
        The connection's turn: go on with the work it held (asking
        L{TurnScheduler.may_run} again before each further piece).
        """


class Waiter:
    """
    A participant for a protocol without a read throttle (HTTP): calls a
    function when its turn comes.

    @ivar finish: the virtual finish time (the scheduler's).
    @ivar in_queue: whether it waits for a turn now.
    @ivar backlog: the bytes of requests waiting (the protocol sets it
        before it asks for a turn).
    """

    def __init__(self, granted: Callable[[], None]) -> None:
        """
        @param granted: called with no arguments when the turn comes.
        """
        self.finish = 0.0
        self.last_cost: float | None = None
        self.in_queue = False
        self.backlog = 0
        self._granted: Callable[[], None] | None = granted

    def turn_granted(self) -> None:
        granted = self._granted
        if granted is not None:
            granted()

    def forget(self) -> None:
        """The connection is gone: a turn granted later does nothing."""
        self._granted = None


class TurnScheduler:
    """
    Shares the reactor between connections in turns (see the module).

    @ivar slice_seconds: how long a turn lasts before asking connections
        are queued (0: never).
    @ivar turns: how many turns were granted to queued connections.
    @ivar deferrals: how many times a connection was queued.
    """

    def __init__(self, clock: IReactorTime, slice_seconds: float = 0.01,
                 timer: Callable[[], float] | None = None) -> None:
        """
        @param clock: schedules the next turn (C{callLater(0)}).
        @param slice_seconds: the turn's length.
        @param timer: measures the time work takes; C{clock.seconds} by
            default (deterministic under a test's C{Clock}).  The daemon
            gives C{time.thread_time}: the reactor thread's CPU time, which
            a busy machine does not inflate, so that a cheap call stays
            cheap in the accounts while other processes hold the CPU.
        """
        self.clock = clock
        self.slice_seconds = slice_seconds
        self.turns = 0
        self.deferrals = 0
        self._timer = timer
        self._vtime = 0.0
        self._seq = 0
        # (predicted virtual finish, order, virtual start, connection)
        self._queue: list[tuple[float, int, float, Participant]] = []
        self._current: Participant | None = None
        self._mark = 0.0
        self._turn_start = 0.0
        self._next: IDelayedCall | None = None

    def now(self) -> float:
        """@return: the time on the scheduler's timer."""
        timer = self._timer
        return timer() if timer is not None else self.clock.seconds()

    def waiting(self) -> int:
        """@return: how many connections wait for a turn."""
        return len(self._queue)

    def may_run(self, who: Participant) -> bool:
        """
        Ask whether a connection may start more work now.

        @param who: the connection.
        @return: True to go on; False if it must wait (it is queued, and
            its C{turn_granted} is called later).
        """
        if not self.slice_seconds:
            return True
        now = self.now()
        if self._current is not who:
            self._current = who
            self._mark = now
        if who.in_queue:
            return False
        if now - self._turn_start >= self.slice_seconds:
            if self._next is None:
                # No turn was used up in this reactor iteration (L{done}
                # marks one that is): a new turn.  No timer is set on this
                # path, the one every read of an unloaded daemon takes.
                self._turn_start = now
            else:
                self._enqueue(who)
                return False
        # Virtual time is the start of the work being served.
        start = self._start(who)
        if start > self._vtime:
            self._vtime = start
        return True

    def _start(self, who: Participant) -> float:
        """
        @return: the virtual start of a connection's next piece of work:
            its last finish, but no earlier than virtual time and no more
            than half a slice after it (what a connection had beyond that
            is forgotten, so that a light connection's past calls never
            put it behind fresh heavy ones).
        """
        vtime = self._vtime
        start = min(who.finish, vtime + self.slice_seconds / 2)
        return vtime if start < vtime else start

    def done(self, who: Participant) -> None:
        """
        A connection has finished the work it asked to do: charge it the
        time since it asked.

        @param who: the connection.
        """
        if self._current is who:
            self._charge()

    def requeue(self, who: Participant) -> None:
        """
        Queue a connection that has more work but must let others go first.

        @param who: the connection; its C{turn_granted} is called later.
        """
        if who.in_queue:
            return
        self._enqueue(who)
        if self._next is None:
            self._next = self.clock.callLater(0, self._next_turn)

    def _enqueue(self, who: Participant) -> None:
        self.deferrals += 1
        who.in_queue = True
        self._seq += 1
        start = self._start(who)
        cost = who.last_cost
        if cost is None:
            cost = self.predict_first(who.backlog)
        heapq.heappush(self._queue, (start + cost, self._seq, start, who))

    def predict_first(self, backlog: int) -> float:
        """
        Predict the first turn of a connection never charged.

        @param backlog: the bytes of requests it has waiting.
        @return: the seconds its turn is predicted to take: a slice for each
            L{FAIR_CHUNK} bytes, from L{NEW_MIN_SLICES} to L{NEW_MAX_SLICES}
            slices.
        """
        slices = min(max(backlog / FAIR_CHUNK, NEW_MIN_SLICES), NEW_MAX_SLICES)
        return self.slice_seconds * slices

    def _charge(self) -> None:
        current = self._current
        if current is not None:
            now = self.now()
            cost = now - self._mark
            current.finish = max(current.finish, self._vtime) + cost
            current.last_cost = cost
            if self._next is None and now - self._turn_start >= self.slice_seconds:
                # This iteration's turn is used up: until the next one
                # (after the reactor has polled), connections that ask wait.
                self._next = self.clock.callLater(0, self._next_turn)
        self._current = None

    def _next_turn(self) -> None:
        """
        A new reactor iteration: grant turns to the queued connections, in
        order, until the slice is used up.
        """
        self._charge()  # the iteration before ends here
        self._next = None
        queue = self._queue
        if not queue:
            return
        timer = self.now
        self._turn_start = timer()
        self._next = self.clock.callLater(0, self._next_turn)
        while True:  # at least one turn, however short the slice
            _, _, start, who = heapq.heappop(queue)
            who.in_queue = False
            self._vtime = max(self._vtime, start)
            self.turns += 1
            self._current = who
            self._mark = timer()
            who.turn_granted()
            self._charge()
            if not queue or timer() - self._turn_start >= self.slice_seconds:
                break

    def stop(self) -> None:
        """Forget every waiting connection and the pending turn (server shutdown)."""
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        for _, _, _, who in self._queue:
            who.in_queue = False
        self._queue = []
        self._current = None


class TurnTaking:
    """
    The turn-taking half of L{rpcd.backpressure.ReadThrottle}: reads go
    through L{received}, which passes them on to the wire protocol
    (L{deliver}) or keeps them unparsed while the connection waits for its
    turn; L{wait_turn} asks the scheduler before held requests start.

    The class using it has C{paused}, C{held}, C{transport} and
    C{_write_full}, and C{_resume()} (start what was held, then read
    again).

    @ivar turns: the daemon's turn scheduler, or None.
    @ivar finish: the virtual finish time (the scheduler's).
    @ivar last_cost: the seconds its last piece of work took (the scheduler's).
    @ivar in_queue: whether the connection waits for its turn.
    @ivar backlog: the bytes of the read (or of the reads kept) when it
        last asked for a turn (the scheduler predicts a first turn by it).
    @ivar deliver: the wire protocol's C{dataReceived}, which L{received}
        passes reads on to.
    @ivar unread: reads kept unparsed while the connection waits for its
        turn, or None.
    """

    # paused, held, transport and _write_full are the using class's, set
    # by its __init__.
    __slots__ = ("turns", "finish", "last_cost", "in_queue", "backlog", "deliver", "unread",
                 "_chunk", "_read_end", "paused", "held", "transport", "_write_full")

    paused: bool
    held: list[Any] | None
    transport: Any
    _write_full: bool

    def init_turns(self) -> None:
        """Set up the turn-taking state (from the class's C{__init__})."""
        self.turns: TurnScheduler | None = None
        self.finish = 0.0
        self.last_cost: float | None = None
        self.in_queue = False
        self.backlog = 0
        self.deliver: Callable[[bytes], None] | None = None
        self.unread: list[Any] | None = None
        self._chunk = FAIR_CHUNK
        self._read_end: Callable[[], None] | None = None

    def _resume(self) -> None:
        raise NotImplementedError()

    def received(self, data: bytes) -> None:
        """
        A read: passed on to the wire protocol (L{deliver}), or kept
        unparsed while the connection waits for its turn (parsing is work
        too: a read of pipelined gob requests costs milliseconds).

        @param data: the bytes read.
        """
        unread = self.unread
        if unread is not None:
            unread.append(data)
            return
        turns = self.turns
        if turns is not None and not self.paused and self.held is None:
            self.backlog = len(data)
            if self.wait_turn():
                self.unread = [data]
                return
            if len(data) > self._chunk and turns.waiting():
                self.unread = [data]
                self._feed()
                turns.done(self)
                return
        deliver = self.deliver
        if deliver is not None:
            deliver(data)
        if turns is not None:
            turns.done(self)


    def _feed(self) -> None:
        """
        Pass the kept reads on, a piece at a time while other connections
        wait for their turns (from C{FAIR_CHUNK} bytes, growing while
        parsing stays cheap), until they are done or the connection must
        wait (over the cap, or for its next turn).
        """
        while self.unread is not None and not self.paused and self.held is None:
            unread = self.unread
            # The rest of a chunked read is a memoryview: sliced, not copied.
            data: Any = unread[0] if len(unread) == 1 else b"".join(unread)
            turns = self.turns
            chunk = self._chunk
            started = None
            if turns is not None and len(data) > chunk and turns.waiting():
                view = memoryview(data)
                self.unread = [view[chunk:]]
                data = bytes(view[:chunk])
                started = turns.now()
            else:
                self.unread = None
                if type(data) is not bytes:
                    data = bytes(data)
            if self.deliver is not None:
                self.deliver(data)
            if started is not None and turns is not None:
                # Cheap to parse (bulk bytes of a large frame): bigger pieces;
                # dear (many small requests): smaller ones.
                cost = turns.now() - started
                if cost < turns.slice_seconds / 20:
                    self._chunk = min(chunk * 2, FAIR_CHUNK_MAX)
                elif cost > turns.slice_seconds / 4:
                    self._chunk = max(chunk // 2, FAIR_CHUNK)
            if self.unread is not None and not self.paused and self.held is None:
                self.backlog = sum(len(piece) for piece in self.unread)
                if self.wait_turn():
                    return
        if self.unread is None:
            ended, self._read_end = self._read_end, None
            if ended is not None:
                ended()
        elif not self.paused and self.turns is not None:
            # Requests held after all: a later turn goes on with them.
            self.turns.requeue(self)
            self.paused = True
            self.transport.pauseProducing()


    def end_reading(self, ended: Callable[[], None]) -> None:
        """
        The peer shut down its write side: call C{ended} (the wire
        protocol's C{read_connection_lost}) once the reads kept for its
        turn have been passed on.

        @param ended: what to call.
        """
        if self.unread is None:
            ended()
        else:
            self._read_end = ended


    def wait_turn(self) -> bool:
        """
        Ask the turn scheduler whether this connection may start more calls
        now; if not, it is queued and L{paused} until its turn.

        @return: whether the connection must wait (hold what it read).
        """
        turns = self.turns
        if turns is None or self.in_queue:
            return self.in_queue
        if turns.may_run(self):
            return False
        if not self.paused:
            self.paused = True
            self.transport.pauseProducing()
        return True


    def turn_granted(self) -> None:
        """
        The scheduler's call: this connection's turn has come; start what it
        held, and read again unless the buffer is over the cap.
        """
        if self._write_full:
            return  # resumeProducing goes on once the peer reads
        self._resume()


__all__ = ["FAIR_CHUNK", "FAIR_CHUNK_MAX", "NEW_MAX_SLICES", "NEW_MIN_SLICES", "Participant",
           "TurnScheduler", "TurnTaking", "Waiter"]
