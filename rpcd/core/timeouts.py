"""
Many timeouts on one reactor timer.

A reactor's C{callLater} costs about half a kilobyte per timer (the
L{DelayedCall}, its attribute dict, three bound methods); a long-poll
service holding a hundred thousand waiters pays that for each.  L{Timeouts}
keeps the deadlines in a heap of small tuples and holds one timer, set for
the earliest of them.  Each item expires at its own deadline, as with a timer
of its own.

Items are not removed from the heap when their owner lets go of them (that
would cost a search): the owner keeps the items still waiting in a container
of its own (C{live}), an item no longer in it is skipped when its deadline
comes, and the heap is rebuilt from the live items once most of it is stale
(L{Timeouts.prune}), so it never holds more than about twice the live items,
and nothing once none is left.
"""

from __future__ import annotations

import heapq
from itertools import count
from math import nextafter
from typing import TYPE_CHECKING, Any, Callable, Collection, Hashable

from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

log = Logger()

_SLACK = 64
"""Stale entries the heap may hold beyond the live ones before a rebuild."""


class Timeouts:
    """
    Deadlines of many items on one timer of one clock.

    @ivar live: the items still waiting (owned by the caller): an item in
        the heap but not in it is stale and never expires.
    """

    __slots__ = ("clock", "live", "_expired", "_heap", "_seq", "_timer", "_due")

    def __init__(self, clock: IReactorTime, live: Collection[Hashable],
                 expired: Callable[[Any], None]) -> None:
        """
        @param clock: the reactor's clock.
        @param live: the caller's container of the items still waiting; it
            is read (C{in}, C{len}), never written.
        @param expired: called with each live item whose deadline has
            come, in deadline order (first added first, for equal
            deadlines); it should remove the item from C{live}.  What it
            raises is logged; the other items still expire.
        """
        self.clock = clock
        self.live = live
        self._expired = expired
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = count()
        self._timer: IDelayedCall | None = None
        self._due = 0.0  # the deadline the timer was set for

    def __len__(self) -> int:
        """
        @return: the entries in the heap, stale ones included.
        """
        return len(self._heap)

    def add(self, delay: float, item: Any) -> None:
        """
        Expire C{item} after C{delay} seconds, unless it has left C{live}
        by then.

        @param delay: seconds, not negative.
        @param item: an item of C{live} (it should be there already).
        """
        deadline = self.clock.seconds() + delay
        heap = self._heap
        heapq.heappush(heap, (deadline, next(self._seq), item))
        if heap[0][2] is item:
            self._schedule(deadline)

    def prune(self) -> None:
        """
        The owner has let go of items: forget every entry once none is
        live (and stop the timer), else rebuild the heap from the live
        entries once the stale ones outnumber them (with some slack), so
        that it stays within about twice the items still waiting.
        Amortised O(1) a call.
        """
        heap = self._heap
        live = self.live
        if not live:
            self.clear()
        elif len(heap) > 2 * len(live) + _SLACK:
            heap[:] = [entry for entry in heap if entry[2] in live]
            heapq.heapify(heap)

    def clear(self) -> None:
        """
        Forget every entry and stop the timer (the owner let go of all its
        items at once).
        """
        self._heap.clear()
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _schedule(self, deadline: float) -> None:
        """
        Set the timer for C{deadline} (the heap's earliest).  Its time is
        C{now + (deadline - now)}, which float rounding may put a hair after
        the deadline: the delay is then shortened by as much, so that a
        clock that reaches the deadline fires it (L{_fire} takes the
        deadline as due).
        """
        self._cancel_timer()
        self._due = deadline
        now = self.clock.seconds()
        delay = deadline - now
        if delay <= 0:
            delay = 0.0
        elif now + delay > deadline:
            delay = nextafter(delay, 0.0)
        self._timer = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        # The deadline the timer was set for is due, though the clock may
        # read a hair before it (see _schedule).
        now = max(self.clock.seconds(), self._due)
        heap = self._heap
        live = self.live
        expired = self._expired
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)[2]
            if item in live:
                try:
                    expired(item)
                except Exception:
                    # The owner's bug: the other items still expire.
                    log.failure("expiring {item!r} failed", item=item)
        if heap:
            if live:
                self._schedule(heap[0][0])
            else:
                heap.clear()  # only stale entries are left
