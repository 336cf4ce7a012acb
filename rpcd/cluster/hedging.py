"""
Hedged calls (gRPC's hedging policy, gRFC A6): for a call that may safely
run more than once (marked idempotent), send a second attempt, to another
endpoint, when the first has not answered within C{delay}; the first
answer wins and the other attempts are cancelled.  It trades a little extra
load for a tail latency close to the fastest endpoint's::

    balancer = await connect_balanced(endpoints, hedging=HedgingPolicy(delay=0.05))
    value = await balancer.call("KV.Get", "key", idempotent=True)

An attempt that fails with a C{non_fatal_codes} code (C{UNAVAILABLE} by
default) sends the next one at once; any other error is the call's answer
and cancels the rest.  A L{rpcd.cluster.retry.RetryBudget} that does not allow a
retry stops further hedges (each failed attempt takes a token from it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from rpcd.errors import Code, RPCError
from rpcd.cluster.retry import RetryBudget, RetryPolicy


@dataclasses.dataclass(frozen=True)
class HedgingPolicy:
    """
    @ivar max_attempts: attempts in all, the first included.
    @ivar delay: seconds after an attempt before the next is sent, while
        none has answered.
    @ivar non_fatal_codes: codes after which the next attempt is sent at
        once (other errors end the call).
    """

    max_attempts: int = 2
    delay: float = 0.05
    non_fatal_codes: frozenset[int] = frozenset({Code.UNAVAILABLE})

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.delay < 0:
            raise ValueError(f"delay cannot be negative, not {self.delay}")
        object.__setattr__(self, "non_fatal_codes", frozenset(self.non_fatal_codes))

    def non_fatal(self, error: BaseException) -> bool:
        """
        @param error: what an attempt failed with.
        @return: whether another attempt may follow.
        """
        return isinstance(error, RPCError) and error.code in self.non_fatal_codes

    def as_retry_policy(self) -> RetryPolicy:
        """
        @return: the L{RetryPolicy} whose C{retry_on} a budget counts
            failures by.
        """
        return RetryPolicy(max_attempts=self.max_attempts, retry_on=self.non_fatal_codes)


def hedged_call(attempt: Callable[[float | None], Deferred[Any]], policy: HedgingPolicy,
                clock: IReactorTime, *, timeout: float | None = None,
                budget: RetryBudget | None = None) -> Deferred[Any]:
    """
    Make hedged attempts of a call.

    @param attempt: sends one attempt given the seconds left before the
        deadline (None: none) as its timeout; returns a Deferred (or raises
        an L{RPCError}, e.g. L{rpcd.errors.Unavailable} with no endpoint).
    @param policy: the L{HedgingPolicy}.
    @param clock: for the delays and the deadline.
    @param timeout: the overall deadline in seconds.
    @param budget: the retry budget that each outcome is recorded in and
        that must allow each hedge.
    @return: a Deferred firing with the first successful attempt's result,
        or failing with the first fatal error or, when every attempt
        failed, the last one's.  Cancelling it cancels every attempt.
    """
    return _Hedge(attempt, policy, clock, timeout, budget).result


class _Hedge:
    def __init__(self, attempt: Callable[[float | None], Deferred[Any]], policy: HedgingPolicy,
                 clock: IReactorTime, timeout: float | None, budget: RetryBudget | None) -> None:
        self.attempt = attempt
        self.policy = policy
        self.counting = policy.as_retry_policy()
        self.clock = clock
        self.deadline = None if timeout is None else clock.seconds() + timeout
        self.budget = budget
        self.in_flight: list[Deferred[Any]] = []
        self.timer: IDelayedCall | None = None
        self.sent = 0
        self.done = False
        self.last: Failure | None = None
        self.result: Deferred[Any] = Deferred(self._cancel)
        self._launch()

    def _cancel(self, d: Deferred[Any]) -> None:
        # The caller gave up: the result fails with CancelledError after this.
        self._finish(None, fire=False)

    def _hedge(self) -> None:
        self.timer = None
        if self.budget is None or self.budget.allows():
            self._launch()
        elif not self.in_flight and self.last is not None:
            self._finish(self.last)

    def _launch(self) -> None:
        if self.done:
            return
        self.sent += 1
        remaining = None if self.deadline is None else self.deadline - self.clock.seconds()
        d = maybeDeferred(self.attempt, remaining)
        if self.sent < self.policy.max_attempts and not d.called:
            self.timer = self.clock.callLater(self.policy.delay, self._hedge)
        self.in_flight.append(d)
        d.addBoth(self._answered, d)

    def _answered(self, outcome: Any, d: Deferred[Any]) -> None:
        if d in self.in_flight:
            self.in_flight.remove(d)
        if self.done:
            return None
        error = outcome.value if isinstance(outcome, Failure) else None
        if self.budget is not None:
            self.budget.record(error, self.counting)
        if error is not None and self.policy.non_fatal(error):
            self.last = outcome
            if self.sent < self.policy.max_attempts and (
                    self.budget is None or self.budget.allows()):
                self._stop_timer()
                self._launch()
                return None
            if self.in_flight or self.timer is not None:
                return None  # another attempt may still answer
        self._finish(outcome)
        return None

    def _stop_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _finish(self, outcome: Any, fire: bool = True) -> None:
        self.done = True
        self._stop_timer()
        in_flight, self.in_flight = self.in_flight, []
        for d in in_flight:
            d.cancel()
        if fire:
            if isinstance(outcome, Failure):
                self.result.errback(outcome)
            else:
                self.result.callback(outcome)
