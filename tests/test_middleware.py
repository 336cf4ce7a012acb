"""
Tests for the built-in interceptors (L{rpcd.accesslog}, L{rpcd.ratelimit},
L{rpcd.tracing}) and pushback in L{rpcd.retry} and L{rpcd.balancer}, in
memory.
"""

from __future__ import annotations

import io
import json
import random
from typing import Any, AsyncIterator

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import (
    Logger,
    LogLevel,
    capturedLogs,
    eventsFromJSONLogFile,
    jsonFileLogObserver,
)
from twisted.trial.unittest import SynchronousTestCase

from rpcd.accesslog import AccessLog
from rpcd.errors import Code, NotFound, ResourceExhausted, RPCError, Unavailable
from rpcd.ratelimit import RETRY_AFTER, RateLimit, pushback, retry_after_header
from rpcd.retry import RetryPolicy, retrying_call
from rpcd.service import ServiceRegistry, exposed
from rpcd.testing import MemoryConnection
from rpcd.tracing import Tracing


class Svc:
    @exposed
    def Echo(self, s: str) -> str:
        return s

    @exposed
    def Missing(self, n: int) -> int:
        raise NotFound("no such thing")

    @exposed
    def Later(self, n: int) -> Deferred[int]:
        self.pending: Deferred[int] = Deferred()
        return self.pending

    @exposed
    async def Count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i


def connect(*interceptors: Any, clock: Clock | None = None) -> MemoryConnection:
    registry = ServiceRegistry(interceptors=interceptors)
    registry.add(Svc(), name="S")
    return MemoryConnection(registry, clock=clock)


def access_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("access")]


class AccessLogTests(SynchronousTestCase):
    """One structured event per call."""

    def test_fields(self) -> None:
        """A call's event has its method, protocol, peer, code, duration and sizes."""
        clock = Clock()
        conn = connect(AccessLog(), clock=clock)
        with capturedLogs() as events:
            d = conn.client.call("S.Later", 1)
            conn.flush()
            clock.advance(0.25)
            svc = conn.server.registry.lookup_shared("S.Later").function.__self__
            svc.pending.callback(5)
            conn.flush()
        self.assertEqual(self.successResultOf(d), 5)
        [event] = access_events(events)
        self.assertEqual((event["method"], event["protocol"], event["code"], event["kind"],
                          event["duration_ms"], event["bytes_in"], event["bytes_out"],
                          event["user"], event["log_namespace"], event["log_level"]),
                         ("S.Later", "native", "OK", "unary", 250.0, 1, 1, None, "rpcd.access",
                          LogLevel.info))
        self.assertEqual(event["peer"], conn.server_protocol.inner.session.peer)

    def test_error_code_always_logged(self) -> None:
        """A failed call is logged with its code's name even when sampling drops every success."""
        conn = connect(AccessLog(sample=0.0))
        with capturedLogs() as events:
            conn.client.call("S.Echo", "x")
            conn.client.call("S.Missing", 1).addErrback(lambda f: None)
            conn.flush()
        self.assertEqual([e["code"] for e in access_events(events)], ["NOT_FOUND"])

    def test_sampling(self) -> None:
        """With sample = 0.5, about half the successes are logged, decided by the rng."""
        log = AccessLog(sample=0.5, rng=random.Random(7))
        conn = connect(log)
        with capturedLogs() as events:
            for i in range(200):
                conn.client.call("S.Echo", "x")
            conn.flush()
        logged = len(access_events(events))
        self.assertEqual((logged, log.logged, log.skipped), (logged, logged, 200 - logged))
        self.assertTrue(60 < logged < 140, logged)

    def test_slow_always_logged(self) -> None:
        """A call over slow_ms is logged at warn with slow=True even when sampling would skip it."""
        clock = Clock()
        conn = connect(AccessLog(sample=0.0, slow_ms=100), clock=clock)
        svc = conn.server.registry.lookup_shared("S.Later").function.__self__
        with capturedLogs() as events:
            conn.client.call("S.Later", 1)
            conn.flush()
            clock.advance(0.1)
            svc.pending.callback(1)
            conn.flush()
            conn.client.call("S.Echo", "fast")
            conn.flush()
        [event] = access_events(events)
        self.assertEqual((event["slow"], event["log_level"]), (True, LogLevel.warn))

    def test_stream_counts(self) -> None:
        """A stream's event counts the messages it sent."""
        conn = connect(AccessLog())
        with capturedLogs() as events:
            stream = conn.client.stream("S.Count", 3)
            d = stream.result()
            conn.flush()
        self.successResultOf(d)
        [event] = access_events(events)
        self.assertEqual((event["kind"], event["messages_out"], event["messages_in"], event["code"]),
                         ("server_stream", 3, 0, "OK"))

    def test_json_lines(self) -> None:
        """Through jsonFileLogObserver, an access event is one JSON line with its fields."""
        out = io.StringIO()
        log = AccessLog(logger=Logger(namespace="rpcd.access", observer=jsonFileLogObserver(out)))
        conn = connect(log)
        conn.client.call("S.Echo", "hello")
        conn.flush()
        [event] = list(eventsFromJSONLogFile(io.StringIO(out.getvalue())))
        self.assertEqual((event["method"], event["code"], event["bytes_in"]), ("S.Echo", "OK", 6))
        self.assertEqual(json.loads(out.getvalue().strip("\x1e\n"))["method"], "S.Echo")

    def test_bad_options(self) -> None:
        """Bad options are refused naming them."""
        self.assertIn("sample", str(self.assertRaises(ValueError, AccessLog, sample=2)))
        self.assertIn("slow_ms", str(self.assertRaises(ValueError, AccessLog, slow_ms=-1)))


class RateLimitTests(SynchronousTestCase):
    """Token buckets per method, host and user."""

    def test_per_host_refuses_with_hint(self) -> None:
        """Past the burst, calls get RESOURCE_EXHAUSTED with retry_after until tokens come back."""
        clock = Clock()
        conn = connect(RateLimit(per_host={"rate": 2, "burst": 3}, clock=clock), clock=clock)
        results = [conn.client.call("S.Echo", "x") for _ in range(4)]
        conn.flush()
        for d in results[:3]:
            self.assertEqual(self.successResultOf(d), "x")
        error = self.failureResultOf(results[3], RPCError).value
        self.assertEqual(error.code, Code.RESOURCE_EXHAUSTED)
        self.assertEqual(error.details, {"retry_after": 0.5, "limit": "host"})
        self.assertEqual(pushback(error), 0.5)
        clock.advance(0.5)
        d = conn.client.call("S.Echo", "again")
        conn.flush()
        self.assertEqual(self.successResultOf(d), "again")

    def test_per_method(self) -> None:
        """A method's limit applies to that method only; '*' gives the others theirs."""
        clock = Clock()
        limit = RateLimit(methods={"S.Echo": {"rate": 1, "burst": 1}, "*": {"rate": 1, "burst": 2}},
                          clock=clock)
        conn = connect(limit, clock=clock)
        echo = [conn.client.call("S.Echo", "x") for _ in range(2)]
        missing = [conn.client.call("S.Missing", 1) for _ in range(3)]
        conn.flush()
        self.successResultOf(echo[0])
        self.assertEqual(self.failureResultOf(echo[1], RPCError).value.details["limit"], "method")
        codes = [self.failureResultOf(d, RPCError).value.code for d in missing]
        self.assertEqual(codes, [Code.NOT_FOUND, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED])
        self.assertEqual(limit.refused["method"], 2)

    def test_per_user(self) -> None:
        """Calls of a logged-in user share its bucket; anonymous calls are not limited by it."""
        clock = Clock()
        limit = RateLimit(per_user={"rate": 1, "burst": 1}, clock=clock)
        conn = connect(limit, clock=clock)
        session = conn.server_protocol.inner.session
        for _ in range(3):
            conn.client.call("S.Echo", "anon")
        conn.flush()
        session.user = "alice"
        first, second = conn.client.call("S.Echo", "a"), conn.client.call("S.Echo", "b")
        conn.flush()
        self.successResultOf(first)
        self.assertEqual(self.failureResultOf(second, RPCError).value.details["limit"], "user")
        self.assertEqual(session.data[RETRY_AFTER], 1.0)

    def test_tables_bounded(self) -> None:
        """A table keeps at most max_keys buckets, dropping the least recently used."""
        clock = Clock()
        limit = RateLimit(per_host={"rate": 1, "burst": 5}, max_keys=2, clock=clock)

        class Call:
            method, known, peer, user, tls_identity = "S.Echo", True, "", None, None

            def __init__(self, host: str) -> None:
                self.peer_host = host
        for host in ("a", "b", "c", "b"):
            limit.intercept(Call(host), lambda c: succeed(None))
        assert limit.hosts is not None
        self.assertEqual(list(limit.hosts.buckets), ["c", "b"])

    def test_bad_options(self) -> None:
        """Malformed limits are refused naming the key."""
        e = self.assertRaises(ValueError, RateLimit, per_host={"rate": 0}, clock=Clock())
        self.assertIn("per_host.rate", str(e))
        e = self.assertRaises(ValueError, RateLimit, methods={"S.Echo": {"rat": 1}}, clock=Clock())
        self.assertIn("methods.S.Echo", str(e))
        e = self.assertRaises(ValueError, RateLimit, max_keys=0, clock=Clock())
        self.assertIn("max_keys", str(e))

    def test_retry_after_header(self) -> None:
        """Retry-After is whole seconds, rounded up, at least 1."""
        self.assertEqual([retry_after_header(s) for s in (0.01, 1.0, 1.2)], ["1", "1", "2"])


class PushbackTests(SynchronousTestCase):
    """The retry policy honours retry-after hints."""

    def refusal(self, seconds: float) -> ResourceExhausted:
        return ResourceExhausted("slow down", details={"retry_after": seconds, "limit": "host"})

    def test_waits_at_least_the_hint(self) -> None:
        """A retry waits for the hint, not the (shorter) backoff."""
        clock = Clock()
        outcomes = [fail(self.refusal(3.0)), succeed("ok")]
        times: list[float] = []

        def attempt(remaining: float | None) -> Deferred[Any]:
            times.append(clock.seconds())
            return outcomes.pop(0)
        policy = RetryPolicy(max_attempts=2, initial_backoff=0.1, jitter=0.0)
        d = retrying_call(attempt, policy, clock)
        clock.advance(2.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), "ok")
        self.assertEqual(times, [0.0, 3.0])

    def test_no_retry_past_deadline(self) -> None:
        """A hint longer than what is left of the deadline fails the call at once."""
        clock = Clock()
        attempts: list[float | None] = []

        def attempt(remaining: float | None) -> Deferred[Any]:
            attempts.append(remaining)
            return fail(self.refusal(10.0))
        policy = RetryPolicy(max_attempts=3, initial_backoff=0.1, jitter=0.0)
        d = retrying_call(attempt, policy, clock, timeout=5.0)
        self.failureResultOf(d, ResourceExhausted)
        self.assertEqual(attempts, [5.0])

    def test_malformed_hint_ignored(self) -> None:
        """Hints that are not a non-negative number, or on other codes, are ignored."""
        self.assertIsNone(pushback(ResourceExhausted("x", details={"retry_after": "soon"})))
        self.assertIsNone(pushback(ResourceExhausted("x", details={"retry_after": -1})))
        self.assertIsNone(pushback(Unavailable("x", details={"retry_after": 1})))
        self.assertIsNone(pushback(ValueError("x")))


class TracingTests(SynchronousTestCase):
    """Spans and W3C trace context, in memory."""

    def setUp(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracing = Tracing(tracer_provider=provider)

    def test_client_and_server_spans(self) -> None:
        """A traced client's call and the traced server's handling are one trace, server child of client."""
        conn = connect(self.tracing)
        conn.client.interceptors = (self.tracing,)
        d = conn.client.call("S.Echo", "x")
        conn.flush()
        self.successResultOf(d)
        spans = {s.kind: s for s in self.exporter.get_finished_spans()}
        server, client = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
        self.assertEqual(server.context.trace_id, client.context.trace_id)
        self.assertEqual(server.parent.span_id, client.context.span_id)
        self.assertEqual((server.name, server.attributes["rpc.system"], server.attributes["rpc.service"],
                          server.attributes["rpc.method"], server.attributes["rpc.rpcd.status_code"]),
                         ("S/Echo", "rpcd", "S", "Echo", 0))

    def test_error_status(self) -> None:
        """NOT_FOUND is an error on the client span but not on the server span (as gRPC's conventions say)."""
        conn = connect(self.tracing)
        conn.client.interceptors = (self.tracing,)
        conn.client.call("S.Missing", 1).addErrback(lambda f: None)
        conn.flush()
        spans = {s.kind: s for s in self.exporter.get_finished_spans()}
        self.assertEqual(spans[SpanKind.CLIENT].status.status_code, StatusCode.ERROR)
        self.assertEqual(spans[SpanKind.SERVER].status.status_code, StatusCode.UNSET)
        self.assertEqual(spans[SpanKind.SERVER].attributes["rpc.rpcd.status_code"], 5)

    def test_untraced_caller_starts_trace(self) -> None:
        """A call without traceparent gets a new root span on the server, its trace id in call.data."""
        seen: list[Any] = []

        class Spy:
            def intercept(self, call: Any, proceed: Any) -> Any:
                seen.append(call.data.get("trace_id"))
                return proceed(call)
        conn = connect(self.tracing, Spy())
        conn.client.call("S.Echo", "x")
        conn.flush()
        [span] = self.exporter.get_finished_spans()
        self.assertIsNone(span.parent)
        self.assertEqual(seen, [format(span.context.trace_id, "032x")])


class BalancerPushbackTests(SynchronousTestCase):
    """The balancer avoids an endpoint that pushed back, and runs client interceptors once per call."""

    def test_avoids_pushed_back_endpoint(self) -> None:
        """After a refusal with retry_after, calls go to the other endpoint until the hint's time passes."""
        from tests.test_balancer import Cluster
        cluster = Cluster(self, "a", "b")
        a = cluster.nodes[0]
        a.server.registry.interceptors = (
            RateLimit(methods={"Who.Name": {"rate": 0.1, "burst": 1}}, clock=cluster.clock),)
        balancer = cluster.connect(policy="round_robin", health=None)

        def names(count: int) -> list[str]:
            calls = [balancer.call("Who.Name", retry=None) for _ in range(count)]
            cluster.flush()
            return [self.successResultOf(d.addErrback(lambda f: "refused")) for d in calls]
        first = names(3)
        self.assertEqual(sorted(first), ["a", "b", "refused"])
        self.assertEqual(names(4), ["b", "b", "b", "b"])
        cluster.advance(10.0)
        self.assertIn("a", names(2))

    def test_interceptors_once_per_call(self) -> None:
        """A balancer's client interceptors see one call around its retries, ending in success."""
        from tests.test_balancer import Cluster
        cluster = Cluster(self, "a", "b")
        seen: list[str] = []

        class Spy:
            def intercept(self, call: Any, proceed: Any) -> Any:
                seen.append(call.method)
                return proceed(call).addErrback(
                    lambda f: (seen.append(f"failed {f.value.code}"), f)[1])
        balancer = cluster.connect(policy="round_robin", health=None, interceptors=[Spy()])
        d = balancer.call("Who.Fail", 14)
        cluster.flush()
        cluster.advance(1.0)
        cluster.advance(1.0)
        self.failureResultOf(d, RPCError)
        self.assertEqual(seen, ["Who.Fail", "failed 14"])
        self.assertEqual(sum(node.calls for node in cluster.nodes), 3)
