"""
End-to-end tests of C{server.workers} with the real daemon: connections
spread over the workers, a killed worker is replaced and only its own
connections' calls fail, C{KVStoreService} behaves the same with 1 and 2
workers, and drain (SIGTERM) and reload (SIGHUP) reach every worker.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from twisted.internet.defer import DeferredList
from twisted.trial.unittest import TestCase

from rpcd.client import Client, connect
from rpcd.errors import NotFound, RPCError
from tests.daemon import Daemon, socket_path, temp_dir

READY = r"rpcd ready: {n} workers serving"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _config(workers: int, listen: list[str], services: list[str], extra: str = "") -> str:
    lines = ["[server]", "listen = [" + ", ".join(f'"{e}"' for e in listen) + "]",
             f"workers = {workers}", extra, ""]
    for name in services:
        lines.append(f"[services.{name}]")
        if name == "Sleep":
            lines.append('class = "tests.sleepservice:Sleep"')
    return "\n".join(lines) + "\n"


class WorkersTests(TestCase):
    """A daemon with two workers."""

    timeout = 120

    def setUp(self) -> None:
        self.dir = Path(temp_dir(self))
        self.config = self.dir / "rpcd.toml"

    async def start(self, workers: int = 2, services: tuple[str, ...] = ("Arith", "KVStoreService"),
                    listen: list[str] | None = None, extra: str = "") -> Daemon:
        self.config.write_text(_config(workers, listen or ["tcp:0:interface=127.0.0.1"],
                                       list(services), extra))
        daemon = await Daemon.start(self, "--config", str(self.config), listeners=len(listen or [1]))
        if workers > 1:
            await daemon.wait_for_log(READY.format(n=workers), timeout=60)
        return daemon

    async def clients(self, endpoint: str, n: int) -> list[Client]:
        clients = []
        for _ in range(n):
            client = await connect(endpoint, default_timeout=60)
            self.addCleanup(client.close)
            clients.append(client)
        return clients

    async def pids(self, clients: list[Client]) -> list[int]:
        return [(await c.call("Worker.Info"))["pid"] for c in clients]

    async def test_both_workers_serve(self) -> None:
        """Calls on many connections are served by both worker processes, not the supervisor."""
        daemon = await self.start()
        clients = await self.clients(f"tcp:127.0.0.1:{daemon.port}", 8)
        pids = await self.pids(clients)
        self.assertEqual(len(set(pids)), 2)
        self.assertNotIn(daemon.pid, pids)
        results = await DeferredList([c.Arith.Multiply(A=i, B=3) for i, c in enumerate(clients)
                                      for _ in range(20)], fireOnOneErrback=True)
        self.assertEqual(sorted({r for _, r in results}), [3 * i for i in range(8)])

    async def test_unix_listener(self) -> None:
        """A Unix socket listener is shared by the workers too."""
        path = socket_path(self)
        daemon = await self.start(listen=[f"unix:{path}"])
        self.assertEqual(daemon.addresses, [path])
        clients = await self.clients(f"unix:{path}", 4)
        self.assertEqual(len(set(await self.pids(clients))), 2)

    async def test_mutual_tls_listener(self) -> None:
        """An mtls: listener's handshake and the client's identity check run in the worker."""
        from rpcd import certs
        pki = self.dir / "pki"
        certs.create_dev_pki(pki, clients=["carol"])
        roots = self.dir / "roots"
        roots.mkdir()
        (roots / "ca.pem").write_bytes((pki / "ca.pem").read_bytes())
        d = _escape(str(pki))
        listen = f"mtls:0:interface=127.0.0.1:certKey={d}/server.pem:privateKey={d}/server.key:caCerts={d}/ca.pem"
        self.config.write_text(_config(2, [], ["Arith"]) + 'require_identity = ["carol"]\n')
        daemon = await Daemon.start(self, "--config", str(self.config), "--listen", listen)
        await daemon.wait_for_log(READY.format(n=2), timeout=60)
        endpoint = (f"tls:host=localhost:port={daemon.port}:trustRoots={_escape(str(roots))}"
                    f":certificate={d}/carol.pem:privateKey={d}/carol.key")
        clients = await self.clients(endpoint, 4)
        self.assertEqual(len(set(await self.pids(clients))), 2)
        self.assertEqual([await c.Arith.Multiply(A=7, B=8) for c in clients], [56] * 4)

    async def test_killed_worker_replaced(self) -> None:
        """A worker killed with calls in flight is replaced; only its own connections' calls fail."""
        daemon = await self.start()
        clients = await self.clients(f"tcp:127.0.0.1:{daemon.port}", 6)
        pids = await self.pids(clients)
        victim = pids[0]
        index = next(i for i in range(2) if f"rpcd worker {i} started (pid {victim})" in daemon.output)
        watches = [c.KVStoreService.Watch(60) for c in clients]
        # Every Watch is registered at the owner once a later call on the same
        # connection has been answered there (one connection per worker).
        await DeferredList([c.KVStoreService.Get("absent").addErrback(lambda f: f.trap(NotFound))
                            for c in clients])
        mark = len(daemon.output)
        burst = [c.Arith.Multiply(A=i, B=2) for i, c in enumerate(clients) for _ in range(50)]
        os.kill(victim, signal.SIGKILL)
        await daemon.wait_for_log(rf"rpcd worker {index} \(pid {victim}\) was killed by SIGKILL; "
                                  r"restarting it in", after=mark, timeout=30)
        survivors = [c for c, p in zip(clients, pids) if p != victim]
        await survivors[0].KVStoreService.Set(["key", "value"])
        outcomes = await DeferredList(watches, consumeErrors=True)
        answered = await DeferredList(burst, consumeErrors=True)
        for n, (ok, result) in enumerate(answered):
            if pids[n // 50] != victim:  # the survivors' calls all succeed
                self.assertEqual((ok, result), (True, 2 * (n // 50)))
        for pid, (ok, result) in zip(pids, outcomes):
            if pid == victim:
                self.assertFalse(ok)
                self.assertIsInstance(result.value, RPCError)
            else:
                self.assertEqual((ok, result), (True, "key"))
        # The supervisor's own line, logged once it hands the new worker
        # connections (the worker's relayed "ready" line may come first).
        await daemon.wait_for_log(rf"rpcd worker {index} \(pid \d+\) is serving", after=mark,
                                  timeout=60)
        fresh = await self.clients(f"tcp:127.0.0.1:{daemon.port}", 2)
        new_pids = set(await self.pids(fresh))
        self.assertEqual(len(new_pids), 2)
        self.assertNotIn(victim, new_pids)
        self.assertEqual(await fresh[0].KVStoreService.Get("key"), "value")

    async def kvstore_story(self, workers: int) -> list[Any]:
        daemon = await self.start(workers)
        a, b, c = await self.clients(f"tcp:127.0.0.1:{daemon.port}", 3)
        if workers > 1:
            pids = await self.pids([a, b, c])
            self.assertNotEqual(pids[0], pids[1])
        story: list[Any] = []
        try:
            await c.KVStoreService.Get("k")
        except NotFound as e:
            story.append(("missing", str(e)))
        watch = b.KVStoreService.Watch(60)
        prefix = c.stream("KVStoreService.WatchPrefix", "k")
        # Each connection's calls reach the store in order: once a later call
        # on b and on c is answered, their watches are registered.
        await DeferredList([x.KVStoreService.Get("k").addErrback(lambda f: f.trap(NotFound))
                            for x in (b, c)], fireOnOneErrback=True)
        story.append(await a.KVStoreService.Set(["k", "v1"]))
        story.append(await watch)
        story.append(await c.KVStoreService.Get("k"))
        await a.KVStoreService.Set(["other", "x"])
        await b.KVStoreService.Set(["k2", "v2"])
        received = []
        async for message in prefix:
            received.append(message)
            if len(received) == 2:
                break
        story.append(received)
        # WatchPrefix never ends by itself: cancelled here, its connection
        # closes at once and the daemon's stop need not wait for it.
        prefix.cancel()
        try:
            await prefix.result()
        except RPCError as e:
            story.append(type(e).__name__)
        return story

    async def test_kvstore_one_worker(self) -> None:
        """The KVStoreService story with one process (the reference for the next test)."""
        self.assertEqual(await self.kvstore_story(1), EXPECTED_STORY)

    async def test_kvstore_two_workers(self) -> None:
        """Set on one worker's connection is seen by Get and wakes Watch and WatchPrefix on the other's."""
        self.assertEqual(await self.kvstore_story(2), EXPECTED_STORY)

    async def test_drain(self) -> None:
        """SIGTERM drains every worker (running calls finish) and the daemon exits 0 after them."""
        daemon = await self.start(services=("Sleep",))
        clients = await self.clients(f"tcp:127.0.0.1:{daemon.port}", 4)
        self.assertEqual(len(set(await self.pids(clients))), 2)
        mark = len(daemon.output)
        sleeping = [c.Sleep.Sleep(1.0) for c in clients]
        # The calls are running once the workers have read them: an answer
        # to a later call on each connection shows it.
        await DeferredList([c.Sleep.Echo(1) for c in clients], fireOnOneErrback=True)
        daemon.process.signalProcess(signal.SIGTERM)
        for index in range(2):
            await daemon.wait_for_log(rf"\[worker {index}\] draining: \d+ connection\(s\) told to go away, "
                                      r"[12] call", after=mark, timeout=30)
        self.assertEqual([r for _, r in await DeferredList(sleeping, fireOnOneErrback=True)], [1.0] * 4)
        self.assertEqual(await daemon.output_protocol.ended, 0)
        self.assertEqual(daemon.count_log(r"rpcd worker \d \(pid \d+\) exited with status 0"), 2)
        self.assertNotIn("restarting it", daemon.output)

    async def test_reload(self) -> None:
        """SIGHUP reloads every worker; a bad config is refused once and no worker reloads."""
        daemon = await self.start()
        mark = len(daemon.output)
        self.config.write_text(_config(2, ["tcp:0:interface=127.0.0.1"],
                                       ["Arith", "KVStoreService", "Cal"]))
        daemon.process.signalProcess(signal.SIGHUP)
        for index in range(2):
            await daemon.wait_for_log(rf"\[worker {index}\] rpcd reload: services.Cal added",
                                      after=mark, timeout=30)
        clients = await self.clients(f"tcp:127.0.0.1:{daemon.port}", 4)
        self.assertEqual(len(set(await self.pids(clients))), 2)
        self.assertEqual([(await c.Cal.Square(3))["Ans"] for c in clients], [9] * 4)
        mark = len(daemon.output)
        self.config.write_text("[server]\nworkers = 0\n")
        daemon.process.signalProcess(signal.SIGHUP)
        await daemon.wait_for_log(r"rpcd reload refused, the old config keeps serving: .*server.workers",
                                  after=mark, timeout=30)
        self.assertNotIn("[worker", daemon.output[mark:])
        self.assertEqual([(await c.Cal.Square(4))["Ans"] for c in clients], [16] * 4)


EXPECTED_STORY = [("missing", "not found"), None, "k", "v1", [["k", "v1"], ["k2", "v2"]], "Cancelled"]
