"""
Tests for L{rpcd.metrics} and L{rpcd.statuspage} without sockets: the
figures, the Prometheus text built from them, the built-in interceptor that
keeps them, and C{GET /metrics}, C{/debug/rpc} and C{/debug/rpc.json} at
byte level.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rpcd.config import HTTPConfig, parse
from rpcd.daemon import make_server
from rpcd.errors import Code, NotFound, ResourceExhausted
from rpcd.metrics import MAX_METHODS, OTHER, Metrics, MethodStats, MetricsInterceptor
from rpcd.service import ServiceRegistry
from rpcd.session import Session
from rpcd.statuspage import status
from tests.test_httpsafety import call, connect, make_server as make_http_server, request
from tests.test_httpwire import responses


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Parse the exposition as Prometheus would.

    @return: (sample name, sorted labels) to value.
    """
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class FakeCall:
    """What the interceptor reads of an L{rpcd.interceptors.ServerCall}."""

    def __init__(self, clock: Clock, method: str = "A.B", kind: str = "unary",
                 known: bool = True) -> None:
        self.clock = clock
        self.method = method
        self.kind = kind
        self.known = known
        self.value: Any = {"A": 1}
        self.data: dict[str, Any] = {}
        self.started = clock.seconds()
        self.filters: list[Any] = []

    def elapsed(self) -> float:
        return self.clock.seconds() - self.started

    def wrap_messages(self, received: Any = None, sent: Any = None) -> None:
        self.filters.append((received, sent))


class StatsTests(SynchronousTestCase):
    """L{MethodStats} and the series built from it."""

    def test_percentiles(self) -> None:
        """Percentiles are nearest-rank over the recent durations; None before any call."""
        stats = MethodStats()
        self.assertEqual(stats.percentiles(0.5), [None])
        for ms in range(1, 101):
            stats.ended(0, ms / 1000)
        p50, p90, p99 = stats.percentiles(0.5, 0.9, 0.99)
        self.assertEqual((p50, p90, p99), (0.05, 0.09, 0.099))
        stats.ended(Code.NOT_FOUND, 0.2)
        self.assertEqual((stats.calls, stats.errors), (101, 1))

    def test_exposition(self) -> None:
        """Calls by method and code, a cumulative histogram and calls running come out in Prometheus' format."""
        metrics = Metrics()
        stats = metrics.stats("Arith.Multiply")
        stats.ended(0, 0.0004)
        stats.ended(0, 0.003)
        stats.ended(Code.INVALID_ARGUMENT, 7.0)
        stats.running = 2
        got = samples(metrics)
        method = (("method", "Arith.Multiply"),)
        self.assertEqual(got[("rpcd_calls_total", (("code", "OK"), *method))], 2)
        self.assertEqual(got[("rpcd_calls_total", (("code", "INVALID_ARGUMENT"), *method))], 1)
        self.assertEqual(got[("rpcd_call_duration_seconds_bucket", (("le", "0.0005"), *method))], 1)
        self.assertEqual(got[("rpcd_call_duration_seconds_bucket", (("le", "0.005"), *method))], 2)
        self.assertEqual(got[("rpcd_call_duration_seconds_bucket", (("le", "5.0"), *method))], 2)
        self.assertEqual(got[("rpcd_call_duration_seconds_bucket", (("le", "+Inf"), *method))], 3)
        self.assertEqual(got[("rpcd_call_duration_seconds_count", method)], 3)
        self.assertAlmostEqual(got[("rpcd_call_duration_seconds_sum", method)], 7.0034)
        self.assertEqual(got[("rpcd_calls_running", method)], 2)

    def test_methods_bounded(self) -> None:
        """Past MAX_METHODS methods, further names share the (other) series."""
        metrics = Metrics()
        for i in range(MAX_METHODS):
            metrics.stats(f"S.M{i}")
        self.assertIs(metrics.stats("S.Extra"), metrics.stats("S.Another"))
        self.assertIn(OTHER, metrics.methods)
        self.assertEqual(len(metrics.methods), MAX_METHODS + 1)

    def test_separate_registries(self) -> None:
        """Two daemons' metrics in one process do not share series."""
        one, two = Metrics(), Metrics()
        one.stats("A.B").ended(0, 0.1)
        self.assertIn(("rpcd_calls_total", (("code", "OK"), ("method", "A.B"))), samples(one))
        self.assertNotIn(("rpcd_calls_total", (("code", "OK"), ("method", "A.B"))), samples(two))


class ServerSeriesTests(SynchronousTestCase):
    """Connections, refusals and login failures, read from the daemon when scraped."""

    def test_connections_by_protocol(self) -> None:
        """Sessions count as open connections of their protocol until they close."""
        server, _, _ = make_http_server()
        metrics = server.metrics = Metrics(server)
        sessions = [Session(server.registry, "p:1", "p", None, None, proto)
                    for proto in ("native", "native", "gob")]
        for session in sessions:
            metrics.connection_opened(session)
        sessions[0].close()
        self.assertEqual(metrics.connections(), {"gob": 1, "native": 1})
        got = samples(metrics)
        self.assertEqual(got[("rpcd_connections", (("protocol", "native"),))], 1)
        self.assertEqual(got[("rpcd_connections_opened_total", (("protocol", "native"),))], 2)

    def test_go_tunnel_counted_once(self) -> None:
        """A connection that CONNECTs to Go's gob over HTTP counts as one gob connection, not also an HTTP one."""
        server, _, _ = make_http_server()
        metrics = server.metrics = Metrics(server)
        protocol, transport = connect(server)
        self.assertEqual(metrics.connections(), {"http": 1})
        protocol.dataReceived(b"CONNECT /_goRPC_ HTTP/1.0\r\n\r\n")
        self.assertIsNotNone(protocol.tunnel)
        self.assertEqual(metrics.connections(), {"gob": 1, "http": 0})

    def test_refusals_and_login_failures(self) -> None:
        """Refused connections and failed or throttled logins are reported from the daemon's counters."""
        server, _, _ = make_http_server()
        server.caps.refused = 3
        server.authenticator = SimpleNamespace(failures=4, throttled=1)
        got = samples(Metrics(server))
        self.assertEqual(got[("rpcd_connections_refused_total", ())], 3)
        self.assertEqual(got[("rpcd_login_failures_total", (("reason", "bad_credentials"),))], 4)
        self.assertEqual(got[("rpcd_login_failures_total", (("reason", "throttled"),))], 1)

    def test_config_switch(self) -> None:
        """[http] metrics = true gives the daemon a Metrics; the default gives none; non-booleans are refused."""
        registry = ServiceRegistry()
        on = parse('[http]\nmetrics = true\n', "x.toml")
        self.assertTrue(on.http.metrics)
        self.assertIsInstance(make_server(on, registry, Clock()).metrics, Metrics)
        self.assertIsInstance(registry.interceptors[0], MetricsInterceptor)
        self.assertIsNone(make_server(parse("", "x.toml"), registry, Clock()).metrics)
        error = self.assertRaises(Exception, parse, '[http]\nmetrics = "yes"\n', "x.toml")
        self.assertIn("http.metrics", str(error))


class InterceptorTests(SynchronousTestCase):
    """L{MetricsInterceptor} keeps the per-call figures."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.interceptor = MetricsInterceptor(self.metrics)

    def test_success_and_running(self) -> None:
        """A call counts as running until it ends, then as OK with its duration."""
        answer: Deferred[Any] = Deferred()
        d = self.interceptor.intercept(FakeCall(self.clock), lambda c: answer)
        stats = self.metrics.methods["A.B"]
        self.assertEqual(stats.running, 1)
        self.clock.advance(0.25)
        answer.callback(5)
        self.assertEqual(self.successResultOf(d), 5)
        self.assertEqual((stats.running, stats.codes, list(stats.recent)), (0, {0: 1}, [0.25]))
        self.assertEqual((self.metrics.bytes_in, self.metrics.bytes_out), (4, 1))  # msgpack sizes

    def test_errors_by_code(self) -> None:
        """An error is counted by its code, and passed on unchanged."""
        d = self.interceptor.intercept(FakeCall(self.clock), lambda c: fail(NotFound("no")))
        self.failureResultOf(d, NotFound)
        self.assertEqual(self.metrics.methods["A.B"].codes, {Code.NOT_FOUND: 1})

    def test_rate_limited(self) -> None:
        """RESOURCE_EXHAUSTED with a retry-after hint counts as a rate-limit refusal; without, it does not."""
        limited = ResourceExhausted("slow down", details={"retry_after": 1.5})
        self.failureResultOf(self.interceptor.intercept(FakeCall(self.clock), lambda c: fail(limited)))
        self.failureResultOf(self.interceptor.intercept(
            FakeCall(self.clock), lambda c: fail(ResourceExhausted("full"))))
        stats = self.metrics.methods["A.B"]
        self.assertEqual((stats.rate_limited, stats.codes), (1, {Code.RESOURCE_EXHAUSTED: 2}))
        self.assertEqual(samples(self.metrics)[("rpcd_rate_limited_total", (("method", "A.B"),))], 1)

    def test_unknown_methods(self) -> None:
        """Calls to methods the server lacks are counted under (other), not their names."""
        call = FakeCall(self.clock, method="Nope.Nothing", known=False)
        self.successResultOf(self.interceptor.intercept(call, lambda c: succeed(None)))
        self.assertEqual(list(self.metrics.methods), [OTHER])

    def test_stream_messages(self) -> None:
        """A stream's messages are counted each way, and passed on."""
        call = FakeCall(self.clock, kind="bidi_stream")
        self.interceptor.intercept(call, lambda c: succeed(None))
        ((received, sent),) = call.filters
        self.assertEqual([received(1), received(2), sent("abc")], [1, 2, "abc"])
        self.assertEqual((self.metrics.bytes_in, self.metrics.bytes_out), (4 + 2, 4 + 1))
        stats = self.metrics.methods["A.B"]
        self.assertEqual((stats.messages_in, stats.messages_out), (2, 1))


class HTTPTests(SynchronousTestCase):
    """The pages on the daemon's port."""

    def get(self, server: Any, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        protocol, transport = connect(server)
        protocol.dataReceived(request(method, target))
        ((answer),) = responses(transport.value())
        return answer

    def test_metrics_page(self) -> None:
        """GET /metrics serves the exposition with Prometheus' content type; POST gets 405."""
        server, _, _ = make_http_server(HTTPConfig(metrics=True))
        server.metrics = Metrics(server)
        server.metrics.stats("Waiter.Now").ended(0, 0.001)
        status_code, headers, body = self.get(server, "/metrics")
        self.assertEqual(status_code, 200)
        self.assertEqual(headers["content-type"], "text/plain; version=0.0.4; charset=utf-8")
        self.assertIn(b'rpcd_calls_total{code="OK",method="Waiter.Now"} 1.0', body)
        self.assertIn(b'rpcd_connections{protocol="http"} 1.0', body)
        self.assertEqual(self.get(server, "/metrics", "POST")[0], 405)

    def test_calls_counted(self) -> None:
        """Calls through the dispatcher's interceptor chain are counted by method and code; unknown names as (other)."""
        server, _, _ = make_http_server()
        server.metrics = Metrics(server)
        server.registry.interceptors = (MetricsInterceptor(server.metrics),)
        protocol, transport = connect(server)
        protocol.dataReceived(call("Waiter.Now", 7) + call("Waiter.Now", 8) + call("No.Such"))
        self.assertEqual([r[0] for r in responses(transport.value())], [200, 200, 200])
        self.assertEqual(server.metrics.methods["Waiter.Now"].codes, {0: 2})
        self.assertEqual(set(server.metrics.methods), {"Waiter.Now", OTHER})
        self.assertEqual(sum(server.metrics.methods[OTHER].codes.values()), 1)

    def test_metrics_off(self) -> None:
        """Without figures, /metrics is a 404."""
        server, _, _ = make_http_server()
        self.assertEqual(self.get(server, "/metrics")[:1], (404,))

    def test_metrics_host_checked(self) -> None:
        """/metrics checks the Host like every request (no DNS rebinding)."""
        server, _, _ = make_http_server()
        server.metrics = Metrics(server)
        protocol, transport = connect(server)
        protocol.dataReceived(request("GET", "/metrics", host="evil.example"))
        self.assertEqual(responses(transport.value())[0][0], 421)

    def test_status_json(self) -> None:
        """/debug/rpc.json lists the methods the request may call, with their figures and the open connections."""
        server, _, _ = make_http_server()
        server.metrics = Metrics(server)
        for ms in (1, 2, 3, 4):
            server.metrics.stats("Waiter.Now").ended(0, ms / 1000)
        server.metrics.stats("Waiter.Now").ended(Code.INVALID_ARGUMENT, 0.001)
        status_code, headers, body = self.get(server, "/debug/rpc.json")
        self.assertEqual((status_code, headers["content-type"]), (200, "application/json"))
        data = json.loads(body)
        self.assertEqual(data["connections"], {"http": 1})
        methods = {m["name"]: m for s in data["services"] for m in s["methods"]}
        self.assertNotIn("Secret.Get", methods)
        now = methods["Waiter.Now"]
        self.assertEqual((now["calls"], now["errors"], now["p50_ms"], now["p99_ms"]), (5, 1, 2.0, 4.0))

    def test_status_json_off(self) -> None:
        """With debug_page = false, /debug/rpc.json is a 404 too."""
        server, _, _ = make_http_server(HTTPConfig(debug_page=False))
        self.assertEqual(self.get(server, "/debug/rpc.json")[0], 404)

    def test_page_figures(self) -> None:
        """With figures, the page has each method's errors and percentiles, the connections, and its refresh script."""
        server, _, _ = make_http_server()
        server.metrics = Metrics(server)
        protocol, transport = connect(server)
        protocol.dataReceived(call("Waiter.Now", 7))
        server.metrics.stats("Waiter.Now").ended(Code.NOT_FOUND, 0.0125)
        protocol.dataReceived(request("GET", "/debug/rpc"))
        page = responses(transport.value())[-1][2].decode()
        self.assertIn('<tr data-protocol="http"><td>http</td><td class=n>1</td></tr>', page)
        self.assertIn('<td class="n errors err">1</td>', page)
        self.assertIn('<td class="n p50">12.5 ms</td>', page)
        self.assertIn('fetch("/debug/rpc.json"', page)

    def test_status_without_figures(self) -> None:
        """Without figures the status has the call counts alone."""
        server, _, _ = make_http_server()
        data = status(server.registry)
        self.assertFalse(data["metrics"])
        self.assertNotIn("errors", data["services"][0]["methods"][0])
