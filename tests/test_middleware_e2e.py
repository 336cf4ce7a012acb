"""
End-to-end tests of the interceptors against the real daemon on loopback:
the access log (text and JSON lines), the rate limit over the native
protocol and over JSON-RPC on HTTP (429 with Retry-After), a custom
C{module:factory} interceptor, and one OpenTelemetry trace across a client
and two daemons with a deadline that shrinks on the way.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from rpcd.client import connect
from rpcd.errors import Code, RPCError
from rpcd.tracing import Tracing
from tests.daemon import Daemon, _Output, spawn_twistd, temp_dir

LOOPBACK = ("--listen", "tcp:0:interface=127.0.0.1")


def write_config(test: TestCase, text: str, name: str = "rpcd.toml") -> str:
    """
    @return: the path of a config file with C{text}.
    """
    path = Path(temp_dir(test)) / name
    path.write_text(f"[server]\nlisten = []\n{text}\n")
    return str(path)


async def post(url: str, body: object, headers: dict[str, str] | None = None
               ) -> tuple[int, Headers, bytes]:
    """
    POST a JSON body with Twisted's HTTP client.

    @return: the status, the response headers and the body.
    """
    fields = {b"Content-Type": [b"application/json"]}
    for key, value in (headers or {}).items():
        fields[key.encode()] = [value.encode()]
    agent = Agent(reactor)
    response = await agent.request(b"POST", url.encode(), Headers(fields),
                                   FileBodyProducer(BytesIO(json.dumps(body).encode())))
    data = await readBody(response)
    return response.code, response.headers, data


class AccessLogE2ETests(TestCase):
    """The access log in the daemon's own log."""

    async def test_access_log_lines(self) -> None:
        """Each call (native or JSON-RPC over HTTP) is one access line with method, code and protocol; a failed call shows its code."""
        path = write_config(self, '[[interceptors]]\nuse = "access_log"\n'
                                  '[services.Arith]\n[services.KVStoreService]\n')
        daemon = await Daemon.start(self, "--config", path, *LOOPBACK)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        mark = len(daemon.output)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 6, "B": 7}), 42)
        with self.assertRaises(RPCError):
            await client.call("Arith.Divide", {"A": 1, "B": 0})
        await daemon.wait_for_log(r"Arith\.Divide \w+ [\d.]+ ms native 127\.0\.0\.1:\d+",
                                  after=mark, timeout=20)
        self.assertRegex(daemon.output[mark:], r"Arith\.Multiply OK [\d.]+ ms native 127\.0\.0\.1:\d+")
        mark = len(daemon.output)
        status, _, _ = await post(f"http://127.0.0.1:{daemon.port}/rpc",
                                  {"jsonrpc": "2.0", "method": "Arith.Multiply",
                                   "params": [{"A": 1, "B": 2}], "id": 1})
        self.assertEqual(status, 200)
        await daemon.wait_for_log(r"Arith\.Multiply OK [\d.]+ ms http 127\.0\.0\.1:\d+",
                                  after=mark, timeout=20)

    async def test_json_lines(self) -> None:
        """With --logger=rpcd.accesslog.json_observer the daemon logs JSON lines with the access fields."""
        path = write_config(self, '[[interceptors]]\nuse = "access_log"\n[services.Arith]\n')
        output = _Output()
        process = await spawn_twistd(output, ["-n", "--pidfile=", "--logger=rpcd.accesslog.json_observer",
                                              "rpcd", "--config", path, *LOOPBACK], temp_dir(self))

        def stop() -> Deferred[Any]:
            if output.running:
                process.signalProcess("TERM")
            return output.ended
        self.addCleanup(stop)
        listening = await output.wait_for(json_event(
            lambda e: str(e.get("log_format", "")).startswith("rpcd listening on")),
            "the listening event", 30)
        port = int(str(listening["where"]).rpartition(":")[2])
        client = await connect(f"tcp:127.0.0.1:{port}")
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 2, "B": 3}), 6)
        access = await output.wait_for(json_event(lambda e: e.get("access") is True),
                                       "the access event", 30)
        self.assertEqual((access["method"], access["code"], access["protocol"],
                          access["log_namespace"]),
                         ("Arith.Multiply", "OK", "native", "rpcd.access"))
        self.assertIsInstance(access["duration_ms"], float)


def json_event(match: Any) -> Any:
    """
    @param match: tests one event.
    @return: a matcher for L{_Output.wait_for}: the first event of the JSON
        lines in the output that C{match} accepts, or None.
    """
    def check(text: str) -> Any:
        for line in text.split("\x1e"):
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written, or not JSON
            if isinstance(event, dict) and match(event):
                return event
        return None
    return check


class RateLimitE2ETests(TestCase):
    """The rate limit over the native protocol and JSON-RPC on HTTP."""

    async def test_native_and_http(self) -> None:
        """Past the burst the native client gets RESOURCE_EXHAUSTED with retry_after; HTTP gets 429 and Retry-After."""
        path = write_config(self, '[[interceptors]]\nuse = "rate_limit"\n'
                                  '[interceptors.options]\n'
                                  'methods = { "Arith.Multiply" = { rate = 0.01, burst = 2 } }\n'
                                  '[services.Arith]\n')
        daemon = await Daemon.start(self, "--config", path, *LOOPBACK)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        for _ in range(2):
            self.assertEqual(await client.call("Arith.Multiply", {"A": 2, "B": 2}), 4)
        with self.assertRaises(RPCError) as caught:
            await client.call("Arith.Multiply", {"A": 2, "B": 2})
        error = caught.exception
        self.assertEqual(error.code, Code.RESOURCE_EXHAUSTED)
        self.assertEqual(error.details["limit"], "method")
        self.assertGreater(error.details["retry_after"], 90)
        status, headers, body = await post(
            f"http://127.0.0.1:{daemon.port}/rpc",
            {"jsonrpc": "2.0", "method": "Arith.Multiply", "params": [{"A": 1, "B": 1}], "id": 1})
        self.assertEqual(status, 429, body)
        [retry_after] = headers.getRawHeaders(b"retry-after")
        self.assertGreater(int(retry_after), 90)
        self.assertIn("rate limit", json.loads(body)["error"]["message"])


class CustomInterceptorE2ETests(TestCase):
    """A module:factory interceptor with options, in the real daemon."""

    async def test_custom_refuses(self) -> None:
        """The daemon loads tests.test_middleware_e2e:make_deny with its options and refuses that method."""
        path = write_config(self, '[[interceptors]]\nuse = "tests.test_middleware_e2e:make_deny"\n'
                                  'options = { method = "Arith.Divide" }\n[services.Arith]\n')
        daemon = await Daemon.start(self, "--config", path, *LOOPBACK)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Arith.Multiply", {"A": 3, "B": 3}), 9)
        with self.assertRaises(RPCError) as caught:
            await client.call("Arith.Divide", {"A": 1, "B": 1})
        self.assertEqual((caught.exception.code, caught.exception.message),
                         (Code.PERMISSION_DENIED, "Arith.Divide is denied here"))


class Deny:
    """Refuses one method."""

    def __init__(self, method: str) -> None:
        self.method = method

    def intercept(self, call: Any, proceed: Any) -> Any:
        if call.method == self.method:
            from rpcd.errors import PermissionDenied
            raise PermissionDenied(f"{call.method} is denied here")
        return proceed(call)


def make_deny(method: str) -> Deny:
    """The factory the daemon's config names."""
    return Deny(method)


class TracingE2ETests(TestCase):
    """One trace across a client and two daemons."""

    async def test_trace_and_deadline_across_daemons(self) -> None:
        """Client -> A -> B is one trace with parents right, and B sees a shorter deadline than the client gave A."""
        tracing = '[[interceptors]]\nuse = "tests.tracesvc:memory_tracing"\n'
        common = ('[services.Spans]\nclass = "tests.tracesvc:Spans"\n'
                  '[services.Deadline]\nclass = "tests.tracesvc:Deadline"\n')
        b = await Daemon.start(self, "--config", write_config(self, tracing + common, "b.toml"),
                               *LOOPBACK)
        a = await Daemon.start(self, "--config", write_config(
            self, tracing + common + '[services.Relay]\nclass = "tests.tracesvc:Relay"\n'
            f'[services.Relay.options]\nupstream = "tcp:127.0.0.1:{b.port}"\n', "a.toml"),
            *LOOPBACK)
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        client = await connect(f"tcp:127.0.0.1:{a.port}",
                               interceptors=[Tracing(tracer_provider=provider)])
        self.addCleanup(client.close)
        at_b = await client.call("Relay.Call", timeout=30)
        self.assertIsNotNone(at_b)
        self.assertLess(at_b, 30)
        [mine] = exporter.get_finished_spans()
        plain_a = await connect(f"tcp:127.0.0.1:{a.port}")
        plain_b = await connect(f"tcp:127.0.0.1:{b.port}")
        self.addCleanup(plain_a.close)
        self.addCleanup(plain_b.close)
        spans_a = {(s["name"], s["kind"]): s for s in await plain_a.call("Spans.Dump")}
        spans_b = {(s["name"], s["kind"]): s for s in await plain_b.call("Spans.Dump")}
        server_a = spans_a[("Relay/Call", "SERVER")]
        client_a = spans_a[("Deadline/Remaining", "CLIENT")]
        server_b = spans_b[("Deadline/Remaining", "SERVER")]
        trace_id = format(mine.context.trace_id, "032x")
        self.assertEqual({server_a["trace_id"], client_a["trace_id"], server_b["trace_id"]}, {trace_id})
        self.assertEqual(server_a["parent_id"], format(mine.context.span_id, "016x"))
        self.assertEqual(client_a["parent_id"], server_a["span_id"])
        self.assertEqual(server_b["parent_id"], client_a["span_id"])
        self.assertEqual((server_b["attributes"]["rpc.system"], server_b["attributes"]["rpc.service"],
                          server_b["attributes"]["rpc.method"],
                          server_b["attributes"]["rpc.rpcd.status_code"]),
                         ("rpcd", "Deadline", "Remaining", 0))

    async def test_http_traceparent(self) -> None:
        """A JSON-RPC request over HTTP with a traceparent header continues that trace on the daemon."""
        tracing = '[[interceptors]]\nuse = "tests.tracesvc:memory_tracing"\n'
        common = ('[services.Spans]\nclass = "tests.tracesvc:Spans"\n'
                  '[services.Deadline]\nclass = "tests.tracesvc:Deadline"\n')
        daemon = await Daemon.start(self, "--config", write_config(self, tracing + common), *LOOPBACK)
        trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        status, _, body = await post(
            f"http://127.0.0.1:{daemon.port}/rpc",
            {"jsonrpc": "2.0", "method": "Deadline.Remaining", "params": [], "id": 1},
            {"traceparent": f"00-{trace_id}-{parent}-01"})
        self.assertEqual(status, 200, body)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        spans = {s["name"]: s for s in await client.call("Spans.Dump")}
        span = spans["Deadline/Remaining"]
        self.assertEqual((span["trace_id"], span["parent_id"]), (trace_id, parent))
        self.assertEqual(span["attributes"]["rpc.rpcd.protocol"], "http")


