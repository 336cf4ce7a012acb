"""
Retrying calls that failed without running: a L{RetryPolicy} (gRPC's retry
policy is the model) and two ways to apply it.

Wrap anything with a C{call(method, args, timeout=, metadata=)} method (a
L{rpcd.client.Client}, a L{rpcd.cluster.balancer.Balancer} without its own retries)::

    client = RetryingClient(await connect("tcp:127.0.0.1:1234"), RetryPolicy(), reactor)
    product = await client.Arith.Multiply(A=7, B=8)
    product = await client.call("Arith.Multiply", {"A": 7, "B": 8}, timeout=5)

or retry any attempt function with L{retrying_call}.  A L{Balancer} takes a
policy itself (C{connect_balanced(..., retry=RetryPolicy())}) and sends each
retry to another endpoint when it can.

What is retried: by default only calls that failed with C{UNAVAILABLE} (no
usable connection, the connection went away, the server is shutting down)
or C{RESOURCE_EXHAUSTED} (the server refused the call: too many in flight).
C{DEADLINE_EXCEEDED} is retried only when listed in C{retry_on}: the call may
have run on the server.  One caveat, shared with gRPC: a call pending when its
connection is lost fails with L{rpcd.errors.ConnectionLost}, an
C{UNAVAILABLE}, and may or may not have run: call a method that must not
run twice with C{retry=NO_RETRY}.

Timing: retry I{n} (1 for the first) waits
C{min(initial_backoff * multiplier ** (n - 1), max_backoff)}, multiplied by a
random factor in C{[1 - jitter, 1 + jitter]}.  A call's C{timeout} is an
overall deadline across attempts: each attempt gets the time that remains as
its own timeout, and no retry starts when its backoff would reach the
deadline; the caller then sees the last attempt's error.

Pushback: an error carrying the server's hint (RESOURCE_EXHAUSTED with
C{details["retry_after"]}, as rpcd's rate limit sends) makes the next retry
wait at least that long, and none is made when that would pass the
deadline (L{rpcd.middleware.ratelimit.pushback}).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from rpcd.client.client import ServiceAttributes
from rpcd.core.interfaces import ICaller
from rpcd.errors import Code, RPCError, code_name
from rpcd.middleware.ratelimit import pushback
from rpcd.wire.fields import check_timeout

T = TypeVar("T")

log = Logger()

DEFAULT_RETRY_ON: frozenset[int] = frozenset({Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """
    When and how often to retry a failed call.

    @ivar max_attempts: attempts in all, the first included (1: no retries).
    @ivar initial_backoff: seconds before the first retry (before jitter).
    @ivar max_backoff: the longest wait between attempts (before jitter).
    @ivar multiplier: how much each wait grows over the one before.
    @ivar jitter: the random spread of each wait, as a fraction of it
        (0.2: between 80% and 120%); it keeps clients that failed together
        from retrying together.
    @ivar retry_on: the L{rpcd.errors.Code}s that are retried.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retry_on: frozenset[int] = DEFAULT_RETRY_ON

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoffs cannot be negative")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, not {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter}")
        object.__setattr__(self, "retry_on", frozenset(self.retry_on))

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """
        @param retry: which retry this is (1 for the first).
        @param rng: the source of jitter (the C{random} module by default).
        @return: seconds to wait before it.
        """
        base = min(self.initial_backoff * self.multiplier ** (retry - 1), self.max_backoff)
        spread = (rng or random).random() * 2 - 1
        return base * (1 + self.jitter * spread)

    def retryable(self, error: BaseException) -> bool:
        """
        @param error: what an attempt failed with.
        @return: whether a new attempt may be made (an L{RPCError} whose code
            is in C{retry_on}; never a cancellation).
        """
        return isinstance(error, RPCError) and error.code in self.retry_on


NO_RETRY = RetryPolicy(max_attempts=1)
"""Every call gets one attempt."""


@dataclasses.dataclass(frozen=True)
class RetryThrottle:
    """
    The size of a L{RetryBudget} (gRPC's C{retryThrottling}, gRFC A6).

    @ivar max_tokens: the tokens in a full bucket; retries stop while the
        bucket holds half of it or less.
    @ivar token_ratio: the tokens a successful call puts back (a failed
        attempt takes one).
    """

    max_tokens: float = 100.0
    token_ratio: float = 0.1

    def __post_init__(self) -> None:
        if not self.max_tokens > 0:
            raise ValueError(f"max_tokens must be positive, not {self.max_tokens}")
        if not self.token_ratio > 0:
            raise ValueError(f"token_ratio must be positive, not {self.token_ratio}")


class RetryBudget:
    """
    A token bucket shared by the calls of one client (gRFC A6 retry
    throttling): each attempt that fails with a retryable code takes a
    token, each successful call puts back C{token_ratio}; no call is retried
    (or hedged) while the bucket holds half its size or less.  When every
    endpoint fails, calls soon stop being retried, and the load a failing
    cluster sees stays close to one attempt per call.

    @ivar tokens: the tokens in the bucket now.
    """

    def __init__(self, throttle: RetryThrottle = RetryThrottle()) -> None:
        """
        @param throttle: the bucket's size and refill.
        """
        self.throttle = throttle
        self.tokens = throttle.max_tokens

    def allows(self) -> bool:
        """
        @return: whether a retry may be sent now.
        """
        return self.tokens > self.throttle.max_tokens / 2

    def record(self, error: BaseException | None, policy: RetryPolicy) -> None:
        """
        Account for one attempt's outcome.

        @param error: None for success, else what the attempt failed with
            (only codes the policy retries take a token).
        @param policy: the call's retry policy.
        """
        if error is None:
            self.tokens = min(self.tokens + self.throttle.token_ratio, self.throttle.max_tokens)
        elif policy.retryable(error):
            self.tokens = max(self.tokens - 1, 0.0)


async def call_with_retry(attempt: Callable[[float | None], Deferred[T]], policy: RetryPolicy,
                          clock: IReactorTime, *, timeout: float | None = None,
                          rng: random.Random | None = None, what: str = "the call",
                          budget: RetryBudget | None = None) -> T:
    """
    Make attempts until one succeeds, fails with an error the policy does not
    retry, the attempts run out, or the deadline leaves no time for another.

    @param attempt: starts one attempt, given the seconds left before the
        deadline (None: no deadline) as its timeout; returns a Deferred.
    @param policy: the L{RetryPolicy}.
    @param clock: for backoff and the deadline.
    @param timeout: the overall deadline in seconds from now, or None.
    @param rng: the source of jitter.
    @param what: names the call in log events.
    @param budget: a L{RetryBudget} each attempt's outcome is recorded in;
        no retry is made while it does not allow one.
    @return: the first successful attempt's result; raises the last
        attempt's error otherwise (C{CancelledError} if the caller cancelled).
    """
    deadline = None if timeout is None else clock.seconds() + timeout
    tries = 0
    while True:
        tries += 1
        # A timer may fire a little late: what is left is never below 0.
        remaining = None if deadline is None else max(0.0, deadline - clock.seconds())
        try:
            result = await maybeDeferred(attempt, remaining)
        except Exception as error:
            if budget is not None:
                budget.record(error, policy)
            if tries >= policy.max_attempts or not policy.retryable(error):
                raise
            delay = policy.backoff(tries, rng)
            hint = pushback(error)
            if hint is not None:
                # The server said when to come back (rate limit): not sooner,
                # and not at all when that is past the deadline.
                delay = max(delay, hint)
            if deadline is not None and clock.seconds() + delay >= deadline:
                raise
            if budget is not None and not budget.allows():
                log.info("not retrying {what} after {error}: the retry budget is spent "
                         "({tokens:.1f} tokens)", what=what, error=error, tokens=budget.tokens)
                raise
            log.info("retrying {what} in {delay:.3f} s after {code}: {error} "
                     "(attempt {attempt} of {attempts})", what=what, delay=delay,
                     code=code_name(getattr(error, "code", Code.UNKNOWN)), error=error,
                     attempt=tries + 1, attempts=policy.max_attempts)
        else:
            if budget is not None:
                budget.record(None, policy)
            return result
        await deferLater(clock, delay)


def retrying_call(attempt: Callable[[float | None], Deferred[T]], policy: RetryPolicy,
                  clock: IReactorTime, *, timeout: float | None = None,
                  rng: random.Random | None = None, what: str = "the call",
                  budget: RetryBudget | None = None) -> Deferred[T]:
    """
    L{call_with_retry} as a Deferred.

    @return: a Deferred firing with the first successful attempt's result,
        or failing with the last attempt's error.  Cancelling it cancels the
        attempt in flight (or the wait before the next one).
    """
    return Deferred.fromCoroutine(call_with_retry(attempt, policy, clock, timeout=timeout,
                                                  rng=rng, what=what, budget=budget))


@implementer(ICaller)
class RetryingClient(ServiceAttributes):
    """
    Retries the calls of a client by a policy; the same C{call} and proxy
    API as L{rpcd.client.Client}.
    """

    def __init__(self, target: Any, policy: RetryPolicy, clock: IReactorTime, *,
                 rng: random.Random | None = None,
                 throttle: RetryThrottle | None = None) -> None:
        """
        @param target: has C{call(method, args, timeout=, metadata=)}
            returning a Deferred, and maybe a C{default_timeout}.
        @param policy: the L{RetryPolicy}.
        @param clock: for backoff and deadlines (the reactor, or a C{Clock}).
        @param rng: the source of jitter.
        @param throttle: the size of this client's L{RetryBudget}; None for
            no budget.
        """
        self.target = target
        self.policy = policy
        self.clock = clock
        self.rng = rng
        self.budget = RetryBudget(throttle) if throttle is not None else None

    def call(self, method: str, args: Any = None, *, timeout: float | None = None,
             metadata: dict[str, Any] | None = None,
             retry: RetryPolicy | None = None) -> Deferred[Any]:
        """
        Call a remote method, retrying by the policy.

        @param method: C{Service.Method}.
        @param args: the argument value.
        @param timeout: the overall deadline in seconds, across attempts (the
            target's C{default_timeout} when None).
        @param metadata: key/value metadata for the server.
        @param retry: a policy for this call instead of the client's.
        @return: a Deferred firing with the result, or failing with the last
            attempt's L{rpcd.errors.RPCError}.
        """
        timeout = check_timeout(timeout)
        if timeout is None:
            timeout = getattr(self.target, "default_timeout", None)

        def attempt(remaining: float | None) -> Deferred[Any]:
            return self.target.call(method, args, timeout=remaining, metadata=metadata)
        return retrying_call(attempt, retry or self.policy, self.clock, timeout=timeout,
                             rng=self.rng, what=method, budget=self.budget)

    def stream(self, method: str, args: Any = None, *, timeout: float | None = None,
               metadata: dict[str, Any] | None = None, window: int | None = None,
               retry: RetryPolicy | None = None) -> Any:
        """
        Open a streaming call on the target, opened again by the policy
        while the server has sent nothing back (see L{rpcd.cluster.retry_streams}).

        @param method: C{Service.Method}.
        @param args: the request of a server-streaming method, else None.
        @param timeout: seconds the whole stream may take, across attempts
            (the target's C{default_timeout} when None).
        @param metadata: key/value metadata for the server.
        @param window: messages the server may send ahead of the application.
        @param retry: a policy for this stream instead of the client's.
        @return: a L{rpcd.cluster.retry_streams.RetryingStream}.
        """
        from rpcd.cluster.retry_streams import RetryingStream
        if timeout is None:
            timeout = getattr(self.target, "default_timeout", None)

        def attempt(remaining: float | None) -> Any:
            return self.target.stream(method, args, timeout=remaining, metadata=metadata,
                                      window=window)
        return RetryingStream(attempt, retry or self.policy, self.clock, method=method,
                              timeout=timeout, budget=self.budget)

    def close(self) -> Deferred[None]:
        """
        Close the target.

        @return: what the target's C{close} returns.
        """
        return self.target.close()
