"""
The worker supervisor's logic (L{rpcd.daemon.workers}), the worker's pieces
(L{rpcd.daemon.worker}) and process-shared services (L{rpcd.daemon.owner}), with fakes: no
processes, no network.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcd import config as config_module
from rpcd.daemon.config import ConfigError, ServiceConfig
from rpcd.daemon.owner import process_shared, proxy_spec, split_shared
from rpcd.core.service import ServiceRegistry, describe_service, exposed, service
from rpcd.daemon.worker import ConnectionReceiver, PassedPort, worker_config
from rpcd.daemon.workers import ConnectionRouter, WorkerProtocol, WorkerSupervisor, describe_exit


class FakeProcess:
    """A worker process that records the signals sent to it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []

    def signalProcess(self, number: int) -> None:
        self.signals.append(number)


class Harness:
    """A supervisor on a Clock whose spawn makes L{FakeProcess}es."""

    def __init__(self, count: int = 2, **kwargs: Any) -> None:
        self.clock = Clock()
        self.spawned: list[tuple[int, FakeProcess, WorkerProtocol]] = []
        self.notified: list[str] = []
        self.ready: list[int] = []
        self.gone: list[int] = []
        self.supervisor = WorkerSupervisor(count, self.spawn, self.clock, notify=self.notified.append,
                                           on_ready=self.ready.append, on_gone=self.gone.append,
                                           **kwargs)

    def spawn(self, index: int, protocol: WorkerProtocol) -> FakeProcess:
        process = FakeProcess(1000 + len(self.spawned))
        self.spawned.append((index, process, protocol))
        return process

    def end(self, index: int, reason: Failure | None = None) -> None:
        """End the current process of worker C{index}."""
        protocol = self.supervisor.protocols[index]
        protocol.processEnded(reason or Failure(ProcessTerminated(signal=signal.SIGKILL)))


class SupervisorTests(SynchronousTestCase):
    """L{WorkerSupervisor}: starting, restarting, signals."""

    def test_starts_every_worker(self) -> None:
        """Starting the supervisor spawns one process per worker index."""
        h = Harness(3)
        h.supervisor.startService()
        self.assertEqual([index for index, _, _ in h.spawned], [0, 1, 2])

    def test_restart_backoff_doubles(self) -> None:
        """A worker that keeps dying is restarted after 0.5, 1, 2 s..., capped."""
        h = Harness(2, restart_delay=0.5, max_restart_delay=2.0)
        h.supervisor.startService()
        delays = []
        for _ in range(4):
            before = len(h.spawned)
            h.end(0)
            waited = 0.0
            while len(h.spawned) == before:
                h.clock.advance(0.25)
                waited += 0.25
            delays.append(waited)
        self.assertEqual(delays, [0.5, 1.0, 2.0, 2.0])
        self.assertEqual(h.spawned[-1][0], 0)

    def test_restart_not_before_delay(self) -> None:
        """No replacement is spawned before the restart delay has passed."""
        h = Harness(1, restart_delay=1.0)
        h.supervisor.startService()
        h.end(0)
        h.clock.advance(0.999)
        self.assertEqual(len(h.spawned), 1)
        h.clock.advance(0.001)
        self.assertEqual(len(h.spawned), 2)

    def test_stable_worker_resets_backoff(self) -> None:
        """A worker that ran for stable_after seconds is restarted after the first delay again."""
        h = Harness(1, restart_delay=0.5, stable_after=10.0)
        h.supervisor.startService()
        h.end(0)
        h.clock.advance(0.5)
        h.end(0)
        h.clock.advance(1.0)
        self.assertEqual(len(h.spawned), 3)
        h.clock.advance(10.0)
        h.end(0)
        h.clock.advance(0.5)
        self.assertEqual(len(h.spawned), 4)

    def test_death_is_logged_with_reason(self) -> None:
        """The log says which worker died, how, its last error line and when it restarts."""
        h = Harness(1)
        h.supervisor.startService()
        h.supervisor.protocols[0].childDataReceived(2, b"Traceback...\nMemoryError: boom\n")
        with capturedLogs() as events:
            h.end(0)
        text = [formatEvent(e) for e in events]
        self.assertTrue(any("worker 0 (pid 1000) was killed by SIGKILL (last error: MemoryError: boom)"
                            in t and "restarting it in 0.5 s" in t for t in text), text)

    def test_stop_forwards_sigterm_and_waits(self) -> None:
        """Stopping sends SIGTERM to every worker and fires once all have exited, restarting none."""
        h = Harness(2)
        h.supervisor.startService()
        stopped = h.supervisor.stopService()
        self.assertEqual([p.signals for _, p, _ in h.spawned], [[signal.SIGTERM], [signal.SIGTERM]])
        self.assertEqual(sorted(h.gone), [0, 1])
        h.end(0, Failure(ProcessDone(0)))
        self.assertNoResult(stopped)
        h.end(1, Failure(ProcessDone(0)))
        self.successResultOf(stopped)
        h.clock.advance(100)
        self.assertEqual(len(h.spawned), 2)
        self.assertIn("STOPPING=1", h.notified)

    def test_stop_cancels_pending_restart(self) -> None:
        """A restart scheduled before the stop does not happen."""
        h = Harness(2)
        h.supervisor.startService()
        h.end(0)
        stopped = h.supervisor.stopService()
        h.end(1, Failure(ProcessDone(0)))
        self.successResultOf(stopped)
        h.clock.advance(100)
        self.assertEqual(len(h.spawned), 2)

    def test_reload_forwards_sighup(self) -> None:
        """A good config sends SIGHUP to every worker."""
        h = Harness(2)
        h.supervisor.startService()
        for index in (0, 1):
            h.supervisor.protocols[index].childDataReceived(3, b"READY=1\n")
        current = config_module.parse("", "x")
        self.assertTrue(h.supervisor.reload(lambda: current, current))
        self.assertEqual([p.signals for _, p, _ in h.spawned], [[signal.SIGHUP], [signal.SIGHUP]])

    def test_reload_skips_starting_worker(self) -> None:
        """A worker that is not ready yet (no SIGHUP handler) is not sent SIGHUP."""
        h = Harness(2)
        h.supervisor.startService()
        h.supervisor.protocols[1].childDataReceived(3, b"READY=1\n")
        current = config_module.parse("", "x")
        h.supervisor.reload(lambda: current, current)
        self.assertEqual([p.signals for _, p, _ in h.spawned], [[], [signal.SIGHUP]])

    def test_reload_refuses_bad_config(self) -> None:
        """A bad config is refused in the log and no worker is signalled."""
        h = Harness(2)
        h.supervisor.startService()

        def bad() -> Any:
            raise ConfigError("x.toml: server.workers: must be a number")
        with capturedLogs() as events:
            self.assertFalse(h.supervisor.reload(bad, config_module.parse("", "x")))
        self.assertEqual([p.signals for _, p, _ in h.spawned], [[], []])
        self.assertTrue(any("reload refused" in formatEvent(e) for e in events))

    def test_ready_once_all_ready(self) -> None:
        """READY=1 goes to systemd once every worker is ready; each ready worker gets connections."""
        h = Harness(2)
        h.supervisor.startService()
        h.supervisor.protocols[0].childDataReceived(3, b"READY=1\n")
        self.assertEqual(h.notified, [])
        self.assertEqual(h.ready, [0])
        h.supervisor.protocols[1].childDataReceived(3, b"READ")
        h.supervisor.protocols[1].childDataReceived(3, b"Y=1\n")
        self.assertEqual(h.notified, ["READY=1"])
        self.assertEqual(h.ready, [0, 1])

    def test_dead_worker_gets_no_connections(self) -> None:
        """A worker that exits is taken out of the connection rotation."""
        h = Harness(2)
        h.supervisor.startService()
        h.end(1)
        self.assertEqual(h.gone, [1])

    def test_relays_log_events(self) -> None:
        """A worker's JSON log event is published with its text, prefixed by the worker's index."""
        from twisted.logger import eventAsJSON
        h = Harness(1)
        h.supervisor.startService()
        line = eventAsJSON({"log_format": "hello {who}", "who": "there", "log_namespace": "x",
                            "log_time": 0.0})
        with capturedLogs() as events:
            h.supervisor.protocols[0].childDataReceived(1, line.encode() + b"\n")
        self.assertEqual([formatEvent(e) for e in events], ["[worker 0] hello there"])

    def test_describe_exit(self) -> None:
        """Exits are described by status or signal name."""
        self.assertEqual(describe_exit(Failure(ProcessDone(0))), "exited with status 0")
        self.assertEqual(describe_exit(Failure(ProcessTerminated(exitCode=3))), "exited with status 3")
        self.assertEqual(describe_exit(Failure(ProcessTerminated(signal=signal.SIGKILL))),
                         "was killed by SIGKILL")


def drain(end: socket.socket) -> tuple[bytes, int]:
    """
    @return: the bytes and the number of descriptors waiting on a socket
        (the descriptors are closed).
    """
    end.setblocking(False)
    data, count = b"", 0
    while True:
        try:
            chunk, fds, _, _ = socket.recv_fds(end, 16, 4)
        except (BlockingIOError, OSError):
            return data, count
        if not chunk:
            return data, count
        data += chunk
        count += len(fds)
        for fd in fds:
            os.close(fd)


class RouterTests(SynchronousTestCase):
    """L{ConnectionRouter} and L{ConnectionReceiver} over local socket pairs."""

    def pair(self) -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        return a, b

    def test_round_robin(self) -> None:
        """Connections go to the workers in turn, each with its listener's index."""
        router = ConnectionRouter()
        ends = {}
        for index in (0, 1):
            ours, theirs = socket.socketpair()
            self.addCleanup(theirs.close)
            router.add(index, ours)
            ends[index] = theirs
        for listener in (0, 1, 1, 0):
            conn, _ = self.pair()
            self.assertTrue(router.send(conn, listener))
            self.assertEqual(conn.fileno(), -1)  # the supervisor's copy is closed
        self.assertEqual([drain(ends[0]), drain(ends[1])], [(b"\0\1", 2), (b"\1\0", 2)])

    def test_no_worker(self) -> None:
        """With no worker up, a connection is refused (closed)."""
        router = ConnectionRouter()
        conn, _ = self.pair()
        self.assertFalse(router.send(conn, 0))
        self.assertEqual(conn.fileno(), -1)

    def test_removed_worker_skipped(self) -> None:
        """A removed worker gets nothing; the other gets every connection."""
        router = ConnectionRouter()
        ours0, theirs0 = socket.socketpair()
        ours1, theirs1 = socket.socketpair()
        self.addCleanup(theirs0.close)
        self.addCleanup(theirs1.close)
        router.add(0, ours0)
        router.add(1, ours1)
        router.remove(0)
        for _ in range(3):
            conn, _ = self.pair()
            self.assertTrue(router.send(conn, 0))
        self.assertEqual(drain(theirs1), (b"\0\0\0", 3))
        self.assertEqual(drain(theirs0), (b"", 0))

    def test_receiver_adopts_with_listener_factory(self) -> None:
        """The worker serves a passed connection with the factory of the listener it names."""
        adopted = []

        class Reactor:
            def adoptStreamConnection(self, fd: int, family: int, factory: Any) -> None:
                adopted.append((family, factory))

        class F:
            def doStart(self) -> None:
                pass

            def doStop(self) -> None:
                pass
        first, second = F(), F()
        ports = [PassedPort(first, None, socket.AF_INET), PassedPort(second, None, socket.AF_UNIX)]
        for port in ports:
            port.startListening()
        receiver = ConnectionReceiver(Reactor(), ports)
        for _ in range(2):
            a, b = self.pair()
            receiver.fileDescriptorReceived(os.dup(a.fileno()))
        receiver.dataReceived(b"\x01\x00")
        self.assertEqual(adopted, [(socket.AF_UNIX, second), (socket.AF_INET, first)])

    def test_receiver_drops_after_stop(self) -> None:
        """Once its listener stopped (draining), a passed connection is closed, not served."""
        adopted = []

        class Reactor:
            def adoptStreamConnection(self, fd: int, family: int, factory: Any) -> None:
                adopted.append(fd)

        class F:
            def doStart(self) -> None:
                pass

            def doStop(self) -> None:
                pass
        port = PassedPort(F(), None, socket.AF_INET)
        port.startListening()
        port.stopListening()
        receiver = ConnectionReceiver(Reactor(), [port])
        a, _ = self.pair()
        fd = os.dup(a.fileno())
        receiver.fileDescriptorReceived(fd)
        receiver.dataReceived(b"\x00")
        self.assertEqual(adopted, [])
        self.assertRaises(OSError, os.fstat, fd)


class WorkerConfigTests(SynchronousTestCase):
    """L{worker_config}: what each worker serves."""

    TEXT = ('[server]\nlisten = ["tcp:1:interface=127.0.0.1"]\nconnect = ["tcp:127.0.0.1:9"]\n'
            'workers = 2\n')

    def test_worker_zero_dials(self) -> None:
        """Worker 0 keeps the reverse connections; the others have none."""
        config = config_module.parse(self.TEXT, "x")
        self.assertEqual(len(worker_config(config, config, 0).connect), 1)
        self.assertEqual(worker_config(config, config, 1).connect, ())

    def test_listen_pinned(self) -> None:
        """A reload keeps the listeners the worker started with."""
        config = config_module.parse(self.TEXT, "x")
        new = config_module.parse(self.TEXT.replace("tcp:1:", "tcp:2:"), "x")
        self.assertEqual(worker_config(new, config, 0).listen, config.listen)

    def test_workers_key(self) -> None:
        """server.workers takes a number or "auto" (the cores available), and refuses 0."""
        self.assertEqual(config_module.parse("", "x").workers, 1)
        self.assertEqual(config_module.parse('[server]\nworkers = 3\n', "x").workers, 3)
        self.assertEqual(config_module.parse('[server]\nworkers = "auto"\n', "x").workers,
                         len(os.sched_getaffinity(0)))
        error = self.assertRaises(ConfigError, config_module.parse, '[server]\nworkers = 0\n', "x")
        self.assertIn("server.workers", str(error))


@process_shared
class Counter:
    """A process-shared service for the tests."""

    @exposed
    def Add(self, n: int) -> int:
        """Add n."""
        return n

    @exposed
    def Pair(self, a: int, b: str) -> str:
        """Two parameters."""
        return b * a


@service(per_connection=True)
@process_shared
class PerConnection:
    @exposed
    def Get(self) -> int:
        """Nothing."""
        return 0


class OwnerTests(SynchronousTestCase):
    """L{rpcd.daemon.owner}: which services are shared, and the workers' proxies."""

    def test_split_shared(self) -> None:
        """Marked services are shared; a config entry's process_shared overrides the class."""
        spec = describe_service(Counter)
        self.assertEqual(len(split_shared([(spec, ServiceConfig("Counter"))])), 1)
        self.assertEqual(split_shared([(spec, ServiceConfig("Counter", process_shared=False))]), [])

    def test_refuses_per_connection(self) -> None:
        """A per-connection service cannot be process-shared; the message names it."""
        error = self.assertRaises(ConfigError, split_shared,
                                  [(describe_service(PerConnection), ServiceConfig("PerConnection"))])
        self.assertIn("services.PerConnection", str(error))

    def test_kvstore_is_shared(self) -> None:
        """The demo KVStoreService declares itself process-shared."""
        from rpcd.examples.kvstore import KVStoreService
        spec = describe_service(KVStoreService)
        self.assertEqual(len(split_shared([(spec, ServiceConfig("KVStoreService"))])), 1)

    def test_proxy_forwards_raw_value(self) -> None:
        """The proxy sends the caller's value, unconverted, to the owner under the same name."""
        from twisted.internet.defer import succeed
        sent = []

        class Link:
            def call(self, method: str, value: Any) -> Any:
                sent.append((method, value))
                return succeed("result")
        registry = ServiceRegistry()
        registry.add(proxy_spec(describe_service(Counter), Link()))  # type: ignore[arg-type]
        add = registry.lookup_shared("Counter.Add")
        pair = registry.lookup_shared("Counter.Pair")
        assert add is not None and pair is not None
        self.assertEqual(self.successResultOf(add.invoke(5, None)), "result")
        pair.invoke({"a": 2, "b": "x"}, None)
        self.assertEqual(sent, [("Counter.Add", 5), ("Counter.Pair", {"a": 2, "b": "x"})])
        self.assertEqual(dataclasses.asdict(registry.spec("Counter"))["name"], "Counter")


class AcceptorTests(SynchronousTestCase):
    """L{rpcd.daemon.workers._Acceptor} on a fake listening socket and a Clock."""

    def make(self, accept: Any) -> tuple[Any, Any, Clock]:
        from rpcd.daemon.workers import _Acceptor
        clock = Clock()

        class Reactor:
            readers: list[Any] = []

            def addReader(self, reader: Any) -> None:
                self.readers.append(reader)

            def removeReader(self, reader: Any) -> None:
                self.readers.remove(reader)

            def callLater(self, *args: Any) -> Any:
                return clock.callLater(*args)

        class Port:
            class socket:
                pass

            def fileno(self) -> int:
                return 99
        port = Port()
        port.socket.accept = accept  # type: ignore[attr-defined]
        router = ConnectionRouter()
        ours, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        router.add(0, ours)
        self.addCleanup(router.remove, 0)
        reactor = Reactor()
        acceptor = _Acceptor(port, 0, router, reactor)
        acceptor.resume()
        return acceptor, reactor, clock

    def test_accept_error_waits(self) -> None:
        """Out of descriptors, the acceptor stops reading for ACCEPT_RETRY seconds instead of spinning."""
        import errno

        from rpcd.daemon.workers import ACCEPT_RETRY

        def accept() -> Any:
            raise OSError(errno.EMFILE, "Too many open files")
        acceptor, reactor, clock = self.make(accept)
        with capturedLogs() as events:
            acceptor.doRead()
        self.assertEqual(reactor.readers, [])
        self.assertTrue(any("Too many open files" in formatEvent(e) for e in events))
        clock.advance(ACCEPT_RETRY)
        self.assertEqual(reactor.readers, [acceptor])

    def test_no_retry_after_stop(self) -> None:
        """A stopped acceptor is not resumed by a pending retry."""
        import errno

        from rpcd.daemon.workers import ACCEPT_RETRY

        def accept() -> Any:
            raise OSError(errno.ENOBUFS, "No buffer space")
        acceptor, reactor, clock = self.make(accept)
        with capturedLogs():
            acceptor.doRead()
        acceptor.stopped = True
        clock.advance(ACCEPT_RETRY)
        self.assertEqual(reactor.readers, [])
