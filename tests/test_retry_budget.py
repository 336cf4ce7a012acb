"""
Tests for the retry budget (L{rpcd.retry.RetryBudget}) and hedged calls
(L{rpcd.hedging}), alone and in the balancer's in-memory cluster of
L{tests.test_balancer}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rpcd.errors import Code, NotFound, Unavailable
from rpcd.hedging import HedgingPolicy, hedged_call
from rpcd.retry import RetryBudget, RetryingClient, RetryPolicy, RetryThrottle, retrying_call
from tests.test_balancer import Cluster

POLICY = RetryPolicy(max_attempts=5, initial_backoff=0.1, jitter=0)


class RetryBudgetTests(SynchronousTestCase):
    """The token bucket on its own."""

    def test_failures_spend_successes_refill(self) -> None:
        """Each retryable failure takes a token, each success puts back token_ratio, and retries stop at half the bucket."""
        budget = RetryBudget(RetryThrottle(max_tokens=4, token_ratio=0.5))
        self.assertTrue(budget.allows())
        budget.record(Unavailable("x"), POLICY)
        self.assertTrue(budget.allows())
        budget.record(Unavailable("x"), POLICY)
        self.assertEqual(budget.tokens, 2)
        self.assertFalse(budget.allows())
        budget.record(NotFound("x"), POLICY)
        self.assertEqual(budget.tokens, 2)
        budget.record(None, POLICY)
        self.assertTrue(budget.allows())
        for _ in range(10):
            budget.record(None, POLICY)
        self.assertEqual(budget.tokens, 4)

    def test_bad_throttle(self) -> None:
        """A throttle without tokens or refill is refused with ValueError."""
        self.assertRaises(ValueError, RetryThrottle, max_tokens=0)
        self.assertRaises(ValueError, RetryThrottle, token_ratio=0)

    def test_retrying_call_stops_at_the_threshold(self) -> None:
        """With every attempt failing, a budget of 4 tokens lets one retry through, then calls get one attempt each."""
        clock = Clock()
        budget = RetryBudget(RetryThrottle(max_tokens=4))
        attempts: list[float | None] = []

        def attempt(remaining: float | None) -> Deferred[Any]:
            attempts.append(remaining)
            return fail(Unavailable("down"))
        calls = [retrying_call(attempt, POLICY, clock, budget=budget) for _ in range(10)]
        clock.advance(1)
        for d in calls:
            self.failureResultOf(d, Unavailable)
        self.assertEqual(len(attempts), 11)

    def test_retrying_client_budget(self) -> None:
        """A RetryingClient given a throttle keeps a budget across its calls."""
        clock = Clock()
        sent: list[str] = []

        class Down:
            def call(self, method: str, args: Any, **kwargs: Any) -> Deferred[Any]:
                sent.append(method)
                return fail(Unavailable("down"))
        client = RetryingClient(Down(), POLICY, clock, throttle=RetryThrottle(max_tokens=2))
        for _ in range(5):
            d = client.call("X.Y")
            clock.advance(1)
            self.failureResultOf(d, Unavailable)
        self.assertEqual(len(sent), 5)


class BalancerBudgetTests(SynchronousTestCase):
    """The balancer's budget."""

    def test_calls_per_call_when_everything_fails(self) -> None:
        """With every endpoint answering UNAVAILABLE, the budget keeps the attempts per call below 1.2 (5 without it)."""
        cluster = Cluster(self, "a", "b", "c")
        balancer = cluster.connect(retry=POLICY, breaker=None,
                                   retry_throttle=RetryThrottle(max_tokens=10))
        calls = [balancer.call("Who.Fail", int(Code.UNAVAILABLE)) for _ in range(100)]
        for _ in range(20):
            cluster.advance(0.5)
        for d in calls:
            self.failureResultOf(d, Unavailable)
        sent = sum(node.calls for node in cluster.nodes)
        self.assertLess(sent / 100, 1.2)
        self.assertGreater(sent, 100)

    def test_stream_retries_use_the_budget(self) -> None:
        """A spent budget stops a stream from being opened again."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect(retry_throttle=RetryThrottle(max_tokens=2))
        balancer.budget.tokens = 1
        stream = balancer.stream("Who.Gate")
        cluster.flush()
        cluster.nodes[0].kill()
        cluster.flush()
        self.failureResultOf(stream.result(), Unavailable)
        self.assertEqual((stream.attempts, cluster.nodes[1].calls), (1, 0))


class HedgingTests(SynchronousTestCase):
    """Hedged calls."""

    HEDGING = HedgingPolicy(max_attempts=3, delay=0.05)

    def test_second_attempt_after_delay_first_answer_wins(self) -> None:
        """An idempotent call unanswered after the delay goes to a second endpoint; its answer wins and the first attempt is cancelled on its server."""
        cluster = Cluster(self, "a", "b", "c")
        balancer = cluster.connect(hedging=HedgingPolicy(max_attempts=2, delay=0.05))
        a, b, c = cluster.nodes
        d = balancer.call("Who.Hold", idempotent=True)
        cluster.flush()
        self.assertEqual([len(n.held) for n in cluster.nodes], [1, 0, 0])
        cluster.advance(0.05)
        self.assertEqual(len(b.held) + len(c.held), 1)
        cluster.advance(1)
        self.assertEqual(sum(len(n.held) for n in cluster.nodes), 2)
        second = (b.held or c.held)[0]
        second.callback("second")
        cluster.flush()
        self.assertEqual(self.successResultOf(d), "second")
        self.assertTrue(a.held[0].called)  # cancelled by the server, on the client's cancel
        self.assertEqual([p.server.inner.dispatcher.running for p in a.pumps], [{}])

    def test_not_idempotent_not_hedged(self) -> None:
        """A call not marked idempotent is never hedged."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect(hedging=self.HEDGING)
        balancer.call("Who.Hold")
        cluster.advance(1)
        self.assertEqual([len(n.held) for n in cluster.nodes], [1, 0])

    def test_non_fatal_failure_hedges_at_once(self) -> None:
        """An attempt failing with UNAVAILABLE sends the next attempt at once, without waiting for the delay."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect(hedging=HedgingPolicy(max_attempts=2, delay=10))
        d = balancer.call("Who.Fail", int(Code.UNAVAILABLE), idempotent=True)
        cluster.flush()
        self.failureResultOf(d, Unavailable)
        self.assertEqual([n.calls for n in cluster.nodes], [1, 1])
        self.assertEqual(cluster.clock.seconds(), 0)

    def test_fatal_failure_ends_the_call(self) -> None:
        """A fatal error is the call's answer, and the other attempts are cancelled."""
        clock = Clock()
        attempts: list[Deferred[Any]] = []
        cancelled: list[Deferred[Any]] = []

        def attempt(remaining: float | None) -> Deferred[Any]:
            d: Deferred[Any] = Deferred(cancelled.append)
            attempts.append(d)
            return d
        d = hedged_call(attempt, self.HEDGING, clock, timeout=5)
        clock.advance(0.05)
        self.assertEqual(len(attempts), 2)
        attempts[1].errback(NotFound("gone"))
        self.failureResultOf(d, NotFound)
        self.assertEqual(cancelled, attempts[:1])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel_cancels_every_attempt(self) -> None:
        """Cancelling a hedged call cancels every attempt in flight and sends no more."""
        clock = Clock()
        attempts: list[Deferred[Any]] = []
        cancelled: list[Deferred[Any]] = []

        def attempt(remaining: float | None) -> Deferred[Any]:
            attempts.append(Deferred(cancelled.append))
            return attempts[-1]
        d = hedged_call(attempt, self.HEDGING, clock)
        clock.advance(0.05)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(cancelled, attempts)
        clock.advance(1)
        self.assertEqual(len(attempts), 2)

    def test_spent_budget_stops_hedges(self) -> None:
        """With the retry budget spent, no hedge is sent and the first attempt's answer is the call's."""
        clock = Clock()
        budget = RetryBudget(RetryThrottle(max_tokens=2))
        budget.tokens = 1
        attempts: list[Deferred[Any]] = []

        def attempt(remaining: float | None) -> Deferred[Any]:
            attempts.append(Deferred())
            return attempts[-1]
        d = hedged_call(attempt, self.HEDGING, clock, budget=budget)
        clock.advance(1)
        self.assertEqual(len(attempts), 1)
        attempts[0].errback(Unavailable("down"))
        self.failureResultOf(d, Unavailable)

    def test_every_attempt_failing(self) -> None:
        """When every attempt fails with a non-fatal error, the call fails with the last one."""
        clock = Clock()
        errors = iter([Unavailable("1"), Unavailable("2"), Unavailable("3")])
        d = hedged_call(lambda remaining: fail(next(errors)), self.HEDGING, clock)
        self.assertEqual(self.failureResultOf(d, Unavailable).value.message, "3")

    def test_answer_none(self) -> None:
        """A first attempt answering None is the call's result."""
        d = hedged_call(lambda remaining: succeed(None), self.HEDGING, Clock())
        self.assertIsNone(self.successResultOf(d))

    def test_bad_policy(self) -> None:
        """A hedging policy without attempts or with a negative delay is refused with ValueError."""
        self.assertRaises(ValueError, HedgingPolicy, max_attempts=0)
        self.assertRaises(ValueError, HedgingPolicy, delay=-1)
