"""
Tests for L{rpcd.balancer} and its parts (L{rpcd.pickers},
L{rpcd.breaker}, L{rpcd.backend}, L{rpcd.resolver}), without sockets: each
endpoint is a real L{rpcd.server.RPCServer} in memory, connected through
L{twisted.test.iosim}, and time is a L{Clock}.
"""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace
from typing import Any, AsyncIterator

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rpcd.backend import CIRCUIT_OPEN, CONNECTING, READY, UNHEALTHY, HealthCheck
from rpcd.balancer import Balancer, connect_balanced
from rpcd.breaker import CLOSED, HALF_OPEN, OPEN, BreakerPolicy, CircuitBreaker
from rpcd.errors import Code, ConnectionLost, NotFound, RPCError, Unavailable
from rpcd.pickers import (
    DynamicWeight,
    IPicker,
    LeastOutstanding,
    RandomPick,
    RoundRobin,
    Weighted,
    make_picker,
)
from rpcd.resolver import IResolver, StaticResolver
from rpcd.retry import RetryPolicy
from rpcd.server import RPCServer
from rpcd.service import ServiceRegistry, exposed

FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff=0.1, jitter=0)


class Health:
    """A health service whose answer the test sets (None: never answers)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    @exposed
    def Check(self, service: str = "") -> Any:
        """Answer the node's status."""
        if self.node.status is None:
            d: Deferred[str] = Deferred()
            self.node.checks.append(d)
            return d
        return self.node.status


class Who:
    """Calls that say which node answered, hang, or fail."""

    def __init__(self, node: Node) -> None:
        self.node = node

    @exposed
    def Name(self) -> str:
        """Return the node's name."""
        self.node.calls += 1
        return self.node.name

    @exposed
    def Hold(self) -> Deferred[str]:
        """Answer when the test fires the held Deferred."""
        d: Deferred[str] = Deferred()
        self.node.held.append(d)
        return d

    @exposed
    async def Count(self, n: int) -> AsyncIterator[str]:
        """Stream the node's name n times."""
        self.node.calls += 1
        for _ in range(n):
            yield self.node.name

    @exposed
    async def Gate(self, values: AsyncIterator[Any]) -> AsyncIterator[str]:
        """Once the test fires the held Deferred, echo each value with the node's name."""
        self.node.calls += 1
        d: Deferred[str] = Deferred()
        self.node.held.append(d)
        await d
        async for value in values:
            yield f"{self.node.name}:{value}"

    @exposed
    async def Total(self, values: AsyncIterator[int]) -> str:
        """Answer the node's name and the sum of the values."""
        self.node.calls += 1
        return f"{self.node.name}:{sum([v async for v in values])}"

    @exposed
    def Fail(self, code: int) -> None:
        """Fail with the given code."""
        self.node.calls += 1
        raise RPCError(f"{self.node.name} failed", code=code)

    @exposed
    def Slow(self) -> Deferred[str]:
        """Answer the node's name after the node's delay on the clock."""
        self.node.calls += 1
        return deferLater(self.node.clock, self.node.delay, lambda: self.node.name)


class Node:
    """One in-memory server, and the client endpoint that reaches it."""

    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self.clock = clock
        self.status: str | None = "SERVING"
        self.calls = 0
        self.delay = 0.0
        self.held: list[Deferred[str]] = []
        self.checks: list[Deferred[str]] = []
        self.up = True
        self.pumps: list[iosim.IOPump] = []
        registry = ServiceRegistry()
        registry.add(Health(self))
        registry.add(Who(self))
        self.server = RPCServer(registry, clock)

    def __repr__(self) -> str:
        return self.name

    def connect(self, factory: Any) -> Deferred[Any]:
        """IStreamClientEndpoint.connect, in memory; refused while down."""
        if not self.up:
            return fail(ConnectionRefusedError(self.name))
        client = factory.buildProtocol(None)
        server = self.server.factory().buildProtocol(None)
        self.pumps.append(iosim.connect(server, iosim.FakeTransport(server, True), client,
                                        iosim.FakeTransport(client, False), greet=False,
                                        clock=self.clock))
        return succeed(client)

    def kill(self) -> None:
        """Stop accepting connections and drop the open ones."""
        self.up = False
        for pump in self.pumps:
            pump.serverIO.loseConnection()


class Cluster:
    """Several nodes sharing a clock."""

    def __init__(self, test: SynchronousTestCase, *names: str) -> None:
        self.test = test
        self.clock = Clock()
        self.nodes = [Node(name, self.clock) for name in names]

    def connect(self, **kwargs: Any) -> Balancer:
        kwargs.setdefault("reconnect", lambda attempt: 1.0)
        kwargs.setdefault("retry", FAST_RETRY)
        d = connect_balanced(self.nodes, reactor=self.clock, **kwargs)
        self.flush()
        balancer = self.test.successResultOf(d)
        self.test.addCleanup(balancer.close)
        return balancer

    def flush(self) -> None:
        moved = True
        while moved:
            moved = any([pump.flush() for node in self.nodes for pump in node.pumps])

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    def names(self, balancer: Balancer, count: int) -> list[str]:
        calls = [balancer.Who.Name() for _ in range(count)]
        self.flush()
        return [self.test.successResultOf(d) for d in calls]


class PickerTests(SynchronousTestCase):
    """The policies on their own."""

    def setUp(self) -> None:
        self.a, self.b, self.c = (SimpleNamespace(key=k, outstanding=0) for k in "abc")

    def test_interfaces(self) -> None:
        """Every shipped policy and the static resolver provide their interfaces."""
        for picker in (RoundRobin(), RandomPick(), LeastOutstanding(), Weighted({}), DynamicWeight()):
            verifyObject(IPicker, picker)
        verifyObject(IResolver, StaticResolver(["tcp:h:1"]))

    def test_round_robin(self) -> None:
        """Round robin takes each candidate in turn."""
        picker = RoundRobin()
        picks = [picker.pick([self.a, self.b, self.c]).key for _ in range(7)]
        self.assertEqual("".join(picks), "abcabca")

    def test_least_outstanding(self) -> None:
        """The candidate with the fewest pending calls wins; ties go in turn."""
        picker = LeastOutstanding()
        self.a.outstanding, self.b.outstanding, self.c.outstanding = 3, 1, 1
        picks = [picker.pick([self.a, self.b, self.c]).key for _ in range(4)]
        self.assertEqual(picks, ["b", "c", "b", "c"])
        self.c.outstanding = 0
        self.assertEqual(picker.pick([self.a, self.b, self.c]).key, "c")

    def test_weighted_proportions(self) -> None:
        """Weighted picks follow the weights exactly over a cycle, spread out rather than in runs."""
        picker = make_picker("weighted", weights=[5, 1, 1], endpoints=["a", "b", "c"])
        picks = "".join(picker.pick([self.a, self.b, self.c]).key for _ in range(7))
        self.assertEqual(picks, "aabacaa")
        counts = Counter(picker.pick([self.a, self.b, self.c]).key for _ in range(700))
        self.assertEqual(counts, {"a": 500, "b": 100, "c": 100})

    def test_random(self) -> None:
        """Random picks only among the candidates, and reaches each of them."""
        picker = RandomPick(random.Random(7))
        counts = Counter(picker.pick([self.a, self.c]).key for _ in range(200))
        self.assertEqual(set(counts), {"a", "c"})
        self.assertGreater(min(counts.values()), 60)

    def test_bad_policies(self) -> None:
        """Unknown policies, weights without the weighted policy and bad weights are refused."""
        self.assertRaises(ValueError, make_picker, "fastest")
        self.assertRaises(ValueError, make_picker, "round_robin", weights={"a": 1})
        self.assertRaises(ValueError, make_picker, "weighted")
        self.assertRaises(ValueError, make_picker, "weighted", weights=[1], endpoints=["a", "b"])
        self.assertRaises(ValueError, make_picker, "weighted", weights={"a": 0})


class DynamicWeightTests(SynchronousTestCase):
    """Seed 004's dynamic weights: response time and calls in flight."""

    def setUp(self) -> None:
        self.a, self.b, self.c = (SimpleNamespace(key=k, outstanding=0) for k in "abc")

    def test_formula(self) -> None:
        """weight = base * max(0.1, 1 - rt/1 s) / (active + 1), rt a moving average."""
        picker = make_picker("dynamic_weight", weights={"a": 2})
        self.assertIsInstance(picker, DynamicWeight)
        self.assertEqual(picker.weight(self.a), 2)
        picker.observe("a", 0.5)
        self.assertAlmostEqual(picker.weight(self.a), 1.0)
        picker.observe("a", 1.5)  # 0.5 + 0.3 * (1.5 - 0.5) = 0.8
        self.assertAlmostEqual(picker.latency["a"], 0.8)
        self.assertAlmostEqual(picker.weight(self.a), 0.4)
        picker.observe("b", 5.0)
        self.assertAlmostEqual(picker.weight(self.b), 0.1)  # the floor
        self.b.outstanding = 4
        self.assertAlmostEqual(picker.weight(self.b), 0.02)

    def test_proportions(self) -> None:
        """Picks follow the weights: an endpoint at the floor gets a tenth of a fast one's share."""
        picker = DynamicWeight()
        picker.observe("c", 2.0)
        counts = Counter(picker.pick([self.a, self.b, self.c]).key for _ in range(210))
        self.assertEqual(sum(counts.values()), 210)
        self.assertAlmostEqual(counts["c"], 10, delta=1)
        self.assertAlmostEqual(counts["a"], 100, delta=1)

    def test_bad_settings(self) -> None:
        """Non-positive weights, alpha out of (0, 1] and a non-positive scale are refused."""
        self.assertRaises(ValueError, DynamicWeight, {"a": 0})
        self.assertRaises(ValueError, DynamicWeight, alpha=0)
        self.assertRaises(ValueError, DynamicWeight, scale=0)
        self.assertRaises(ValueError, make_picker, "dynamic_weight", weights=[1], endpoints=["a", "b"])

    def test_balancer_learns(self) -> None:
        """Through a balancer, a node answering in 0.9 s gets a small share of calls; fast ones the rest."""
        cluster = Cluster(self, "a", "b", "c")
        cluster.nodes[1].delay = 0.9
        cluster.nodes[0].delay = cluster.nodes[2].delay = 0.01
        balancer = cluster.connect(policy="dynamic_weight", health=None)
        for _ in range(60):
            d = balancer.Who.Slow()
            cluster.flush()
            while not d.called:
                cluster.advance(0.01)
            self.successResultOf(d)
        a, b, c = (node.calls for node in cluster.nodes)
        self.assertEqual(a + b + c, 60)
        self.assertLessEqual(b, 6)
        self.assertGreaterEqual(min(a, c), 25)
        self.assertGreater(balancer.picker.latency[cluster.nodes[1]], 0.5)


class BreakerTests(SynchronousTestCase):
    """The circuit breaker's states."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.breaker = CircuitBreaker(BreakerPolicy(failure_threshold=3, reset_timeout=10), self.clock)

    def test_opens_after_threshold(self) -> None:
        """Failures in a row open the circuit at the threshold; a success in between resets the count."""
        self.breaker.record(Unavailable("x"))
        self.breaker.record(Unavailable("x"))
        self.breaker.record(None)
        self.breaker.record(Unavailable("x"))
        self.breaker.record(Unavailable("x"))
        self.assertEqual(self.breaker.state, CLOSED)
        self.breaker.record(Unavailable("x"))
        self.assertEqual(self.breaker.state, OPEN)
        self.assertFalse(self.breaker.allows())

    def test_application_errors_are_answers(self) -> None:
        """Errors that are not failure codes count as successes."""
        for _ in range(5):
            self.breaker.record(NotFound("x"))
        self.assertEqual(self.breaker.state, CLOSED)

    def test_half_open_trial_success_closes(self) -> None:
        """After the cool-down one trial call is let through, and its success closes the circuit."""
        for _ in range(3):
            self.breaker.record(Unavailable("x"))
        self.clock.advance(9.9)
        self.assertFalse(self.breaker.allows())
        self.clock.advance(0.1)
        self.assertEqual(self.breaker.state, HALF_OPEN)
        self.assertTrue(self.breaker.allows())
        self.breaker.begin()
        self.assertFalse(self.breaker.allows())
        self.breaker.record(None)
        self.assertEqual(self.breaker.state, CLOSED)
        self.assertTrue(self.breaker.allows())

    def test_half_open_trial_failure_reopens(self) -> None:
        """A failed trial opens the circuit for another full cool-down."""
        for _ in range(3):
            self.breaker.record(Unavailable("x"))
        self.clock.advance(10)
        self.breaker.begin()
        self.breaker.record(Unavailable("x"))
        self.assertEqual(self.breaker.state, OPEN)
        self.clock.advance(9)
        self.assertFalse(self.breaker.allows())
        self.clock.advance(1)
        self.assertTrue(self.breaker.allows())

    def test_expire_ends_the_cool_down(self) -> None:
        """Expiring an open circuit makes it half-open at once; it leaves a closed one closed."""
        self.breaker.expire()
        self.assertEqual(self.breaker.state, CLOSED)
        for _ in range(3):
            self.breaker.record(Unavailable("x"))
        self.breaker.expire()
        self.assertEqual(self.breaker.state, HALF_OPEN)
        self.assertTrue(self.breaker.allows())

    def test_cancelled_trial_frees_the_slot(self) -> None:
        """A cancelled trial call lets another trial through."""
        for _ in range(3):
            self.breaker.record(Unavailable("x"))
        self.clock.advance(10)
        self.breaker.begin()
        self.breaker.record(CancelledError())
        self.assertTrue(self.breaker.allows())


class BalancerTests(SynchronousTestCase):
    """Balancing over in-memory servers."""

    def test_round_robin_spreads_calls(self) -> None:
        """Calls go to each endpoint in turn, after each connected and passed its first health check."""
        cluster = Cluster(self, "a", "b", "c")
        balancer = cluster.connect()
        self.assertEqual([b.state for b in balancer.backends], [READY] * 3)
        self.assertEqual(cluster.names(balancer, 6), ["a", "b", "c", "a", "b", "c"])

    def test_call_api(self) -> None:
        """C{call} takes a method name and arguments, as L{rpcd.client.Client.call} does."""
        cluster = Cluster(self, "a")
        balancer = cluster.connect()
        d = balancer.call("Who.Fail", int(Code.NOT_FOUND), timeout=5, metadata={"k": "v"})
        cluster.flush()
        self.assertEqual(self.failureResultOf(d, NotFound).value.message, "a failed")

    def test_weighted(self) -> None:
        """Weighted balancing sends calls in proportion to the weights."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect(policy="weighted", weights=[3, 1])
        self.assertEqual(Counter(cluster.names(balancer, 40)), {"a": 30, "b": 10})

    def test_least_outstanding(self) -> None:
        """Least outstanding sends a call to the endpoint with the fewest calls pending."""
        cluster = Cluster(self, "a", "b", "c")
        balancer = cluster.connect(policy="least_outstanding")
        a, b, c = cluster.nodes
        holds = [balancer.Who.Hold() for _ in range(3)]
        cluster.flush()
        self.assertEqual([len(n.held) for n in cluster.nodes], [1, 1, 1])
        a.held[0].callback("done")
        c.held[0].callback("done")
        cluster.flush()
        self.assertEqual(self.successResultOf(holds[0]), "done")
        self.assertEqual(sorted(cluster.names(balancer, 2)), ["a", "c"])
        balancer.Who.Hold()
        balancer.Who.Hold()
        cluster.flush()
        self.assertEqual([len(n.held) for n in cluster.nodes], [2, 1, 2])

    def test_dead_endpoint_skipped_and_back(self) -> None:
        """A lost endpoint is skipped without errors, then used again once it reconnects and passes its health check."""
        cluster = Cluster(self, "a", "b", "c")
        balancer = cluster.connect()
        b = cluster.nodes[1]
        b.kill()
        cluster.flush()
        self.assertEqual(balancer.backends[1].state, CONNECTING)
        self.assertEqual(Counter(cluster.names(balancer, 6)), {"a": 3, "c": 3})
        cluster.advance(1.0)
        self.assertEqual(balancer.backends[1].state, CONNECTING)
        self.assertIn("b connecting (", balancer.describe())
        ready = balancer.when_ready(at_least=3)
        self.assertNoResult(ready)
        b.up = True
        cluster.advance(1.0)
        self.assertIs(self.successResultOf(ready), balancer)
        self.assertEqual(balancer.backends[1].state, READY)
        self.assertEqual(Counter(cluster.names(balancer, 6)), {"a": 2, "b": 2, "c": 2})

    def test_unhealthy_endpoint_out_until_it_passes(self) -> None:
        """An endpoint answering anything but SERVING is taken out until a check passes again."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect(health=HealthCheck(interval=5, timeout=1))
        a = cluster.nodes[0]
        a.status = "NOT_SERVING"
        cluster.advance(5)
        self.assertEqual(balancer.backends[0].state, UNHEALTHY)
        self.assertIn("'NOT_SERVING'", balancer.describe())
        self.assertEqual(cluster.names(balancer, 3), ["b", "b", "b"])
        a.status = "SERVING"
        cluster.advance(5)
        self.assertEqual(balancer.backends[0].state, READY)
        self.assertEqual(sorted(cluster.names(balancer, 2)), ["a", "b"])

    def test_health_check_timeout(self) -> None:
        """A health check that does not answer within its timeout takes the endpoint out."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect(health=HealthCheck(interval=5, timeout=1))
        cluster.nodes[1].status = None
        cluster.advance(5)
        self.assertEqual(balancer.backends[1].state, READY)
        cluster.advance(1)
        self.assertEqual(balancer.backends[1].state, UNHEALTHY)
        self.assertEqual(cluster.names(balancer, 2), ["a", "a"])

    def test_lost_connection_retried_on_another_endpoint(self) -> None:
        """A call pending on an endpoint that goes away is retried on another, and the caller sees only the answer."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect()
        a, b = cluster.nodes
        d = balancer.Who.Hold()
        cluster.flush()
        self.assertEqual(len(a.held), 1)
        a.kill()
        cluster.flush()
        self.assertNoResult(d)
        cluster.advance(0.1)
        self.assertEqual(len(b.held), 1)
        b.held[0].callback("from b")
        cluster.flush()
        self.assertEqual(self.successResultOf(d), "from b")

    def test_unavailable_retried_on_untried_endpoint(self) -> None:
        """A call failing with UNAVAILABLE is retried on endpoints it has not tried yet."""
        cluster = Cluster(self, "a", "b", "c")
        balancer = cluster.connect(retry=RetryPolicy(max_attempts=3, jitter=0))
        d = balancer.call("Who.Fail", int(Code.UNAVAILABLE))
        for _ in range(3):
            cluster.advance(0.2)
        failure = self.failureResultOf(d, Unavailable)
        self.assertIn(failure.value.message, {"b failed", "c failed"})
        self.assertEqual([n.calls for n in cluster.nodes], [1, 1, 1])

    def test_no_usable_endpoint(self) -> None:
        """With every endpoint down, a call fails with UNAVAILABLE naming each endpoint's state."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect(retry=None)
        for node in cluster.nodes:
            node.kill()
        cluster.flush()
        d = balancer.Who.Name()
        message = self.failureResultOf(d, Unavailable).value.message
        self.assertIn("no endpoint is usable", message)
        self.assertIn("a connecting (connection lost", message)
        self.assertIn("b connecting", message)

    def test_connect_fails_when_all_refuse(self) -> None:
        """connect_balanced fails with UNAVAILABLE once every endpoint refused, and stops reconnecting."""
        cluster = Cluster(self, "a", "b")
        for node in cluster.nodes:
            node.up = False
        d = connect_balanced(cluster.nodes, reactor=cluster.clock)
        message = self.failureResultOf(d, Unavailable).value.message
        self.assertIn("a connecting (Connection was refused", message)
        self.assertEqual(cluster.clock.getDelayedCalls(), [])

    def test_connect_fails_at_first_failed_health_check(self) -> None:
        """connect_balanced fails as soon as every endpoint's first health check failed, with the answer, long before connect_timeout."""
        cluster = Cluster(self, "a", "b")
        for node in cluster.nodes:
            node.status = "NOT_SERVING"
        d = connect_balanced(cluster.nodes, reactor=cluster.clock, connect_timeout=3600)
        cluster.flush()
        message = self.failureResultOf(d, Unavailable).value.message
        self.assertIn("a unhealthy (health check answered 'NOT_SERVING')", message)
        self.assertIn("b unhealthy (health check answered 'NOT_SERVING')", message)
        self.assertEqual(cluster.clock.seconds(), 0)
        self.assertEqual(cluster.clock.getDelayedCalls(), [])

    def test_when_ready_waits_for_a_pending_check(self) -> None:
        """when_ready keeps waiting while one endpoint's first health check is pending, though the other's failed."""
        cluster = Cluster(self, "a", "b")
        cluster.nodes[0].status = "NOT_SERVING"
        cluster.nodes[1].status = None
        d = connect_balanced(cluster.nodes, reactor=cluster.clock,
                             health=HealthCheck(interval=10, timeout=10))
        cluster.advance(5)
        self.assertNoResult(d)
        cluster.nodes[1].checks[0].callback("SERVING")
        cluster.flush()
        balancer = self.successResultOf(d)
        self.addCleanup(balancer.close)
        self.assertEqual([b.state for b in balancer.backends], [UNHEALTHY, READY])

    def test_connect_timeout(self) -> None:
        """connect_balanced fails after connect_timeout when no endpoint becomes usable."""
        cluster = Cluster(self, "a")
        cluster.nodes[0].status = None
        d = connect_balanced(cluster.nodes, reactor=cluster.clock, connect_timeout=3,
                             health=HealthCheck(interval=10, timeout=10))
        cluster.flush()
        cluster.advance(2)
        self.assertNoResult(d)
        cluster.advance(1)
        message = self.failureResultOf(d, Unavailable).value.message
        self.assertIn("no endpoint usable within 3 s", message)
        self.assertEqual(cluster.clock.getDelayedCalls(), [])

    def test_circuit_breaker(self) -> None:
        """Failures in a row open an endpoint's circuit (when_ready then fails at once, saying so); after the cool-down (which wakes those waiting for more endpoints) a successful trial closes it."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect(retry=None, breaker=BreakerPolicy(failure_threshold=2, reset_timeout=10))
        calls = [balancer.call("Who.Fail", int(Code.UNAVAILABLE)) for _ in range(4)]
        cluster.flush()
        for d in calls:
            self.failureResultOf(d, Unavailable)
        self.assertEqual([b.state for b in balancer.backends], [CIRCUIT_OPEN] * 2)
        self.assertEqual(balancer.backends[0].breaker.failures, 2)
        self.failureResultOf(balancer.Who.Name(), Unavailable)
        message = self.failureResultOf(balancer.when_ready(), Unavailable).value.message
        self.assertIn("a circuit open (2 failures in a row)", message)
        cluster.advance(5)
        balancer.backends[1].breaker.succeeded()
        ready = balancer.when_ready(at_least=2)
        cluster.advance(4.9)
        self.assertNoResult(ready)
        cluster.advance(0.1)
        self.assertIs(self.successResultOf(ready), balancer)
        self.assertEqual(balancer.backends[0].breaker.state, HALF_OPEN)
        self.assertEqual(Counter(cluster.names(balancer, 2)), {"a": 1, "b": 1})
        self.assertEqual([b.state for b in balancer.backends], [READY] * 2)
        self.assertEqual(balancer.backends[0].breaker.state, CLOSED)

    def test_new_connection_gets_a_trial(self) -> None:
        """An endpoint whose circuit opened gets a trial call as soon as it has a new connection."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect(retry=None, breaker=BreakerPolicy(failure_threshold=1, reset_timeout=60))
        d = balancer.call("Who.Fail", int(Code.UNAVAILABLE))
        cluster.flush()
        self.failureResultOf(d, Unavailable)
        self.assertEqual(balancer.backends[0].state, CIRCUIT_OPEN)
        a = cluster.nodes[0]
        a.kill()
        cluster.flush()
        a.up = True
        cluster.advance(1)
        self.assertEqual(balancer.backends[0].state, READY)
        self.assertEqual(balancer.backends[0].breaker.state, HALF_OPEN)
        self.assertEqual(sorted(cluster.names(balancer, 2)), ["a", "b"])
        self.assertEqual(balancer.backends[0].breaker.state, CLOSED)

    def test_resolver_updates(self) -> None:
        """A resolver asked again every interval adds endpoints and drops those no longer listed, but an empty answer changes nothing."""
        cluster = Cluster(self, "a", "b")
        a, b = cluster.nodes

        @implementer(IResolver)
        class Changing:
            endpoints = [a]

            def resolve(self) -> Deferred[list[Any]]:
                return succeed(list(self.endpoints))

        resolver = Changing()
        balancer = self._connect_with(cluster, resolver)
        self.assertEqual(cluster.names(balancer, 2), ["a", "a"])
        resolver.endpoints = [b]
        cluster.advance(30)
        self.assertEqual([backend.key for backend in balancer.backends], [b])
        self.assertTrue(a.pumps[0].clientIO.disconnected)
        self.assertEqual(cluster.names(balancer, 2), ["b", "b"])
        resolver.endpoints = []
        cluster.advance(30)
        self.assertEqual([backend.key for backend in balancer.backends], [b])

    def _connect_with(self, cluster: Cluster, resolver: Any) -> Balancer:
        d = connect_balanced(resolver, reactor=cluster.clock, resolve_interval=30)
        cluster.flush()
        balancer = self.successResultOf(d)
        self.addCleanup(balancer.close)
        return balancer

    def test_close(self) -> None:
        """Closing the balancer closes every connection and stops every timer."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect()
        d = balancer.close()
        cluster.flush()
        self.successResultOf(d)
        self.assertTrue(all(p.clientIO.disconnected for n in cluster.nodes for p in n.pumps))
        self.assertEqual(cluster.clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """Cancelling a balanced call fails it with CancelledError and makes no retry."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect()
        d = balancer.Who.Hold()
        cluster.flush()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        cluster.advance(1)
        self.assertEqual([len(n.held) for n in cluster.nodes], [1, 0])

    def test_bad_arguments(self) -> None:
        """A bad policy, codec or endpoint list fails connect_balanced with ValueError."""
        clock = Clock()
        self.failureResultOf(connect_balanced(["tcp:h:1"], reactor=clock, policy="best"), ValueError)
        self.failureResultOf(connect_balanced(["tcp:h:1"], reactor=clock, codec="xml"), ValueError)
        self.failureResultOf(connect_balanced([], reactor=clock), ValueError)
        self.failureResultOf(connect_balanced("tcp:h:1", reactor=clock), ValueError)


class ConnectionLostTests(SynchronousTestCase):
    """What a single attempt sees when its endpoint goes away."""

    def test_without_retry_the_loss_surfaces(self) -> None:
        """With retries off, a call pending on a lost connection fails with ConnectionLost."""
        cluster = Cluster(self, "a")
        balancer = cluster.connect(retry=None)
        d = balancer.Who.Hold()
        cluster.flush()
        cluster.nodes[0].kill()
        cluster.flush()
        self.failureResultOf(d, ConnectionLost)
