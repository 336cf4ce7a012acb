"""
Per-turn fairness: one connection's burst cannot hold the reactor.

Every wire protocol asks L{TurnScheduler.may_run} before it starts the
calls of a read (and before each further batch of requests it held).  The
first connection to ask in a reactor iteration opens a I{turn} of
C{slice_seconds}; within it every connection runs at once.  Once the turn
has lasted longer than that, a connection that asks is queued instead: it
stops reading and keeps what it has read (L{rpcd.backpressure.ReadThrottle}
holds it), and the next reactor iteration (C{callLater(0)}, so after the
reactor has polled every socket once) grants turns to the queued ones.

Queued connections are served in weighted fair queueing order: each
connection is charged the time from its check to the end of its work
(L{TurnScheduler.done}; its virtual finish time grows by it), and the queued connection whose
turn would I{end} first in virtual time goes first, its turn's cost
predicted by its last one (a connection never charged is predicted to use
a whole slice).  So a connection that sends one small call (a health
probe) while fifty others wait to have a 3 MB reply encoded goes ahead of
all of them, instead of waiting behind a round of them; and a connection
that has had more than its share waits behind those that had less.  A single call is never split: the slice bounds how long the queue
waits beyond the call running when the slice ends.

With C{slice_seconds} 0 nothing is ever queued.
"""

from __future__ import annotations

import heapq
from typing import Callable, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Participant(Protocol):
    """
    What the scheduler needs of a connection (L{rpcd.backpressure.ReadThrottle},
    L{Waiter}).

    @ivar finish: the connection's virtual finish time (the scheduler's).
    @ivar last_cost: the seconds its last piece of work took, or None
        (the scheduler's).
    @ivar in_queue: whether it waits for a turn now (the scheduler's).
    """

    finish: float
    last_cost: float | None
    in_queue: bool

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
    """

    def __init__(self, granted: Callable[[], None]) -> None:
        """
        @param granted: called with no arguments when the turn comes.
        """
        self.finish = 0.0
        self.last_cost: float | None = None
        self.in_queue = False
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
        heapq.heappush(self._queue, (start + (self.slice_seconds if cost is None else cost),
                                     self._seq, start, who))

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


__all__ = ["Participant", "TurnScheduler", "Waiter"]
