"""
A service whose calls take a while, for drain tests: served by the real
daemon from a temporary config: C{[services.Sleep] class = "tests.sleepservice:Sleep"}.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from rpcd.service import exposed


class Sleep:
    """Answers after a delay."""

    @exposed
    def Sleep(self, seconds: float) -> Deferred[float]:
        """Return seconds, after that many seconds."""
        return deferLater(reactor, seconds, lambda: seconds)

    @exposed
    def Echo(self, value: int) -> int:
        """Return value at once."""
        return value
