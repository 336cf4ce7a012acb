"""
End-to-end tests of L{rpcd.balancer}: real C{twistd -n rpcd} daemons on
loopback, one stopped and restarted on its port while calls keep flowing.
"""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from rpcd.backend import READY, HealthCheck
from rpcd.balancer import Balancer, connect_balanced
from rpcd.client import connect
from rpcd.errors import Unavailable
from rpcd.retry import RetryPolicy
from tests.cli import rpcd
from tests.daemon import Daemon, temp_dir

# A generous probe timeout: a loaded machine must not fail a health check.
HEALTH = HealthCheck(interval=0.2, timeout=10.0)
RETRY = RetryPolicy(max_attempts=5, initial_backoff=0.05, max_backoff=0.5)


def free_port() -> int:
    """
    @return: a TCP port on 127.0.0.1 that was free a moment ago (a daemon
        restarted on it keeps the endpoint string the balancer knows).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_daemon(test: TestCase, name: str, port: int, *, who: bool = True) -> Daemon:
    """
    Start a daemon on a port, serving the C{Who} service named C{name}.
    """
    path = Path(temp_dir(test)) / "rpcd.toml"
    text = f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n[services.Arith]\n'
    if who:
        text += f'[services.Who]\nclass = "tests.whoservice:Who"\n[services.Who.options]\nname = "{name}"\n'
    path.write_text(text)
    return await Daemon.start(test, "--config", str(path))


async def names(balancer: Balancer, count: int) -> list[str]:
    """
    @return: which daemon answered each of C{count} concurrent calls.
    """
    return await gatherResults([balancer.Who.Name() for _ in range(count)])


class BalancerE2ETests(TestCase):
    """Balancing over real daemons."""

    timeout = 60

    async def test_spread_failover_and_return(self) -> None:
        """Calls spread over three daemons, keep succeeding while one stops, and reach it again after it restarts on its port."""
        ports = {name: free_port() for name in "abc"}
        daemons = {name: await start_daemon(self, name, port) for name, port in ports.items()}
        balancer = await connect_balanced([f"tcp:127.0.0.1:{ports[n]}" for n in "abc"],
                                          reactor=reactor, health=HEALTH, retry=RETRY,
                                          reconnect=lambda attempt: 0.2, default_timeout=10)
        self.addCleanup(balancer.close)
        await balancer.when_ready(30, at_least=3)
        self.assertEqual(Counter(await names(balancer, 30)), {"a": 10, "b": 10, "c": 10})

        # Stop b with calls in flight: no caller sees an error.
        in_flight = [balancer.Who.Name() for _ in range(60)]
        stopping = Deferred.fromCoroutine(daemons["b"].stop())
        later = [balancer.Who.Name() for _ in range(60)]
        await stopping
        answered = await gatherResults(in_flight + later)
        lost = balancer.backends[1].client
        if lost is not None:  # the balancer has yet to see the connection close
            await lost.closed
        self.assertEqual(len(answered), 120)
        self.assertTrue(set(answered) <= {"a", "b", "c"})
        self.assertEqual(Counter(await names(balancer, 20)), {"a": 10, "c": 10})
        self.assertNotEqual(balancer.backends[1].state, READY)
        self.assertEqual(await balancer.Arith.Multiply(A=6, B=7), 42)

        # Restart b on the same port: it is used again (its circuit, opened by
        # the calls lost with it, lets one trial call through, then closes).
        await start_daemon(self, "b", ports["b"])
        await balancer.when_ready(30, at_least=3)
        self.assertEqual(sorted([await balancer.Who.Name() for _ in range(3)]), ["a", "b", "c"])
        self.assertEqual(Counter(await names(balancer, 30)), {"a": 10, "b": 10, "c": 10})

    async def test_health_check_keeps_out_a_daemon_without_the_service(self) -> None:
        """A health check naming a service takes out the daemon that answers SERVICE_UNKNOWN."""
        ports = {name: free_port() for name in "ab"}
        await start_daemon(self, "a", ports["a"])
        await start_daemon(self, "b", ports["b"], who=False)
        health = HealthCheck(interval=0.2, service="Who")
        with self.assertRaises(Unavailable) as cm:
            # The first failed check ends the wait, not the (test-outliving) connect timeout.
            await connect_balanced([f"tcp:127.0.0.1:{ports['b']}"], reactor=reactor, health=health,
                                   connect_timeout=3600)
        self.assertIn("unhealthy (health check answered 'SERVICE_UNKNOWN')", cm.exception.message)
        balancer = await connect_balanced([f"tcp:127.0.0.1:{ports[n]}" for n in "ab"],
                                          reactor=reactor, retry=RETRY, health=health)
        self.addCleanup(balancer.close)
        self.assertEqual(await names(balancer, 10), ["a"] * 10)

    async def test_stream_survives_an_unrelated_stop(self) -> None:
        """A bidirectional stream through the balancer keeps going on its daemon while another daemon stops."""
        ports = {name: free_port() for name in "abc"}
        daemons = {name: await start_daemon(self, name, port) for name, port in ports.items()}
        balancer = await connect_balanced([f"tcp:127.0.0.1:{ports[n]}" for n in "abc"],
                                          reactor=reactor, health=HEALTH, retry=RETRY,
                                          default_timeout=30)
        self.addCleanup(balancer.close)
        await balancer.when_ready(10, at_least=3)
        stream = balancer.stream("Who.Echo")
        await stream.send(1)
        first = await stream.__anext__()
        pinned = first.split(":")[0]
        other = next(n for n in "abc" if n != pinned)
        await daemons[other].stop()
        self.assertIn(await balancer.Who.Name(), set("abc") - {other})
        for n in (2, 3):
            await stream.send(n)
        stream.close_send()
        rest = [message async for message in stream]
        self.assertEqual([first, *rest], [f"{pinned}:{n}" for n in (1, 2, 3)])
        self.assertIsNone(await stream.result())
        self.assertEqual(stream.attempts, 1)

    async def test_retry_budget_when_everything_fails(self) -> None:
        """With every daemon answering UNAVAILABLE, the default retry budget keeps the calls the daemons see below 1.2 per caller call (5 attempts each without it)."""
        ports = {name: free_port() for name in "abc"}
        for name, port in ports.items():
            await start_daemon(self, name, port)
        endpoints = [f"tcp:127.0.0.1:{ports[n]}" for n in "abc"]
        balancer = await connect_balanced(endpoints, reactor=reactor, health=HEALTH, retry=RETRY,
                                          breaker=None, default_timeout=10)
        self.addCleanup(balancer.close)
        callers = 600

        def unavailable(failure: Failure) -> str:
            failure.trap(Unavailable)
            return "unavailable"
        for _ in range(callers // 30):
            results = await gatherResults([balancer.Who.Down().addErrback(unavailable)
                                           for _ in range(30)])
            self.assertEqual(results, ["unavailable"] * 30)
        clients = [await connect(e, reactor=reactor) for e in endpoints]
        for client in clients:
            self.addCleanup(client.close)
        sent = sum([await client.call("Who.DownCalls") for client in clients])
        self.assertGreater(sent, callers)
        self.assertLess(sent / callers, 1.2)

    async def test_fails_fast_when_everything_refuses(self) -> None:
        """With nothing listening on any endpoint, connect_balanced fails as soon as each refused, naming why, not after its connect timeout."""
        ports = [free_port() for _ in range(3)]
        with self.assertRaises(Unavailable) as cm:
            await connect_balanced([f"tcp:127.0.0.1:{p}" for p in ports], reactor=reactor,
                                   connect_timeout=3600)
        for port in ports:
            self.assertIn(f"tcp:127.0.0.1:{port} connecting (Connection was refused",
                          cm.exception.message)

    async def test_cli_retries(self) -> None:
        """C{rpcd call --retries N} retries UNAVAILABLE answers; without it the first one is the result."""
        port = free_port()
        await start_daemon(self, "a", port)
        endpoint = f"tcp:127.0.0.1:{port}"
        code, out, err = await rpcd(self, "call", endpoint, "Who.Flaky")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("UNAVAILABLE: a is flaky (call 1)", err)
        code, out, err = await rpcd(self, "call", "--retries", "2", endpoint, "Who.Flaky")
        self.assertEqual((code, out.strip()), (0, '"a"'), err)
        code, out, err = await rpcd(self, "call", "--retries", "1", endpoint, "Who.Flaky")
        self.assertEqual(code, 1)
        self.assertIn("UNAVAILABLE: a is flaky (call 5)", err)
