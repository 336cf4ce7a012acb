"""
A test-only service that says which daemon answered, for the balancer's
end-to-end tests: C{[services.Who.options] name = "a"} (and C{delay = 0.5}:
seconds L{Who.Slow} takes to answer).
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from rpcd.errors import Unavailable
from rpcd.service import exposed


class Who:
    """Names the daemon it runs in."""

    def __init__(self, name: str = "", delay: float = 0.0) -> None:
        """
        @param name: what L{Name} answers.
        @param delay: seconds L{Slow} waits before answering.
        """
        self.name = name
        self.delay = delay
        self.flaky_calls = 0
        self.down_calls = 0

    @exposed
    def Name(self) -> str:
        """Return this daemon's name."""
        return self.name

    @exposed
    def Slow(self) -> Deferred[str]:
        """Return this daemon's name after its configured delay."""
        from twisted.internet import reactor
        return deferLater(reactor, self.delay, lambda: self.name)  # type: ignore[arg-type]

    @exposed
    def Flaky(self) -> str:
        """Fail with UNAVAILABLE, except on every third call."""
        self.flaky_calls += 1
        if self.flaky_calls % 3:
            raise Unavailable(f"{self.name} is flaky (call {self.flaky_calls})")
        return self.name

    @exposed
    async def Echo(self, values: AsyncIterator[Any]) -> AsyncIterator[str]:
        """Answer each value with this daemon's name and the value."""
        async for value in values:
            yield f"{self.name}:{value}"

    @exposed
    def Down(self) -> str:
        """Always fail with UNAVAILABLE, counting the calls."""
        self.down_calls += 1
        raise Unavailable(f"{self.name} is down")

    @exposed
    def DownCalls(self) -> int:
        """Return how many calls Down has had."""
        return self.down_calls
