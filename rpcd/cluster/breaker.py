"""
A circuit breaker for one endpoint: stop sending it calls after it failed
several in a row, and let one trial call through after a cool-down.

States::

    closed     calls go through; failure_threshold failures in a row -> open
    open       no calls for reset_timeout seconds, then -> half-open
    half-open  one trial call goes through: success -> closed, failure -> open

Only errors that say the endpoint is not working count as failures
(C{UNAVAILABLE}, C{DEADLINE_EXCEEDED} by default); an application error
(C{NOT_FOUND}, C{INVALID_ARGUMENT}...) is an answer, so it counts as a success.
"""

from __future__ import annotations

import dataclasses

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime

from rpcd.errors import Code, RPCError

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclasses.dataclass(frozen=True)
class BreakerPolicy:
    """
    @ivar failure_threshold: failures in a row that open the circuit.
    @ivar reset_timeout: seconds an open circuit waits before a trial call.
    @ivar failure_codes: the error codes that count as failures.
    """

    failure_threshold: int = 5
    reset_timeout: float = 10.0
    failure_codes: frozenset[int] = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED})

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, not {self.failure_threshold}")
        object.__setattr__(self, "failure_codes", frozenset(self.failure_codes))

    def is_failure(self, error: BaseException) -> bool:
        """
        @param error: what a call failed with.
        @return: whether it counts against the endpoint.
        """
        return isinstance(error, RPCError) and error.code in self.failure_codes


class CircuitBreaker:
    """
    One endpoint's breaker.  The caller asks L{allows} before choosing the
    endpoint, calls L{begin} as the call starts, and reports how it ended
    with L{succeeded}, L{failed} or L{abandoned}.

    @ivar failures: failures in a row so far.
    """

    def __init__(self, policy: BreakerPolicy, clock: IReactorTime) -> None:
        """
        @param policy: the thresholds.
        @param clock: for the cool-down.
        """
        self.policy = policy
        self.clock = clock
        self.failures = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        """
        @return: L{CLOSED}, L{OPEN} or L{HALF_OPEN} (an open circuit whose
            cool-down has passed).
        """
        if self._opened_at is None:
            return CLOSED
        if self._trial or self.clock.seconds() >= self._opened_at + self.policy.reset_timeout:
            return HALF_OPEN
        return OPEN

    def allows(self) -> bool:
        """
        @return: whether a call may be sent now (closed, or half-open with no
            trial call in flight).
        """
        state = self.state
        return state == CLOSED or (state == HALF_OPEN and not self._trial)

    def begin(self) -> None:
        """
        A call starts; when half-open it is the trial call.
        """
        if self.state == HALF_OPEN:
            self._trial = True

    def succeeded(self) -> None:
        """
        A call was answered: close the circuit.
        """
        self.failures = 0
        self._opened_at = None
        self._trial = False

    def failed(self) -> None:
        """
        A call failed: count it, and open the circuit at the threshold (at
        once when half-open).
        """
        self.failures += 1
        if self._opened_at is not None or self.failures >= self.policy.failure_threshold:
            self._opened_at = self.clock.seconds()
        self._trial = False

    def expire(self) -> None:
        """
        End an open circuit's cool-down now, making it half-open: the
        endpoint has a new connection that deserves a trial call.
        """
        if self._opened_at is not None and not self._trial:
            self._opened_at = self.clock.seconds() - self.policy.reset_timeout

    def abandoned(self) -> None:
        """
        A call ended without a verdict (the caller cancelled it): a trial
        may be made again.
        """
        self._trial = False

    def record(self, error: BaseException | None) -> None:
        """
        Report how a call ended.

        @param error: None for success, or the exception it failed with
            (C{CancelledError} is abandoned; errors that are not
            C{failure_codes} count as answers).
        """
        if error is None:
            self.succeeded()
        elif isinstance(error, CancelledError):
            self.abandoned()
        elif self.policy.is_failure(error):
            self.failed()
        else:
            self.succeeded()
