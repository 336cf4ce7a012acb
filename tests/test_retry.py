"""
Tests for L{rpcd.retry}: backoff, which errors are retried, the deadline
across attempts, cancellation.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rpcd.errors import (Code, ConnectionLost, DeadlineExceeded, NotFound, ResourceExhausted,
                         Unavailable)
from rpcd.retry import NO_RETRY, RetryingClient, RetryPolicy
from rpcd.service import exposed
from rpcd.testing import MemoryConnection

NO_JITTER = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=1.0, multiplier=2.0,
                        jitter=0.0)


class FixedRandom:
    """A random source that always returns one value."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class FakeTarget:
    """A client whose calls answer from a script, recording each attempt."""

    default_timeout: float | None = None

    def __init__(self, clock: Clock, *answers: Any) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.attempts: list[tuple[float, str, Any, float | None, Any]] = []

    def call(self, method: str, args: Any = None, *, timeout: float | None = None,
             metadata: Any = None) -> Deferred[Any]:
        self.attempts.append((self.clock.seconds(), method, args, timeout, metadata))
        answer = self.answers.pop(0)
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


class BackoffTests(SynchronousTestCase):
    """The waits between attempts."""

    def test_exponential_sequence_capped(self) -> None:
        """Without jitter the waits double from initial_backoff up to max_backoff."""
        waits = [NO_JITTER.backoff(n) for n in range(1, 7)]
        self.assertEqual([round(w, 6) for w in waits], [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])

    def test_jitter_bounds(self) -> None:
        """Jitter spreads each wait within [1 - jitter, 1 + jitter] times its base."""
        policy = RetryPolicy(initial_backoff=1.0, jitter=0.2)
        self.assertAlmostEqual(policy.backoff(1, FixedRandom(0.0)), 0.8)
        self.assertAlmostEqual(policy.backoff(1, FixedRandom(0.5)), 1.0)
        self.assertAlmostEqual(policy.backoff(1, FixedRandom(0.999999)), 1.2, places=5)
        rng = random.Random(4)
        waits = [policy.backoff(2, rng) for _ in range(500)]
        self.assertTrue(all(1.6 <= w <= 2.4 for w in waits))
        self.assertGreater(max(waits) - min(waits), 0.6)

    def test_bad_policies(self) -> None:
        """Nonsensical settings are refused when the policy is built."""
        self.assertRaises(ValueError, RetryPolicy, max_attempts=0)
        self.assertRaises(ValueError, RetryPolicy, jitter=1.5)
        self.assertRaises(ValueError, RetryPolicy, multiplier=0.5)
        self.assertRaises(ValueError, RetryPolicy, initial_backoff=-1)

    def test_default_codes(self) -> None:
        """By default only UNAVAILABLE (a lost connection too) and RESOURCE_EXHAUSTED are retried."""
        policy = RetryPolicy()
        self.assertTrue(policy.retryable(Unavailable("x")))
        self.assertTrue(policy.retryable(ConnectionLost("x")))
        self.assertTrue(policy.retryable(ResourceExhausted("x")))
        self.assertFalse(policy.retryable(DeadlineExceeded("x")))
        self.assertFalse(policy.retryable(NotFound("x")))
        self.assertFalse(policy.retryable(CancelledError()))
        self.assertFalse(policy.retryable(ValueError("x")))


class RetryingClientTests(SynchronousTestCase):
    """Applying a policy to a client's calls."""

    def setUp(self) -> None:
        self.clock = Clock()

    def test_retries_unavailable_after_backoff(self) -> None:
        """UNAVAILABLE is retried after each backoff until an attempt succeeds."""
        target = FakeTarget(self.clock, Unavailable("down"), Unavailable("down"), 42)
        client = RetryingClient(target, NO_JITTER, self.clock)
        d = client.call("Arith.Multiply", {"A": 6, "B": 7}, metadata={"k": "v"})
        self.assertEqual(len(target.attempts), 1)
        self.clock.advance(0.099)
        self.assertEqual(len(target.attempts), 1)
        self.clock.advance(0.001)
        self.assertEqual(len(target.attempts), 2)
        self.clock.advance(0.2)
        self.assertEqual(self.successResultOf(d), 42)
        self.assertEqual([round(a[0], 6) for a in target.attempts], [0.0, 0.1, 0.3])
        self.assertEqual({(a[1], str(a[2]), str(a[4])) for a in target.attempts},
                         {("Arith.Multiply", "{'A': 6, 'B': 7}", "{'k': 'v'}")})

    def test_non_retryable_passes_through(self) -> None:
        """An application error fails the call at once, after a single attempt."""
        target = FakeTarget(self.clock, NotFound("no such key"), 1)
        d = RetryingClient(target, NO_JITTER, self.clock).call("KV.Get", "k")
        self.assertEqual(self.failureResultOf(d, NotFound).value.message, "no such key")
        self.assertEqual(len(target.attempts), 1)

    def test_deadline_exceeded_only_when_opted_in(self) -> None:
        """DEADLINE_EXCEEDED is not retried by default, and is when listed in retry_on."""
        target = FakeTarget(self.clock, DeadlineExceeded("slow"), DeadlineExceeded("slow"), "ok")
        d = RetryingClient(target, NO_JITTER, self.clock).call("A.B")
        self.failureResultOf(d, DeadlineExceeded)
        opted = RetryPolicy(jitter=0, retry_on={Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED})
        d = RetryingClient(target, opted, self.clock).call("A.B")
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertEqual(len(target.attempts), 3)

    def test_attempts_run_out(self) -> None:
        """After max_attempts failures the caller gets the last attempt's error."""
        target = FakeTarget(self.clock, Unavailable("one"), Unavailable("two"), Unavailable("three"))
        d = RetryingClient(target, RetryPolicy(jitter=0), self.clock).call("A.B")
        self.clock.pump([0.1, 0.2])
        self.assertEqual(self.failureResultOf(d, Unavailable).value.message, "three")
        self.assertEqual(len(target.attempts), 3)

    def test_deadline_across_attempts(self) -> None:
        """Each attempt's timeout is the time left, and no retry starts that its backoff would push past the deadline."""
        first: Deferred[Any] = Deferred()
        target = FakeTarget(self.clock, first, Unavailable("b"), Unavailable("c"), "never")
        policy = RetryPolicy(max_attempts=10, initial_backoff=0.2, multiplier=2, jitter=0)
        d = RetryingClient(target, policy, self.clock).call("A.B", timeout=1.0)
        self.clock.advance(0.1)
        first.errback(Unavailable("a"))
        self.clock.advance(0.2)
        self.clock.advance(0.4)
        self.assertEqual([round(a[0], 6) for a in target.attempts], [0.0, 0.3, 0.7])
        self.assertEqual([round(a[3], 6) for a in target.attempts], [1.0, 0.7, 0.3])
        # The next backoff (0.8 s) would pass the deadline: the last error surfaces now.
        self.assertEqual(self.failureResultOf(d, Unavailable).value.message, "c")
        self.assertEqual(target.answers, ["never"])

    def test_cancel_during_backoff(self) -> None:
        """Cancelling while waiting to retry fails with CancelledError and makes no more attempts."""
        target = FakeTarget(self.clock, Unavailable("down"), "late")
        d = RetryingClient(target, NO_JITTER, self.clock).call("A.B")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(10)
        self.assertEqual(len(target.attempts), 1)

    def test_cancel_attempt_in_flight(self) -> None:
        """Cancelling a call cancels the attempt in flight, and it is not retried."""
        cancelled = []
        pending: Deferred[Any] = Deferred(lambda d: cancelled.append(True))
        target = FakeTarget(self.clock, pending, "late")
        d = RetryingClient(target, NO_JITTER, self.clock).call("A.B")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(cancelled, [True])
        self.clock.advance(10)
        self.assertEqual(len(target.attempts), 1)

    def test_per_call_policy_and_default_timeout(self) -> None:
        """A call can give its own policy, and the target's default_timeout is the deadline."""
        target = FakeTarget(self.clock, Unavailable("down"), "unused")
        target.default_timeout = 4.0
        d = RetryingClient(target, NO_JITTER, self.clock).call("A.B", retry=NO_RETRY)
        self.failureResultOf(d, Unavailable)
        self.assertEqual(target.attempts[0][3], 4.0)

    def test_proxy(self) -> None:
        """C{client.Service.Method(...)} goes through the retries."""
        target = FakeTarget(self.clock, Unavailable("down"), 56)
        d = RetryingClient(target, NO_JITTER, self.clock).Arith.Multiply(A=7, B=8)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), 56)
        self.assertEqual(target.attempts[1][1:3], ("Arith.Multiply", {"A": 7, "B": 8}))


class Flaky:
    """Fails with UNAVAILABLE until told otherwise."""

    def __init__(self) -> None:
        self.failures = 2
        self.calls = 0

    @exposed
    def Get(self) -> str:
        """Fail while failures remain, then answer."""
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise Unavailable("warming up")
        return "ready"


class OverTheWireTests(SynchronousTestCase):
    """Retries over a real in-memory connection."""

    def test_remote_unavailable_retried(self) -> None:
        """An UNAVAILABLE raised by the service crosses the wire and is retried."""
        flaky = Flaky()
        conn = MemoryConnection([flaky])
        client = RetryingClient(conn.client, NO_JITTER, conn.clock)
        d = client.Flaky.Get()
        for _ in range(3):
            conn.flush()
            conn.clock.advance(0.2)
        conn.flush()
        self.assertEqual(self.successResultOf(d), "ready")
        self.assertEqual(flaky.calls, 3)
