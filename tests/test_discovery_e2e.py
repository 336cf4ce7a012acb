"""
End-to-end tests of service discovery: a real etcd, real C{twistd -n rpcd}
daemons registering in it, and L{rpcd.discovery.EtcdResolver} with
L{rpcd.balancer.connect_balanced} finding them.  Nothing sleeps a fixed
time: every wait polls etcd (or waits on a process) within a bound.
"""

from __future__ import annotations

import inspect
import os
import signal
import socket
from collections import Counter
from pathlib import Path
from typing import Any, Awaitable, Callable

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from rpcd.backend import HealthCheck
from rpcd.balancer import connect_balanced
from rpcd.client import connect
from rpcd.discovery import EtcdResolver
from rpcd.retry import RetryPolicy
from tests.daemon import Daemon, _Output, temp_dir
from tests.tools import require_tool

# A generous probe timeout: a loaded machine must not fail a health check.
HEALTH = HealthCheck(interval=0.2, timeout=10.0)
RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=0.5)


def free_port() -> int:
    """
    @return: a TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def poll(what: str, check: Callable[[], Any], timeout: float,
               interval: float = 0.1) -> Any:
    """
    Ask C{check} again and again until it returns (or its awaitable gives)
    something true.

    @return: that result.
    @raise AssertionError: it did not within C{timeout} seconds.
    """
    last: Any = None
    for _ in range(int(timeout / interval) + 1):
        try:
            last = check()
            if inspect.isawaitable(last):
                last = await last
        except Exception as e:
            last = e
        else:
            if last:
                return last
        await deferLater(reactor, interval)
    raise AssertionError(f"no {what} within {timeout:g} s (last: {last!r})")


async def start_etcd(test: TestCase, client_port: int | None = None) -> str:
    """
    Start a real etcd on free loopback ports, stopped in the test's cleanup.

    @return: its client URL, once C{/health} says it is healthy.
    """
    url, _ = await run_etcd(test, client_port)
    return url


async def run_etcd(test: TestCase, client_port: int | None = None
                   ) -> tuple[str, Callable[[], Awaitable[None]]]:
    """
    L{start_etcd}, also giving a function that stops it (and waits for it
    to exit) before the cleanup does.

    @return: its client URL and that function.
    """
    etcd = require_tool("etcd", "to test service discovery")
    client_port = client_port or free_port()
    peer_port = free_port()
    url, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    output = _Output()
    process = reactor.spawnProcess(output, etcd, [
        etcd, "--data-dir", str(Path(temp_dir(test)) / "etcd"),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"default={peer}"], env=dict(os.environ))

    async def stop() -> None:
        if output.running:
            process.signalProcess(signal.SIGTERM)
        await output.ended
    test.addCleanup(stop)
    agent = Agent(reactor)

    async def healthy() -> bool:
        if not output.running:
            raise AssertionError(f"etcd exited:\n{output.text[-3000:]}")
        response = await agent.request(b"GET", f"{url}/health".encode())
        return b'"health":"true"' in await readBody(response)
    await poll("healthy etcd", healthy, 20)
    return url, stop


async def start_daemon(test: TestCase, name: str, etcd: str, ttl: int = 10) -> Daemon:
    """
    Start a daemon on port 0 serving C{Who} (answering C{name}) and
    registering in etcd with its real port.
    """
    path = Path(temp_dir(test)) / "rpcd.toml"
    path.write_text(
        '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
        f'[services.Who]\nclass = "tests.whoservice:Who"\n[services.Who.options]\nname = "{name}"\n'
        f'[discovery]\netcd = "{etcd}"\nadvertise = "tcp:127.0.0.1:{{port}}"\nttl = {ttl}\n')
    return await Daemon.start(test, "--config", str(path))


def endpoint(daemon: Daemon) -> str:
    return f"tcp:127.0.0.1:{daemon.port}"


async def resolved(resolver: EtcdResolver, expected: list[str], timeout: float = 10) -> None:
    """
    Wait until the resolver finds exactly these endpoints (in any order).
    """
    async def found() -> bool:
        return sorted(await resolver.resolve()) == sorted(expected)
    await poll(f"resolution to {expected}", found, timeout)


class DiscoveryE2ETests(TestCase):
    """Daemons found through a real etcd."""

    timeout = 90

    async def test_clean_stop_leaves_at_once(self) -> None:
        """Two daemons register; calls spread over both; one stops cleanly, its keys vanish at once and calls go to the other."""
        url = await start_etcd(self)
        a, b = await start_daemon(self, "a", url), await start_daemon(self, "b", url)
        resolver = EtcdResolver(url, "Who", reactor=reactor)
        await resolved(resolver, [endpoint(a), endpoint(b)])
        health = await EtcdResolver(url, "Health", reactor=reactor).resolve()
        self.assertEqual(sorted(health), sorted([endpoint(a), endpoint(b)]))

        balancer = await connect_balanced(resolver, resolve_interval=0.2, reactor=reactor,
                                          health=HEALTH, retry=RETRY, default_timeout=10)
        self.addCleanup(balancer.close)
        await balancer.when_ready(30, at_least=2)
        self.assertEqual(Counter(await gatherResults([balancer.Who.Name() for _ in range(20)])),
                         {"a": 10, "b": 10})

        await a.stop()
        self.assertRegex(a.output, r"removed GrpcHealth, GrpcReflection, GrpcReflectionV1alpha, Health, "
                                   r"Introspection, Who, rpc from etcd \S+ \(lease \d+ revoked\)")
        self.assertEqual(await resolver.resolve(), [endpoint(b)])
        self.assertNotIn("Starting factory _HTTP11ClientFactory", a.output)  # quiet renewals
        self.assertEqual(set(await gatherResults([balancer.Who.Name() for _ in range(20)])), {"b"})
        await poll("the balancer dropping a", lambda: len(balancer.backends) == 1, 10)

    async def test_watch_sees_a_daemon_join_and_leave(self) -> None:
        """A balancer over an EtcdResolver, with no resolve interval (it never polls), calls a daemon that registers after it started, and drops one that stops: only etcd's watch stream can have told it."""
        url = await start_etcd(self)
        a = await start_daemon(self, "a", url)
        resolver = EtcdResolver(url, "Who", reactor=reactor)
        await resolved(resolver, [endpoint(a)])
        balancer = await connect_balanced(resolver, reactor=reactor, health=HEALTH, retry=RETRY,
                                          default_timeout=10)
        self.addCleanup(balancer.close)
        self.assertEqual(await balancer.Who.Name(), "a")
        b = await start_daemon(self, "b", url)
        await balancer.when_ready(30, at_least=2)
        self.assertEqual(Counter(await gatherResults([balancer.Who.Name() for _ in range(20)])),
                         {"a": 10, "b": 10})
        await a.stop()
        await poll("the balancer dropping a",
                   lambda: [x.key for x in balancer.backends] == [endpoint(b)], 30)
        self.assertEqual(set(await gatherResults([balancer.Who.Name() for _ in range(5)])), {"b"})

    async def test_watch_survives_an_etcd_restart(self) -> None:
        """While etcd is down the balancer keeps its endpoints and the resolver answers them; once etcd is back (its data lost) the watch reads the keys again and sees a daemon that joins."""
        url, stop_etcd = await run_etcd(self)
        port = int(url.rsplit(":", 1)[1])
        a = await start_daemon(self, "a", url, ttl=2)
        resolver = EtcdResolver(url, "Who", reactor=reactor, backoff=lambda n: 0.2)
        await resolved(resolver, [endpoint(a)])
        balancer = await connect_balanced(resolver, reactor=reactor, health=HEALTH, retry=RETRY,
                                          default_timeout=10)
        self.addCleanup(balancer.close)
        await stop_etcd()
        self.assertEqual(await resolver.resolve(), [endpoint(a)])
        self.assertEqual(await balancer.Who.Name(), "a")
        await start_etcd(self, port)
        b = await start_daemon(self, "b", url, ttl=2)
        await balancer.when_ready(60, at_least=2)
        self.assertEqual(sorted(x.key for x in balancer.backends), sorted([endpoint(a), endpoint(b)]))

    async def test_killed_daemon_leaves_after_ttl(self) -> None:
        """A daemon killed with SIGKILL cannot revoke; its keys vanish when its 2 s lease expires."""
        url = await start_etcd(self)
        a, b = await start_daemon(self, "a", url, ttl=2), await start_daemon(self, "b", url, ttl=2)
        resolver = EtcdResolver(url, "Who", reactor=reactor)
        await resolved(resolver, [endpoint(a), endpoint(b)])
        b.process.signalProcess(signal.SIGKILL)
        await b.output_protocol.ended
        await resolved(resolver, [endpoint(a)], timeout=15)
        balancer = await connect_balanced(resolver, reactor=reactor, health=HEALTH, retry=RETRY,
                                          default_timeout=10)
        self.addCleanup(balancer.close)
        self.assertEqual(set(await gatherResults([balancer.Who.Name() for _ in range(5)])), {"a"})

    async def test_serves_while_etcd_is_away(self) -> None:
        """A daemon whose etcd is not up yet serves anyway, logs one line per retry, and registers once etcd starts."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        daemon = await start_daemon(self, "a", url)
        await daemon.wait_for_log(r"service registration: .*Connection was refused.*; retrying in",
                                  timeout=10)
        client = await connect(endpoint(daemon), reactor=reactor)
        self.addCleanup(client.close)
        self.assertEqual(await client.call("Who.Name"), "a")
        await start_etcd(self, port)
        await resolved(EtcdResolver(url, "Who", reactor=reactor), [endpoint(daemon)], timeout=30)
        self.assertNotIn("Traceback", daemon.output)

