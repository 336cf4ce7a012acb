"""
The supervisor of a daemon with C{server.workers} above 1.

The twistd process binds every listener once (L{SharedListeners}: the
endpoint strings are parsed and listened on as usual, then the supervisor
stops accepting on them) and starts N worker processes (L{rpcd.daemon.worker}) that
inherit the listening sockets and accept on them; the kernel hands each new
connection to one of the workers blocked in C{accept}.  Passed sockets
rather than C{SO_REUSEPORT}: the same code serves TCP, Unix sockets (which
C{SO_REUSEPORT} does not balance) and every TLS endpoint (the worker wraps
the adopted socket as its endpoint string says), port 0 means one port for
all, and a worker being restarted leaves no hole in the accept queue.

L{WorkerSupervisor}:
 - restarts a worker that exits when it was not told to stop, after a delay
   doubling from C{RESTART_DELAY} to C{MAX_RESTART_DELAY} with each exit in
   a row (reset once a worker has run for C{STABLE_AFTER} seconds), and logs
   how it ended and its last line of standard error;
 - on SIGTERM or SIGINT (twistd stops the service) sends SIGTERM to every
   worker (each drains: L{rpcd.drain}) and stops once all have exited; a
   second signal is sent on (the workers stop at once);
 - on SIGHUP checks the config file first: a bad one is refused, as
   without workers; a good one sends SIGHUP to every worker (each reloads);
 - relays the workers' log events (JSON lines) into its own log, each
   prefixed with C{[worker N]}, and tells systemd C{READY=1} once every
   worker is ready;
 - runs the process-shared services (L{rpcd.daemon.owner}) on a private Unix
   socket the workers call.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any, Callable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import LogLevel, Logger, eventFromJSON, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from rpcd.daemon.config import Config, ConfigError
from rpcd.daemon.sdnotify import notify as sd_notify

log = Logger()

#: Seconds before the first restart of a worker that died.
RESTART_DELAY = 0.5
#: The longest wait before a restart.
MAX_RESTART_DELAY = 30.0
#: Seconds a worker must run for its exits in a row to be forgotten.
STABLE_AFTER = 10.0
#: Seconds the supervisor waits to accept again after an accept error.
ACCEPT_RETRY = 1.0
#: The longest log line relayed from a worker; longer ones are cut.
MAX_LINE = 1 << 20


def describe_exit(reason: Failure) -> str:
    """
    @param reason: a process's C{processEnded} reason.
    @return: how it ended, in words.
    """
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = signal.Signals(value.signal).name
            except ValueError:
                name = str(value.signal)
            return f"was killed by {name}"
        return f"exited with status {value.exitCode}"
    return str(value)


class _Lines:
    """Splits a byte stream into lines, cutting any longer than L{MAX_LINE}."""

    def __init__(self, line: Callable[[str], None]) -> None:
        self.line = line
        self.buffer = b""

    def feed(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > MAX_LINE:
            lines.append(self.buffer[:MAX_LINE])
            self.buffer = b""
        for raw in lines:
            self.line(raw.decode("utf-8", "replace"))


class WorkerProtocol(ProcessProtocol):
    """
    One worker process, seen from the supervisor.

    @ivar index: the worker's index (0 to N-1; a replacement keeps it).
    @ivar last_error: its last line of standard error.
    """

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.last_error = ""
        self._out = _Lines(self._event)
        self._err = _Lines(self._error)
        self._control = _Lines(self._notified)

    def childDataReceived(self, fd: int, data: bytes) -> None:
        {1: self._out, 2: self._err, 3: self._control}.get(fd, self._err).feed(data)

    def _event(self, line: str) -> None:
        line = line.strip("\x1e")
        if not line:
            return
        try:
            event = eventFromJSON(line)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            log.info("[worker {index}] {line}", index=self.index, line=line)
            return
        # Formatted here: the worker flattened its fields into the text.
        event["rpcd_text"] = formatEvent(event)
        event.pop("log_flattened", None)
        event["rpcd_worker"] = self.index
        event.setdefault("log_level", LogLevel.info)
        event.setdefault("log_namespace", "rpcd.daemon.worker")
        event["log_format"] = "[worker {rpcd_worker}] {rpcd_text}"
        globalLogPublisher(event)

    def _error(self, line: str) -> None:
        if line.strip():
            self.last_error = line.strip()
            log.warn("[worker {index}] {line}", index=self.index, line=line)

    def _notified(self, line: str) -> None:
        self.supervisor.notified(self.index, line.strip())

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.ended(self.index, self, reason)


class WorkerSupervisor(Service):
    """
    Keeps N worker processes running; see the module docstring.

    @ivar count: how many workers.
    @ivar processes: the running workers' process transports, by index.
    """

    def __init__(self, count: int, spawn: Callable[[int, WorkerProtocol], Any], clock: Any, *,
                 restart_delay: float = RESTART_DELAY, max_restart_delay: float = MAX_RESTART_DELAY,
                 stable_after: float = STABLE_AFTER,
                 notify: Callable[[str], Any] = sd_notify,
                 on_ready: Callable[[int], None] = lambda index: None,
                 on_gone: Callable[[int], None] = lambda index: None) -> None:
        """
        @param count: how many workers.
        @param spawn: starts worker C{index} with a protocol; returns its
            process transport (C{pid}, C{signalProcess}).
        @param clock: the clock for the restart delays.
        @param restart_delay: seconds before the first restart.
        @param max_restart_delay: the longest wait before a restart.
        @param stable_after: seconds of running that forget past exits.
        @param notify: sends C{sd_notify} messages.
        @param on_ready: called with a worker's index each time it is ready
            (it gets connections from then on).
        @param on_gone: called with a worker's index when it exits or is
            told to drain (it gets no more connections).
        """
        self.count = count
        self.spawn = spawn
        self.clock = clock
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.stable_after = stable_after
        self.notify = notify
        self.on_ready = on_ready
        self.on_gone = on_gone
        self.processes: dict[int, Any] = {}
        self.pids: dict[int, int] = {}
        self.protocols: dict[int, WorkerProtocol] = {}
        self.started_at: dict[int, float] = {}
        self.exits_in_a_row: dict[int, int] = {}
        self.restarts: dict[int, Any] = {}
        self.ready: set[int] = set()
        self.serving: set[int] = set()
        self.stopping = False
        self._all_ended: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        for index in range(self.count):
            self._start(index)

    def _start(self, index: int) -> None:
        self.restarts.pop(index, None)
        if self.stopping:
            return
        protocol = WorkerProtocol(self, index)
        process = self.spawn(index, protocol)
        self.processes[index] = process
        self.protocols[index] = protocol
        self.started_at[index] = self.clock.seconds()
        self.pids[index] = process.pid
        log.info("rpcd worker {index} started (pid {pid})", index=index, pid=process.pid)

    def notified(self, index: int, message: str) -> None:
        """
        A worker sent an C{sd_notify} message.

        @param index: the worker.
        @param message: e.g. C{READY=1}.
        """
        if message != "READY=1" or self.stopping or index not in self.processes:
            return
        self.serving.add(index)
        self.on_ready(index)
        # Logged once the worker gets connections (on_ready), not before.
        log.info("rpcd worker {index} (pid {pid}) is serving", index=index,
                 pid=self.pids.get(index))
        if index not in self.ready:
            self.ready.add(index)
            if len(self.ready) == self.count and not self.stopping:
                log.info("rpcd ready: {count} workers serving", count=self.count)
                self.notify("READY=1")

    def ended(self, index: int, protocol: WorkerProtocol, reason: Failure) -> None:
        """
        A worker exited: restart it (with backoff), or, when stopping, note
        it and stop once all have.

        @param index: the worker.
        @param protocol: its protocol.
        @param reason: how it ended.
        """
        if self.protocols.get(index) is not protocol:
            return
        self.processes.pop(index)
        pid = self.pids.pop(index, None)
        del self.protocols[index]
        self.serving.discard(index)
        self.on_gone(index)
        how = describe_exit(reason)
        if self.stopping:
            log.info("rpcd worker {index} (pid {pid}) {how}", index=index, pid=pid, how=how)
            if not self.processes and self._all_ended is not None and not self._all_ended.called:
                self._all_ended.callback(None)
            return
        now = self.clock.seconds()
        if now - self.started_at.get(index, now) >= self.stable_after:
            self.exits_in_a_row[index] = 0
        exits = self.exits_in_a_row.get(index, 0)
        delay = min(self.max_restart_delay, self.restart_delay * 2 ** exits)
        self.exits_in_a_row[index] = exits + 1
        log.error("rpcd worker {index} (pid {pid}) {how}{last}; restarting it in {delay:g} s",
                  index=index, pid=pid, how=how, delay=delay,
                  last=f" (last error: {protocol.last_error})" if protocol.last_error else "")
        self.restarts[index] = self.clock.callLater(delay, self._start, index)

    def signal_all(self, number: int, only_serving: bool = False) -> int:
        """
        Send a signal to every running worker.

        @param number: the signal.
        @param only_serving: only to the workers that said they are ready
            (a worker still starting has no SIGHUP handler yet, and reads
            the config file as it starts anyway).
        @return: how many were sent.
        """
        sent = 0
        for index, process in list(self.processes.items()):
            if only_serving and index not in self.serving:
                continue
            try:
                process.signalProcess(number)
                sent += 1
            except Exception:  # it exited meanwhile: processEnded follows
                pass
        return sent

    def stopService(self) -> Deferred[None]:
        """
        Drain every worker: send them SIGTERM, restart none.

        @return: a Deferred firing once every worker has exited.
        """
        super().stopService()
        self.stopping = True
        for timer in self.restarts.values():
            if timer.active():
                timer.cancel()
        self.restarts.clear()
        self.notify("STOPPING=1")
        for index in list(self.processes):
            self.on_gone(index)
        sent = self.signal_all(signal.SIGTERM)
        log.info("rpcd draining: SIGTERM sent to {n} worker(s)", n=sent)
        if not self.processes:
            return succeed(None)
        self._all_ended = Deferred()
        return self._all_ended

    def reload(self, read: Callable[[], Config], current: Config) -> bool:
        """
        What SIGHUP does: check the config, then have every worker reload.

        @param read: reads and checks the config file.
        @param current: the config the supervisor started with.
        @return: whether the workers were told to reload.
        """
        try:
            new = read()
        except ConfigError as e:
            log.error("rpcd reload refused, the old config keeps serving: {error}", error=str(e))
            return False
        for key in ("listen", "workers"):
            if getattr(new, key) != getattr(current, key):
                log.warn("rpcd reload: server.{key} changed: with workers it needs a restart "
                         "to take effect", key=key)
        sent = self.signal_all(signal.SIGHUP, only_serving=True)
        log.info("rpcd: SIGHUP: {n} worker(s) told to reload {source}", n=sent, source=new.source)
        return True


class ConnectionRouter:
    """
    Hands accepted connections to the workers in turn, over each worker's
    end of a socket pair (C{SCM_RIGHTS}), with one byte: the listener's index.

    @ivar channels: the supervisor's end of each live worker's socket pair.
    """

    def __init__(self) -> None:
        self.channels: dict[int, socket.socket] = {}
        self._turn = 0
        self.on_available: Callable[[], None] = lambda: None

    def add(self, index: int, channel: socket.socket) -> None:
        """
        A worker is up: send it connections.

        @param index: the worker.
        @param channel: the supervisor's end of its socket pair.
        """
        channel.setblocking(False)
        self.channels[index] = channel
        self.on_available()

    def remove(self, index: int) -> None:
        """
        A worker is gone (or draining): send it nothing more.

        @param index: the worker.
        """
        channel = self.channels.pop(index, None)
        if channel is not None:
            channel.close()

    def send(self, connection: socket.socket, listener: int) -> bool:
        """
        Give an accepted connection to the next worker that takes it; the
        supervisor's copy is closed either way.

        @param connection: the accepted socket.
        @param listener: the index of the listener that accepted it.
        @return: whether a worker took it.
        """
        try:
            connection.setblocking(False)
            order = sorted(self.channels)
            for attempt in range(len(order)):
                index = order[(self._turn + attempt) % len(order)]
                try:
                    socket.send_fds(self.channels[index], [bytes([listener])], [connection.fileno()])
                except OSError:  # full (a stuck worker) or gone: try the next
                    continue
                self._turn = (self._turn + attempt + 1) % len(order)
                return True
            return False
        finally:
            connection.close()


class _Acceptor:
    """
    Accepts on one listening socket and routes each connection to a worker;
    paused while no worker is up (the kernel's queue holds the connections).
    """

    def __init__(self, port: Any, index: int, router: ConnectionRouter, reactor: Any) -> None:
        self.port = port
        self.index = index
        self.router = router
        self.reactor = reactor
        self.reading = False
        self.stopped = False

    def fileno(self) -> int:
        return self.port.fileno()

    def logPrefix(self) -> str:
        return "rpcd-acceptor"

    def resume(self) -> None:
        if not self.reading and not self.stopped:
            self.reading = True
            self.reactor.addReader(self)

    def pause(self) -> None:
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self)

    def doRead(self) -> None:
        for _ in range(100):
            if not self.router.channels:
                self.pause()
                return
            try:
                connection, _ = self.port.socket.accept()
            except BlockingIOError:
                return
            except OSError as e:
                # Out of descriptors (EMFILE) or memory: the socket stays
                # readable, so wait instead of spinning on the error.
                log.error("rpcd cannot accept on listener {index}: {error}; retrying in {delay:g} s",
                          index=self.index, error=e.strerror or str(e), delay=ACCEPT_RETRY)
                self.pause_for(ACCEPT_RETRY)
                return
            if not self.router.send(connection, self.index):
                log.warn("rpcd: no worker took a connection (none is up, or all are stuck); "
                         "it was closed")
                self.pause_for(ACCEPT_RETRY)
                return

    def pause_for(self, seconds: float) -> None:
        """
        Stop accepting for a while (a worker coming up resumes it sooner).
        """
        self.pause()
        self.reactor.callLater(seconds, self.resume_if_open)

    def resume_if_open(self) -> None:
        if not self.stopped:
            self.resume()

    def connectionLost(self, reason: Any) -> None:
        self.reading = False


class SharedListeners(Service):
    """
    The listening sockets, bound once by the supervisor (before twistd drops
    privileges) with the endpoint strings as given; the supervisor accepts
    on them and hands each connection to a worker (L{ConnectionRouter}).

    @ivar ports: the listening ports, in the order of C{server.listen}.
    """

    def __init__(self, config: Config, reactor: Any, services: str, router: ConnectionRouter) -> None:
        self.config = config
        self.reactor = reactor
        self.services = services
        self.router = router
        self.ports: list[Any] = []
        self.acceptors: list[_Acceptor] = []
        router.on_available = self.resume

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        from twisted.internet.endpoints import serverFromString

        from rpcd.daemon.build import log_listening, with_backlog
        for item in self.config.listen:
            try:
                endpoint = serverFromString(self.reactor, with_backlog(
                    item.endpoint, item.backlog or self.config.backlog))
            except Exception as e:
                raise SystemExit(f"rpcd: {self.config.source}: server.listen: bad endpoint "
                                 f"{item.endpoint!r}: {e}") from None
            listened: list[Any] = []
            endpoint.listen(Factory()).addBoth(listened.append)
            result = listened[0] if listened else None
            if isinstance(result, Failure):
                reason = getattr(result.value, "socketError", None) or result.getErrorMessage()
                log.critical("rpcd cannot listen on {endpoint!r}: {reason}",
                             endpoint=item.endpoint, reason=reason)
                raise SystemExit(1)
            if result is None:
                raise SystemExit(f"rpcd: server.listen: {item.endpoint!r} did not listen at once, "
                                 "which workers need (use server.workers = 1)")
            result.stopReading()  # the acceptor reads it instead
            self.acceptors.append(_Acceptor(result, len(self.ports), self.router, self.reactor))
            self.ports.append(result)
            log_listening(result, item.endpoint, self.services)

    def resume(self) -> None:
        """
        Accept again (a worker is up).
        """
        if self.running:
            for acceptor in self.acceptors:
                acceptor.resume()

    def startService(self) -> None:
        super().startService()
        self.resume()

    def stopService(self) -> Any:
        super().stopService()
        for acceptor in self.acceptors:
            acceptor.pause()
            acceptor.stopped = True
        self.acceptors = []
        for port in self.ports:
            port.stopListening()  # a Unix socket's file is removed
        self.ports = []


class _SupervisorSignals(Service):
    """
    SIGHUP reloads every worker; once stopping, a second SIGTERM or SIGINT
    is sent on to the workers (they stop at once) instead of reaching
    twistd, and the daemon exits 0.
    """

    def __init__(self, supervisor: WorkerSupervisor, read: Callable[[], Config],
                 config: Config, reactor: Any) -> None:
        """
        @param supervisor: the workers.
        @param read: reads and checks the config file (and its services).
        @param config: the config the daemon started with.
        @param reactor: the reactor.
        """
        self.supervisor = supervisor
        self.read = read
        self.config = config
        self.reactor = reactor
        self._previous: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def _hangup(self, number: int, frame: Any) -> None:
        self.reactor.callFromThread(self.hangup)

    def hangup(self) -> None:
        from rpcd.daemon.reload import reopen_log_files
        reopen_log_files()
        self.supervisor.reload(self.read, self.config)

    def stopping(self) -> None:
        """
        The daemon has begun to stop (the workers drain): from now on a
        second SIGTERM or SIGINT is sent on to the workers, and the exit is
        a clean one.  Called before the workers are waited for, as the
        second signal is for when they take too long.
        """
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None  # a drain is a clean stop

        def again(number: int, frame: Any) -> None:
            self.reactor.callFromThread(self.supervisor.signal_all, signal.SIGTERM)
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, again)


class _Owner(Service):
    """The process-shared services' server on a private Unix socket."""

    def __init__(self, server: Any, reactor: Any) -> None:
        self.server = server
        self.reactor = reactor
        self.directory = tempfile.mkdtemp(prefix="rpcd-owner-")
        self.path = os.path.join(self.directory, "owner.sock")
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.port = self.reactor.listenUNIX(self.path, self.server.factory(), mode=0o600)

    def stopService(self) -> Any:
        super().stopService()
        for connection in list(self.server.open_connections):
            connection.stop_now("the daemon stopped")
        d = self.port.stopListening() if self.port is not None else None
        shutil.rmtree(self.directory, ignore_errors=True)
        return d


def worker_argv(options: Any, index: int, count: int, addresses: list[Any],
                owner: str | None) -> list[str]:
    """
    @param options: the daemon's L{rpcd.daemon.tap.Options}.
    @param index: the worker's index.
    @param count: how many workers.
    @param addresses: each listener's address (C{getHost()}).
    @param owner: the owner's socket path, or None.
    @return: the command line of worker C{index}.
    """
    argv = [sys.executable, "-m", "rpcd.daemon.worker", "--index", str(index), "--count", str(count)]
    if options["config"] is not None:
        argv += ["--config", os.path.abspath(options["config"])]
    for endpoint in options["listen"]:
        argv += ["--listen", endpoint]
    for name in options["service"]:
        argv += ["--service", name]
    argv += ["--listeners", json.dumps([_address(a) for a in addresses])]
    if owner is not None:
        argv += ["--owner", owner]
    return argv


def _address(address: Any) -> list[Any]:
    name = getattr(address, "name", None)
    if name is not None:
        return ["unix", name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name]
    return [address.type.lower() + ("6" if ":" in address.host else ""), address.host, address.port]


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    import rpcd
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(rpcd.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (checkout, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _SupervisorTop(MultiService):
    """
    The supervisor's top service: its children (the signal handlers, the
    owner, the sockets) start first, then the workers; on stop the workers
    drain first, then the children stop.
    """

    def __init__(self, supervisor: WorkerSupervisor, listeners: SharedListeners,
                 signals: _SupervisorSignals) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.listeners = listeners
        self.signals = signals
        signals.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self.supervisor.startService()

    def stopService(self) -> Deferred[Any]:
        self.signals.stopping()
        log.info("draining: stopped listening on {n} endpoint(s)", n=len(self.listeners.ports))
        self.listeners.stopService()
        d = self.supervisor.stopService()
        d.addCallback(lambda _: MultiService.stopService(self))
        return d


def make_supervisor(options: Any, reactor: Any,
                    read_config: Callable[[Any], Config]) -> MultiService:
    """
    The service twistd runs when C{server.workers} is above 1.

    @param options: the checked L{rpcd.daemon.tap.Options}.
    @param reactor: the global reactor.
    @param read_config: reads the config file again (on SIGHUP), from C{options}.
    @return: the supervisor's top service.
    """
    from rpcd.daemon.owner import owner_server, split_shared
    config: Config = options.loaded
    owner: _Owner | None = None
    try:
        shared = split_shared(options.services)
        if shared:
            owner = _Owner(owner_server(shared, config, reactor), reactor)
    except ConfigError as e:
        raise SystemExit(f"rpcd: {config.source}: {e}") from None
    names = ", ".join(spec.name for spec, _ in options.services)
    router = ConnectionRouter()
    listeners = SharedListeners(config, reactor, f"{names} in {config.workers} workers", router)
    env = _worker_env()
    channels: dict[int, socket.socket] = {}

    def spawn(index: int, protocol: WorkerProtocol) -> Any:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = worker_argv(options, index, config.workers, [p.getHost() for p in listeners.ports],
                           owner.path if owner is not None else None)
        try:
            return reactor.spawnProcess(protocol, sys.executable, argv, env=env, path=os.getcwd(),
                                        childFDs={0: "w", 1: "r", 2: "r", 3: "r", 4: theirs.fileno()})
        finally:
            theirs.close()
            old = channels.pop(index, None)
            if old is not None:
                old.close()
            channels[index] = ours

    def ready(index: int) -> None:
        channel = channels.pop(index, None)
        if channel is not None:
            router.add(index, channel)

    def gone(index: int) -> None:
        router.remove(index)
        channel = channels.pop(index, None)
        if channel is not None:
            channel.close()

    supervisor = WorkerSupervisor(config.workers, spawn, reactor, on_ready=ready, on_gone=gone)
    def read() -> Config:
        from rpcd.daemon import resolve_services
        new = read_config(options)
        resolve_services(new, options["service"])  # an unknown service is refused here, once
        return new
    top = _SupervisorTop(supervisor, listeners, _SupervisorSignals(supervisor, read, config, reactor))
    if owner is not None:
        owner.setServiceParent(top)
    listeners.setServiceParent(top)
    return top


__all__ = ["SharedListeners", "WorkerSupervisor", "describe_exit", "make_supervisor"]
