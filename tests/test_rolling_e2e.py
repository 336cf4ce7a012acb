"""
A rolling restart under load, end to end: three real daemons behind
C{connect_balanced}, Python callers and Go C{net/rpc} gob callers calling
all the while, and each daemon restarted in turn with SIGTERM (it drains)
on the same Unix socket.  No call may fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from rpcd.cluster.balancer import connect_balanced
from tests.daemon import Daemon, environment, socket_path, temp_dir
from tests.test_go_e2e import go_program

CONFIG = """
[server]
listen = ["unix:{path}"]
shutdown_grace = 30

[services.Arith]
class = "rpcd.examples.arith:Arith"

[services.Sleep]
class = "tests.sleepservice:Sleep"
"""


class _GoCallers(ProcessProtocol):
    """The Go callers: they run until their stdin closes, then print counts."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


class Load:
    """
    Python callers through a balancer, counting calls; L{reached} fires
    once the count passes a mark, so the test waits for load, not time.
    """

    def __init__(self, balancer: Any) -> None:
        self.balancer = balancer
        self.made = 0
        self.failures: list[str] = []
        self.running = True
        self._marks: list[tuple[int, Deferred[None]]] = []

    def reached(self, more: int) -> Deferred[None]:
        """
        @return: a Deferred firing once C{more} further calls have completed.
        """
        d: Deferred[None] = Deferred()
        self._marks.append((self.made + more, d))
        return d

    async def caller(self, n: int) -> None:
        i = 0
        while self.running:
            try:
                if i % 2:
                    result = await self.balancer.call("Arith.Multiply", {"A": n, "B": i})
                    if result != n * i:
                        self.failures.append(f"Arith.Multiply({n}, {i}) = {result!r}")
                else:
                    await self.balancer.call("Sleep.Sleep", 0.05)
            except Exception as e:
                self.failures.append(f"{type(e).__name__}: {e}")
            self.made += 1
            i += 1
            for mark in [m for m in self._marks if m[0] <= self.made]:
                self._marks.remove(mark)
                mark[1].callback(None)


class RollingRestartTests(TestCase):
    """Restart every daemon of three in turn while Python and Go callers call."""

    timeout = 300

    async def test_rolling_restart(self) -> None:
        """No call fails, from rpcd's balancer or from Go's net/rpc, and every daemon exits 0."""
        go = await go_program(self, "gobroll")
        paths = [socket_path(self, f"rolling{i}.sock") for i in range(3)]
        configs = []
        for i, path in enumerate(paths):
            config = Path(temp_dir(self)) / f"rpcd{i}.toml"
            config.write_text(CONFIG.format(path=path))
            configs.append(str(config))
        daemons = list(await gatherResults([Deferred.fromCoroutine(Daemon.start(self, "--config", c))
                                            for c in configs]))

        # Reconnecting 0.1 s after a daemon went away (not the default backoff's 1 s
        # and more): the restarted daemon is back in the rotation as soon as it listens.
        balancer = await connect_balanced([f"unix:{p}" for p in paths], health=None, breaker=None,
                                          reconnect=lambda attempt: 0.1)
        self.addCleanup(balancer.close)
        await balancer.when_ready(60, at_least=3)
        load = Load(balancer)
        callers = [Deferred.fromCoroutine(load.caller(n)) for n in range(8)]

        go_callers = _GoCallers()
        reactor.spawnProcess(go_callers, go, [go, "-network", "unix", "-addrs", ",".join(paths),
                                              "-callers", "4"], env=environment())

        await load.reached(100)
        exits = []
        for i in range(3):
            exits.append(await daemons[i].stop(timeout=120, drain_wait=60))
            daemons[i] = await Daemon.start(self, "--config", configs[i])
            await balancer.when_ready(60, at_least=3)
            await load.reached(100)  # the restarted daemon is back in the rotation under load

        load.running = False
        await gatherResults(callers)
        go_callers.transport.closeStdin()
        await go_callers.ended
        counts = json.loads(go_callers.out.decode().strip().splitlines()[-1])

        self.assertEqual(exits, [0, 0, 0])
        self.assertEqual(load.failures, [])
        self.assertGreater(load.made, 400)
        self.assertEqual((counts["failed"], counts["errors"]), (0, {}), go_callers.err.decode())
        self.assertGreater(counts["ok"], 0)
