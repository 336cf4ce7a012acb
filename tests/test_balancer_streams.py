"""
Tests for streams through L{rpcd.balancer.Balancer.stream} and
L{rpcd.retry.RetryingClient.stream} (L{rpcd.retry_streams}), on the
in-memory cluster of L{tests.test_balancer}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from rpcd.breaker import BreakerPolicy
from rpcd.errors import Cancelled, Code, ConnectionLost, Unavailable
from rpcd.retry import RetryingClient, RetryPolicy
from rpcd.retry_streams import REPLAY_LIMIT
from tests.test_balancer import Cluster


async def collect(stream: Any) -> list[Any]:
    return [message async for message in stream]


class BalancedStreamTests(SynchronousTestCase):
    """Streams through the balancer."""

    def run_(self, cluster: Cluster, coroutine: Any) -> Deferred[Any]:
        d = Deferred.fromCoroutine(coroutine)
        cluster.flush()
        return d

    def test_server_streams_spread(self) -> None:
        """Server streams are spread over the endpoints by the policy, each pinned to one endpoint."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect()
        first = self.run_(cluster, collect(balancer.stream("Who.Count", 3)))
        second = self.run_(cluster, collect(balancer.stream("Who.Count", 2)))
        self.assertEqual(self.successResultOf(first), ["a"] * 3)
        self.assertEqual(self.successResultOf(second), ["b"] * 2)

    def test_client_stream(self) -> None:
        """A client stream's messages reach one endpoint, which answers the result."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect()
        stream = balancer.stream("Who.Total")

        async def send() -> Any:
            for n in (1, 2, 3):
                await stream.send(n)
            stream.close_send()
            return await stream.result()
        self.assertEqual(self.successResultOf(self.run_(cluster, send())), "a:6")

    def test_bidi_retried_elsewhere_before_any_answer(self) -> None:
        """A bidirectional stream whose endpoint goes away before it answered anything opens again on another, with its messages and half-close sent again."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect()
        a, b = cluster.nodes
        stream = balancer.stream("Who.Gate")
        sends = [stream.send(1), stream.send(2)]
        stream.close_send()
        messages = self.run_(cluster, collect(stream))
        self.assertEqual(len(a.held), 1)
        a.kill()
        cluster.flush()
        for d in sends:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(stream.attempts, 2)
        self.assertEqual(len(b.held), 1)
        b.held[0].callback("go")
        cluster.flush()
        self.assertEqual(self.successResultOf(messages), ["b:1", "b:2"])
        self.assertIsNone(self.successResultOf(stream.result()))

    def test_pending_send_retried(self) -> None:
        """A send still waiting for credit when its endpoint goes away is sent again on the new attempt, and succeeds."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect()
        a, b = cluster.nodes
        stream = balancer.stream("Who.Gate", window=1)
        first = stream.send(1)
        cluster.flush()
        inner = stream._inner
        inner._send_credit = 0  # as if the server had not granted credit yet
        waiting = stream.send(2)
        self.assertNoResult(waiting)
        a.kill()
        cluster.flush()
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(waiting))
        stream.close_send()
        messages = Deferred.fromCoroutine(collect(stream))
        cluster.flush()
        b.held[0].callback("go")
        cluster.flush()
        self.assertEqual(self.successResultOf(messages), ["b:1", "b:2"])

    def test_not_retried_after_an_answer(self) -> None:
        """A stream that has received a message fails with the loss of its endpoint, and is not opened again."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect()
        a, b = cluster.nodes
        stream = balancer.stream("Who.Gate")
        stream.send(1)
        first = stream.__anext__()
        cluster.flush()
        a.held[0].callback("go")
        cluster.flush()
        self.assertEqual(self.successResultOf(first), "a:1")
        a.kill()
        cluster.flush()
        self.failureResultOf(stream.result(), ConnectionLost)
        self.failureResultOf(stream.__anext__(), ConnectionLost)
        self.assertEqual((stream.attempts, b.calls), (1, 0))

    def test_not_retried_past_the_replay_limit(self) -> None:
        """A stream that sent more than it can send again is not opened again."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect()
        stream = balancer.stream("Who.Gate")
        for n in range(REPLAY_LIMIT + 1):
            stream.send(n).addErrback(lambda f: None)
        cluster.flush()
        cluster.nodes[0].kill()
        cluster.flush()
        self.failureResultOf(stream.result(), ConnectionLost)
        self.assertEqual(cluster.nodes[1].calls, 0)

    def test_no_usable_endpoint(self) -> None:
        """With no usable endpoint, the stream has failed with UNAVAILABLE naming each endpoint's state."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect(retry=None)
        for node in cluster.nodes:
            node.kill()
        cluster.flush()
        stream = balancer.stream("Who.Count", 1)
        message = self.failureResultOf(stream.result(), Unavailable).value.message
        self.assertIn("b connecting", message)
        self.failureResultOf(stream.__anext__(), Unavailable)
        self.failureResultOf(stream.send(1), Unavailable)

    def test_streams_count_on_the_breaker(self) -> None:
        """A stream lost with its connection counts as a failure on the endpoint's breaker; a trial stream on the new connection closes the circuit."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect(retry=None, breaker=BreakerPolicy(failure_threshold=1))
        stream = balancer.stream("Who.Gate")
        cluster.flush()
        backend = balancer.backends[0]
        backend.client.channel.transport.loseConnection()
        cluster.flush()
        self.failureResultOf(stream.result(), ConnectionLost)
        self.assertEqual(backend.breaker.failures, 1)
        self.assertEqual(backend.breaker.state, "open")
        cluster.advance(1)
        self.assertEqual(backend.state, "ready")  # a new connection gets a trial
        done = [self.run_(cluster, collect(balancer.stream("Who.Count", 1))) for _ in "ab"]
        self.assertEqual(sorted(self.successResultOf(d)[0] for d in done), ["a", "b"])
        self.assertEqual(backend.breaker.failures, 0)

    def test_stream_is_not_the_trial(self) -> None:
        """A stream opened on a half-open circuit does not hold its trial slot: a call can still be the trial."""
        cluster = Cluster(self, "a")
        balancer = cluster.connect(retry=None, breaker=BreakerPolicy(failure_threshold=1,
                                                                     reset_timeout=5))
        backend = balancer.backends[0]
        failed = balancer.call("Who.Fail", int(Code.UNAVAILABLE))
        cluster.flush()
        self.failureResultOf(failed, Unavailable)
        cluster.advance(5)
        self.assertEqual(backend.breaker.state, "half-open")
        stream = balancer.stream("Who.Gate")
        self.assertTrue(backend.breaker.allows())
        d = balancer.Who.Name()
        cluster.flush()
        self.assertEqual(self.successResultOf(d), "a")
        self.assertEqual(backend.breaker.state, "closed")
        stream.cancel()

    def test_cancel(self) -> None:
        """Cancelling a balanced stream fails it with Cancelled and opens no other attempt."""
        cluster = Cluster(self, "a", "b")
        balancer = cluster.connect()
        stream = balancer.stream("Who.Gate")
        cluster.flush()
        stream.cancel()
        cluster.flush()
        self.failureResultOf(stream.result(), Cancelled)
        self.assertEqual((stream.attempts, cluster.nodes[1].calls), (1, 0))


class RetryingClientStreamTests(SynchronousTestCase):
    """Streams through a L{RetryingClient}."""

    def test_reopened_on_the_target(self) -> None:
        """A stream whose first open fails with UNAVAILABLE is opened again on the target."""
        cluster = Cluster(self, "a")
        balancer = cluster.connect(retry=None)
        opened: list[Any] = []

        class Flaky:
            def stream(self, *args: Any, **kwargs: Any) -> Any:
                opened.append(args)
                if len(opened) == 1:
                    raise Unavailable("not yet")
                return balancer.stream(*args, **kwargs)
        client = RetryingClient(Flaky(), RetryPolicy(max_attempts=2), cluster.clock)
        stream = client.stream("Who.Count", 2)
        d = Deferred.fromCoroutine(collect(stream))
        cluster.flush()
        self.assertEqual(self.successResultOf(d), ["a", "a"])
        self.assertEqual(len(opened), 2)
