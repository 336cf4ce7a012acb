"""
The in-memory key-value store of seed 001 (4.3.2), with its long-poll
C{Watch}.

Unlike the seed's version, a watcher is removed when it returns, when it
times out and when its connection drops, so watchers never leak.  A pending
Watch holds no closure nor timer of its own: the timeouts of all of them
share one reactor timer (L{rpcd.core.timeouts}), so that a hundred thousand
of them cost about 1 KB each in the daemon
(C{benchmarks/idle_memory.py --idle 0}).

C{WatchPrefix} (not in the seed) is a server stream of every change under a
key prefix; the unary C{Watch} is unchanged, for Go clients.
"""

from __future__ import annotations

from collections import deque
from typing import Any, AsyncIterator

from twisted.internet.defer import Deferred, fail, succeed

from rpcd.core.context import CallContext
from rpcd.core.timeouts import Timeouts
from rpcd.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted
from rpcd.core.service import exposed
from rpcd.daemon.owner import process_shared


@process_shared  # with workers, one store in the supervisor (rpcd.daemon.owner)
class KVStoreService:
    """A map of strings, with Watch for the next change."""

    def __init__(self, max_watch_seconds: int = 3600, max_watch_backlog: int = 10000) -> None:
        """
        @param max_watch_seconds: the longest timeout a Watch may ask for.
        @param max_watch_backlog: changes a WatchPrefix stream may fall
            behind by (its reader is slow) before it fails with
            RESOURCE_EXHAUSTED.
        """
        self.data: dict[str, str] = {}
        # The waiting Watches: a dict keeps insertion order, so they are
        # woken first come, first served.
        self.watchers: dict[Deferred[str], None] = {}
        # Their timeouts, on one timer per clock (there is one clock unless
        # the store is served by servers on different reactors).
        self.watch_timeouts: dict[Any, Timeouts] = {}
        self.prefix_watchers: set[_PrefixWatch] = set()
        self.max_watch_seconds = max_watch_seconds
        self.max_watch_backlog = max_watch_backlog
        # Bound once: each Watch's canceller and its timeout's action.
        self._cancel_watch = self._forget_watch
        self._expire_watch = self._watch_expired

    @exposed
    def Get(self, key: str) -> str:
        """Return the value of key, or fail with "not found"."""
        try:
            return self.data[key]
        except KeyError:
            raise NotFound("not found") from None

    @exposed
    def Set(self, kv: tuple[str, str]) -> None:
        """Set [key, value]; wakes every Watch if the value changed."""
        key, value = kv
        if self.data.get(key, "") != value:
            watchers = list(self.watchers)
            self.watchers.clear()
            for timeouts in self.watch_timeouts.values():
                timeouts.clear()
            for watcher in watchers:
                watcher.callback(key)
            for prefix_watch in list(self.prefix_watchers):
                prefix_watch.changed(key, value)
        self.data[key] = value

    @exposed
    async def WatchPrefix(self, prefix: str) -> AsyncIterator[tuple[str, str]]:
        """Stream [key, value] for every change under prefix, until cancelled."""
        watch = _PrefixWatch(prefix, self.max_watch_backlog)
        self.prefix_watchers.add(watch)
        try:
            while True:
                yield await watch.next()
        finally:
            self.prefix_watchers.discard(watch)

    @exposed
    def Watch(self, timeoutSecond: int, ctx: CallContext) -> Deferred[str]:
        """Wait up to timeoutSecond seconds for a change; return the changed key."""
        if not 0 <= timeoutSecond <= self.max_watch_seconds:
            raise InvalidArgument(f"timeoutSecond must be between 0 and {self.max_watch_seconds}")
        # No closure nor callback per Watch (a pending one costs its
        # Deferred, its place in watchers and a heap entry in Timeouts):
        # Set, the timeout and a cancel (the caller's, or its connection's
        # end) each remove it from watchers.
        changed: Deferred[str] = Deferred(self._cancel_watch)
        self.watchers[changed] = None
        clock = ctx.clock
        timeouts = self.watch_timeouts.get(clock)
        if timeouts is None:
            timeouts = self.watch_timeouts[clock] = Timeouts(clock, self.watchers, self._expire_watch)
        timeouts.add(timeoutSecond, changed)
        return changed

    def _forget_watch(self, changed: Deferred[str]) -> None:
        """A Watch was cancelled: it waits no more (the Deferred then fails with CancelledError)."""
        if changed in self.watchers:
            del self.watchers[changed]
            for timeouts in self.watch_timeouts.values():
                timeouts.prune()

    def _watch_expired(self, changed: Deferred[str]) -> None:
        """A Watch's timeout came first."""
        del self.watchers[changed]
        changed.errback(DeadlineExceeded("timeout"))


class _PrefixWatch:
    """The changes one WatchPrefix stream has not sent yet."""

    def __init__(self, prefix: str, backlog: int) -> None:
        self.prefix = prefix
        self.backlog = backlog
        self.pending: deque[tuple[str, str]] = deque()
        self.waiting: Deferred[tuple[str, str]] | None = None
        self.overflowed = False

    def changed(self, key: str, value: str) -> None:
        if not key.startswith(self.prefix) or self.overflowed:
            return
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.callback((key, value))
        elif len(self.pending) >= self.backlog:
            self.overflowed = True
        else:
            self.pending.append((key, value))

    def next(self) -> Deferred[tuple[str, str]]:
        """
        @return: a Deferred firing with the next change, or failing with
            L{ResourceExhausted} when the reader fell too far behind.
        """
        if self.pending:
            return succeed(self.pending.popleft())
        if self.overflowed:
            return fail(ResourceExhausted(f"the watch fell more than {self.backlog} changes "
                                          "behind; watch again"))
        d: Deferred[tuple[str, str]] = Deferred(self._forget)
        self.waiting = d
        return d

    def _forget(self, d: Deferred[tuple[str, str]]) -> None:
        if self.waiting is d:
            self.waiting = None
