"""
End-to-end tests of C{GET /metrics}: a real C{twistd -n rpcd} with
C{[http] metrics = true}, scraped by a real Prometheus server (Debian's
C{prometheus}) on loopback, whose HTTP API must then answer rpcd's series.
Nothing sleeps: the test waits on Prometheus' log for its readiness, then
asks its query API until the series are there (within a bound).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from rpcd.auth import hash_password
from rpcd.client import connect
from rpcd.errors import ResourceExhausted, RPCError, Unauthenticated
from tests.daemon import Daemon, _Output, temp_dir
from tests.test_discovery_e2e import free_port, poll
from tests.tools import require_tool

CONFIG = """\
[server]
listen = ["tcp:0:interface=127.0.0.1"]
[http]
metrics = true
[services.Arith]
"""


async def start_daemon(test: TestCase, text: str = CONFIG) -> Daemon:
    """Start a daemon with this config, figures kept."""
    path = Path(temp_dir(test)) / "rpcd.toml"
    path.write_text(text)
    return await Daemon.start(test, "--config", str(path))


async def get(url: str) -> tuple[int, bytes]:
    """
    @return: the status and body of a GET.
    """
    response = await Agent(reactor).request(b"GET", url.encode())
    return response.code, await readBody(response)


async def start_prometheus(test: TestCase, target: str) -> str:
    """
    Start Prometheus scraping C{target} (C{host:port}) every second, on a
    free loopback port, stopped in the test's cleanup.

    @return: its base URL, once its log says it is ready.
    """
    prometheus = require_tool("prometheus", "to scrape rpcd's /metrics (apt-get install prometheus)")
    base = Path(temp_dir(test))
    config = base / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: rpcd\n    static_configs:\n"
        f"      - targets: ['{target}']\n")
    address = f"127.0.0.1:{free_port()}"
    output = _Output()
    process = reactor.spawnProcess(output, prometheus, [
        prometheus, f"--config.file={config}", f"--web.listen-address={address}",
        f"--storage.tsdb.path={base / 'tsdb'}"], env=dict(os.environ))

    async def stop() -> None:
        if output.running:
            process.signalProcess(signal.SIGTERM)
        await output.ended
    test.addCleanup(stop)
    await output.wait_for(lambda text: "Server is ready to receive web requests" in text or None,
                          "Prometheus ready", timeout=60)
    return f"http://{address}"


async def query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    """
    @return: the instant vector Prometheus' C{/api/v1/query} answers.
    """
    code, body = await get(f"{prometheus}/api/v1/query?{urlencode({'query': expression})}")
    answer = json.loads(body)
    if code != 200 or answer.get("status") != "success":
        raise AssertionError(f"query {expression!r}: HTTP {code}: {body[:500]!r}")
    return answer["data"]["result"]


def values(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    """
    @return: each series' C{label} value to its sample value.
    """
    return {series["metric"].get(label, ""): float(series["value"][1]) for series in result}


class PrometheusE2ETests(TestCase):
    """rpcd's /metrics, as a real Prometheus and a plain GET see it."""

    timeout = 120

    async def test_scraped_series(self) -> None:
        """After some calls, Prometheus' API answers rpcd's calls by method and code, latency histogram and open connections."""
        daemon = await start_daemon(self)
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        for n in range(3):
            self.assertEqual(await client.call("Arith.Multiply", {"A": n, "B": 2}), 2 * n)
        with self.assertRaises(RPCError):
            await client.call("Arith.Nothing", None)
        prometheus = await start_prometheus(self, f"127.0.0.1:{daemon.port}")

        async def scraped() -> Any:
            calls = values(await query(prometheus, 'rpcd_calls_total{code="OK"}'), "method")
            return calls.get("Arith.Multiply") == 3 and calls
        await poll("rpcd's series in Prometheus", scraped, 60, interval=0.2)
        connections = values(await query(prometheus, "rpcd_connections"), "protocol")
        self.assertEqual(connections.get("native"), 1)
        unknown = values(await query(prometheus, 'rpcd_calls_total{method="(other)"}'), "code")
        self.assertEqual(list(unknown.values()), [1])
        count = await query(prometheus, 'rpcd_call_duration_seconds_count{method="Arith.Multiply"}')
        self.assertEqual(values(count, "method"), {"Arith.Multiply": 3})
        fast = await query(prometheus, 'rpcd_call_duration_seconds_bucket{method="Arith.Multiply",le="+Inf"}')
        self.assertEqual(values(fast, "le"), {"+Inf": 3})
        refused = await query(prometheus, "rpcd_connections_refused_total")
        self.assertEqual(values(refused, "job"), {"rpcd": 0})

    async def test_refusals_counted(self) -> None:
        """Rate-limit refusals by method, failed and throttled logins and calls by code show in a plain GET /metrics."""
        cheap = {"n": 2**10, "r": 8, "p": 1}
        daemon = await start_daemon(self, CONFIG + (
            '[services.HelloService]\n'
            '[auth]\nmax_failed_logins = 2\nmax_failed_logins_per_user = 2\n'
            f'[auth.users]\nuser = "{hash_password("s3cret", **cheap)}"\n'
            '[[interceptors]]\nuse = "rate_limit"\n'
            '[interceptors.options]\nmethods = { "Arith.Multiply" = { rate = 0.001, burst = 2 } }\n'))
        client = await connect(f"tcp:127.0.0.1:{daemon.port}")
        self.addCleanup(client.close)
        refused = 0
        for n in range(5):
            try:
                await client.call("Arith.Multiply", {"A": n, "B": 1})
            except ResourceExhausted:
                refused += 1
        self.assertEqual(refused, 3)
        logins = []
        for _ in range(3):
            try:
                await client.call("HelloService.Login", "user:wrong")
            except (Unauthenticated, ResourceExhausted) as e:
                logins.append(type(e))
        self.assertEqual(logins, [Unauthenticated, Unauthenticated, ResourceExhausted])
        code, body = await get(f"http://127.0.0.1:{daemon.port}/metrics")
        self.assertEqual(code, 200)
        text = body.decode()
        self.assertIn('rpcd_rate_limited_total{method="Arith.Multiply"} 3.0', text)
        self.assertIn('rpcd_calls_total{code="RESOURCE_EXHAUSTED",method="Arith.Multiply"} 3.0', text)
        self.assertIn('rpcd_calls_total{code="OK",method="Arith.Multiply"} 2.0', text)
        self.assertIn('rpcd_login_failures_total{reason="bad_credentials"} 2.0', text)
        self.assertIn('rpcd_login_failures_total{reason="throttled"} 1.0', text)

    async def test_switched_off(self) -> None:
        """Without [http] metrics, GET /metrics is a 404."""
        daemon = await start_daemon(self, CONFIG.replace("metrics = true", "metrics = false"))
        code, body = await get(f"http://127.0.0.1:{daemon.port}/metrics")
        self.assertEqual((code, body), (404, b"404 page not found\n"))
