"""
The in-memory key-value store of seed 001 (4.3.2), with its long-poll
C{Watch}.

Unlike the seed's version, a watcher is removed when it returns, when it
times out and when its connection drops, so watchers never leak.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from rpcd.context import CallContext
from rpcd.errors import DeadlineExceeded, InvalidArgument, NotFound
from rpcd.service import exposed


class KVStoreService:
    """A map of strings, with Watch for the next change."""

    def __init__(self, max_watch_seconds: int = 3600) -> None:
        """
        @param max_watch_seconds: the longest timeout a Watch may ask for.
        """
        self.data: dict[str, str] = {}
        self.watchers: set[Deferred[str]] = set()
        self.max_watch_seconds = max_watch_seconds

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
            for watcher in watchers:
                watcher.callback(key)
        self.data[key] = value

    @exposed
    def Watch(self, timeoutSecond: int, ctx: CallContext) -> Deferred[str]:
        """Wait up to timeoutSecond seconds for a change; return the changed key."""
        if not 0 <= timeoutSecond <= self.max_watch_seconds:
            raise InvalidArgument(f"timeoutSecond must be between 0 and {self.max_watch_seconds}")
        def forget(d: Deferred[str]) -> None:
            self.watchers.discard(d)

        changed: Deferred[str] = Deferred(forget)
        self.watchers.add(changed)

        def expire() -> None:
            self.watchers.discard(changed)
            changed.errback(DeadlineExceeded("timeout"))

        timer = ctx.clock.callLater(timeoutSecond, expire)

        def stop_timer(result: object) -> object:
            self.watchers.discard(changed)
            if timer.active():
                timer.cancel()
            return result

        changed.addBoth(stop_timer)
        return changed
