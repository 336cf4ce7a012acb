"""
Running the real daemon (C{twistd -n rpcd}) as a subprocess in end-to-end
tests, and running other real programs (the C{rpcd} command, Go programs).

    daemon = await Daemon.start(self, "--listen", "tcp:0:interface=127.0.0.1")
    client = await connect(f"tcp:127.0.0.1:{daemon.port}")

The daemon listens on port 0 and the test reads the real port from its log
line C{rpcd listening on HOST:PORT (...)}; nothing sleeps: every wait is on
the daemon's output or its exit.  It is stopped with SIGTERM (SIGKILL if it
lingers) in the test's cleanup.

    daemon = await Daemon.start(self, "--config", path, listeners=2, nofile=64)
    await daemon.wait_for_log(r"closing .*: idle", after=mark, timeout=10)
    daemon.pid, daemon.ports, daemon.addresses, daemon.rss_kib(), daemon.open_fds()

Daemons are forked from a server that has imported their modules
(L{tests.forking}), the same C{twistd} entry point in a process of its own at
a tenth of an interpreter start's cost; C{fork=False} (or
C{RPCD_TESTS_EXEC=1} for the whole run) starts a new interpreter instead.

Tests that only call a daemon share one (even forked, a daemon costs CPU to
start and stop): C{Daemon.shared(self, ...)} starts it on the first request for
these arguments and reuses it until the test process exits; such a test must
leave it as it found it, and reads the log from its own mark.

    daemon = await Daemon.shared(self, "--config", shared_config(TOML))
    mark = len(daemon.output)
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.forking import ROOT as ROOT, environment as environment
from tests.forking import (
    die_with_parent,
    exit_reason,
    fork_daemon,
    fork_twistd,
    fork_twistd_process,
    read_line,
    server_path,
)
LISTENING = re.compile(r"rpcd listening on (\S+?)(?::(\d+))? \(")

# Runs twistd with RLIMIT_NOFILE lowered to argv[1] (for fd-exhaustion tests).
_LIMITED_TWISTD = (
    "import resource, sys\n"
    "limit = int(sys.argv.pop(1))\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))\n"
    "from twisted.scripts.twistd import run\n"
    "run()\n"
)


class _Output(ProcessProtocol):
    """Collects a process's output and lets tests wait for lines."""

    def __init__(self) -> None:
        self.output = b""
        self.waiters: list[tuple[Callable[[str], Any], Deferred[Any]]] = []
        self.ended: Deferred[int | None] = Deferred()
        self.exit_code: int | None = None
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    errReceived = outReceived

    def _check(self) -> None:
        if not self.waiters:
            return  # (a chatty daemon's output is not decoded again for nobody)
        text = self.output.decode("utf-8", "replace")
        for waiter in list(self.waiters):
            match, d = waiter
            found = match(text)
            if found is not None:
                self.waiters.remove(waiter)
                d.callback(found)

    def wait_for(self, match: Callable[[str], Any], what: str,
                 timeout: float | None = None) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiters.append((match, d))
        self._check()
        if not self.running and not d.called:
            self.waiters.remove((match, d))
            d.errback(AssertionError(f"process ended before {what}; output:\n{self.text}"))
        if timeout is not None and not d.called:
            waiter = (match, d)

            def expired() -> None:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
                    d.errback(AssertionError(f"no {what} within {timeout:g} s; "
                                             f"output:\n{self.text[-6000:]}"))
            timer = reactor.callLater(timeout, expired)
            d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return d

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def forget_waiters(self) -> None:
        """
        Drop every wait still pending (a shared daemon outlives the test
        that waited).
        """
        self.waiters = []

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        value = reason.value
        self.exit_code = getattr(value, "exitCode", None)
        for match, d in self.waiters:
            d.errback(AssertionError(f"process ended (exit {self.exit_code}) while waiting; "
                                     f"output:\n{self.text}"))
        self.waiters = []
        self.ended.callback(self.exit_code)


def _daemon_argv(args: tuple[str, ...], nofile: int | None = None) -> list[str]:
    argv = twistd_command("-n", "--pidfile=", "rpcd", *args)
    if nofile is not None:
        argv[1:3] = ["-c", _LIMITED_TWISTD, str(nofile)]
    return argv


# Shared daemons of this process, by (arguments, listeners): each with the
# Deferred of its start (firing once it listens).
_SHARED: dict[tuple[tuple[str, ...], int], tuple[Daemon, Deferred[list[Failure] | None]]] = {}


class _SharedProcess:
    """
    A shared daemon's process: started with L{subprocess.Popen}, not the
    reactor (trial removes the reactor's processes after each test class),
    its output read by a thread and handed to the reactor thread.
    """

    def __init__(self, argv: list[str], output: _Output, env: dict[str, str] | None = None) -> None:
        self.directory = tempfile.mkdtemp(prefix="rpcd-shared-")
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            cwd=self.directory, env={**environment(), **(env or {})}, preexec_fn=die_with_parent)
        self.pid = self.popen.pid
        self.output = output
        threading.Thread(target=self._read, name=f"rpcd shared daemon {self.pid}",
                         daemon=True).start()

    def _read(self) -> None:
        stream = self.popen.stdout
        assert stream is not None
        while chunk := stream.read1(65536):
            reactor.callFromThread(self.output.outReceived, chunk)
        code = self.popen.wait()
        reason = Failure(ProcessDone(0) if code == 0 else
                         ProcessTerminated(signal=-code) if code < 0 else ProcessTerminated(code))
        reactor.callFromThread(self.output.processEnded, reason)

    def signalProcess(self, signal_number: int) -> None:
        self.popen.send_signal(signal_number)

    def kill(self) -> None:
        """
        Stop the daemon (SIGTERM, then SIGKILL after 5 s) and remove its
        directory.
        """
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


class _SharedForkedDaemon:
    """
    A shared daemon forked by the fork server (L{tests.forking}), read by a
    thread as L{_SharedProcess} is: its output, then its exit status.
    """

    def __init__(self, argv: list[str], output: _Output) -> None:
        self.directory = tempfile.mkdtemp(prefix="rpcd-shared-")
        self.output = output
        self.exited = threading.Event()
        self.pid, self._out, self._status = fork_twistd(
            _SHARED_FORK_PATH[0], argv, environment(), self.directory)
        threading.Thread(target=self._read, name=f"rpcd shared daemon {self.pid}",
                         daemon=True).start()

    def _read(self) -> None:
        with open(self._out, "rb", buffering=0) as stream:
            while chunk := stream.read(65536):
                reactor.callFromThread(self.output.outReceived, chunk)
        with self._status:
            reason = exit_reason(read_line(self._status))
        self.exited.set()
        reactor.callFromThread(self.output.processEnded, reason)

    def signalProcess(self, signal_number: int) -> None:
        if not self.exited.is_set():
            os.kill(self.pid, signal_number)  # (shared daemons are signalled only here)

    def kill(self) -> None:
        """
        Stop the daemon (SIGTERM, then SIGKILL after 5 s) and remove its
        directory.
        """
        if not self.exited.is_set():
            self.signalProcess(signal.SIGTERM)
            if not self.exited.wait(5):
                self.signalProcess(signal.SIGKILL)
                self.exited.wait(5)
        shutil.rmtree(self.directory, ignore_errors=True)


# The fork server's socket, for the shared daemons (set before they start).
_SHARED_FORK_PATH: list[str] = []


def _start_shared(cls: type[Daemon], args: tuple[str, ...]) -> Daemon:
    output = _Output()
    process: _SharedProcess | _SharedForkedDaemon
    if _SHARED_FORK_PATH:
        process = _SharedForkedDaemon(["-n", "--pidfile=", "rpcd", *args], output)
    else:
        process = _SharedProcess(_daemon_argv(args), output)
    return cls(process, output)


# Other shared programs (see shared_program), by argv and environment.
_SHARED_PROGRAMS: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]],
                       tuple[_SharedProcess, _Output]] = {}


def shared_program(test: TestCase, argv: list[str],
                   env: dict[str, str] | None = None) -> tuple[_SharedProcess, _Output, int]:
    """
    A program (a server the tests call) shared, as L{Daemon.shared}, by the
    tests of this process that run the same C{argv}: started on the first
    request, in its own new directory, killed when the process exits.

    @param test: the test (its waits on the output end with it).
    @param argv: the program and its arguments.
    @param env: extra environment variables.
    @return: the process (C{pid}), its output so far and to come, and the
        output's length now (the test's mark: read from there on).
    """
    key = (tuple(argv), tuple(sorted((env or {}).items())))
    shared = _SHARED_PROGRAMS.get(key)
    if shared is None or not shared[1].running:
        output = _Output()
        shared = (_SharedProcess(argv, output, env), output)
        _SHARED_PROGRAMS[key] = shared
    test.addCleanup(shared[1].forget_waiters)
    return shared[0], shared[1], len(shared[1].output)


@atexit.register
def _stop_shared() -> None:
    for daemon, _ in _SHARED.values():
        daemon.process.kill()
    _SHARED.clear()
    for process, _ in _SHARED_PROGRAMS.values():
        process.kill()
    _SHARED_PROGRAMS.clear()


def shared_config(text: str) -> str:
    """
    Write a config file for L{Daemon.shared}, named by its content, so
    that tests writing the same config share one daemon.

    @param text: the TOML.
    @return: the file's absolute path (in a directory removed at exit).
    """
    global _CONFIGS
    if _CONFIGS is None:
        _CONFIGS = tempfile.mkdtemp(prefix="rpcd-shared-configs-")
        atexit.register(shutil.rmtree, _CONFIGS, ignore_errors=True)
    path = Path(_CONFIGS, hashlib.sha256(text.encode()).hexdigest()[:16] + ".toml")
    if not path.exists():
        path.write_text(text)
    return str(path)


_CONFIGS: str | None = None


def _forking() -> bool:
    """
    @return: whether daemons are forked from the fork server (not asked
        otherwise with C{RPCD_TESTS_EXEC=1}).
    """
    return os.environ.get("RPCD_TESTS_EXEC") != "1"


class Daemon:
    """
    A running C{twistd -n rpcd}.

    @ivar ports: the TCP ports it listens on, in the order of its endpoints
        (None for a Unix socket).
    @ivar port: the first of them.
    @ivar addresses: what each "listening" line names: C{HOST:PORT}, or a
        Unix socket's path.
    @ivar pid: its process id (C{twistd -n} does not fork).
    """

    def __init__(self, process: Any, output: _Output) -> None:
        self.process = process
        self.output_protocol = output
        self.pid: int = process.pid
        self.ports: list[int | None] = []
        self.addresses: list[str] = []

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def running(self) -> bool:
        """
        @return: whether the process has not exited yet.
        """
        return self.output_protocol.running

    @property
    def output(self) -> str:
        """
        @return: everything it has logged so far.
        """
        return self.output_protocol.text

    @classmethod
    async def start(cls, test: TestCase, *args: str, listeners: int = 1,
                    env: dict[str, str] | None = None, cwd: str | None = None,
                    nofile: int | None = None, timeout: float = 30.0,
                    fork: bool = True) -> Daemon:
        """
        Start the daemon and wait until every endpoint listens.

        It is forked from the tests' fork server (L{tests.forking}: the same
        C{twistd} entry point and arguments in a process of its own, without
        an interpreter start and a second of imports), unless C{fork} is
        false or C{RPCD_TESTS_EXEC=1} is set: then it is a new interpreter,
        as from a shell.

        @param test: the test; the daemon is stopped in its cleanup.
        @param args: arguments after C{twistd -n --pidfile= rpcd}.
        @param listeners: how many "listening" log lines to wait for (0: none;
            the daemon is returned as soon as it is started).
        @param env: extra environment variables.
        @param cwd: the working directory.
        @param nofile: lower the daemon's RLIMIT_NOFILE (open files) to this.
        @param timeout: seconds to wait for the "listening" lines.
        @param fork: fork it (the default) rather than start an interpreter.
        @return: the running daemon.
        """
        output = _Output()
        full_env = environment()
        full_env.update(env or {})
        process: Any
        if fork and _forking():
            process = await fork_daemon(output, ["-n", "--pidfile=", "rpcd", *args], full_env,
                                        cwd or temp_dir(test), nofile)
        else:
            process = reactor.spawnProcess(output, sys.executable, _daemon_argv(args, nofile),
                                           env=full_env, path=cwd or temp_dir(test))
        daemon = cls(process, output)
        test.addCleanup(daemon.stop)
        await daemon._listening(listeners, timeout)
        return daemon

    @classmethod
    async def shared(cls, test: TestCase, *args: str, listeners: int = 1,
                     timeout: float = 30.0) -> Daemon:
        """
        A daemon started with these arguments, shared by every test (of
        this test process) that asks for the same arguments: started on
        the first request, stopped when the process exits.

        For tests that only call it and read its log (from a mark they
        take: C{mark = len(daemon.output)}): they must leave it as they
        found it (no stop, no reload, no state another test reads), and
        pass alone and in any order.  It runs outside the reactor (a
        thread reads its output), so trial's check for a clean reactor
        between tests holds; it is killed if this process dies.

        @param test: the test (its waits on the log end with it).
        @param args: arguments after C{twistd -n --pidfile= rpcd}; write
            config files with L{shared_config}, so that equal configs are
            equal arguments.
        @param listeners: how many "listening" log lines to wait for.
        @param timeout: seconds to wait for them.
        @return: the running daemon; L{stop} refuses.
        """
        key = (args, listeners)
        entry = _SHARED.get(key)
        if entry is None or not entry[0].running:
            if _forking() and not _SHARED_FORK_PATH:
                _SHARED_FORK_PATH.append(await server_path())
            entry = _SHARED.get(key)
        if entry is None or not entry[0].running:
            daemon = _start_shared(cls, args)
            # Fires with None once it listens, or with [the failure]: never
            # fails itself, as several tests may wait on it.
            started: Deferred[list[Failure] | None] = Deferred.fromCoroutine(
                daemon._listening(listeners, timeout)).addCallbacks(lambda _: None, lambda f: [f])
            entry = _SHARED[key] = (daemon, started)
        daemon, started = entry
        outcome: Deferred[list[Failure] | None] = Deferred()
        started.addCallback(lambda result: (outcome.callback(result), result)[1])
        failed = await outcome
        if failed is not None:
            if _SHARED.get(key) is entry:
                del _SHARED[key]
                daemon.process.kill()
            failed[0].raiseException()
        test.addCleanup(daemon.output_protocol.forget_waiters)
        return daemon

    async def _listening(self, listeners: int, timeout: float) -> None:
        for n in range(listeners):
            found = await self.output_protocol.wait_for(
                lambda text, n=n: (lambda ms: ms[n] if len(ms) > n else None)(LISTENING.findall(text)),
                "the daemon listened", timeout)
            self.addresses.append(f"{found[0]}:{found[1]}" if found[1] else found[0])
            self.ports.append(int(found[1]) if found[1] else None)

    def wait_for_log(self, pattern: str, *, after: int = 0,
                     timeout: float | None = None) -> Deferred[re.Match[str]]:
        """
        Wait until the daemon logs a line matching a regular expression.

        @param pattern: the expression.
        @param after: only search the output from this offset on; take
            C{len(daemon.output)} before the action whose line you await.
        @param timeout: seconds before failing; None leaves it to the test's
            own timeout.
        @return: a Deferred firing with the match, or failing with
            C{AssertionError} (with the output) if the daemon exits first or
            the time is up.
        """
        regex = re.compile(pattern)
        return self.output_protocol.wait_for(lambda text: regex.search(text, after),
                                             f"a log line matching {pattern!r}", timeout)

    def count_log(self, pattern: str) -> int:
        """
        @param pattern: a regular expression.
        @return: how many times it matches the output so far.
        """
        return len(re.findall(pattern, self.output))

    async def stop(self, timeout: float = 15.0, *, at_once: bool = False,
                   drain_wait: float = 5.0) -> int | None:
        """
        Stop it with SIGTERM (it drains: see C{rpcd.drain}) and wait for it
        to exit; a second SIGTERM (stop at once) follows when it has not
        exited within C{drain_wait} (a test that left calls running need
        not wait for the whole C{shutdown_grace}), and SIGKILL when it has
        not exited within C{timeout}.

        @param at_once: send the second SIGTERM as soon as the daemon has
            logged that it drains.
        @param drain_wait: seconds before the second SIGTERM.
        @return: its exit code (None if it was killed by a signal).
        """
        if isinstance(self.process, (_SharedProcess, _SharedForkedDaemon)):
            raise AssertionError("a shared daemon is stopped only when the test process exits; "
                                 "use Daemon.start for a daemon the test stops")
        ended = self.output_protocol.ended
        if self.output_protocol.running:
            mark = len(self.output)
            try:
                self.process.signalProcess(signal.SIGTERM)
            except Exception:
                pass
            if at_once:
                await self.wait_for_log("draining: readiness NOT_SERVING", after=mark,
                                        timeout=timeout)
                drain_wait = 0
            for wait, then in ((drain_wait, signal.SIGTERM), (timeout, signal.SIGKILL)):
                waiting: Deferred[int | None] = Deferred()
                ended.addBoth(lambda r, w=waiting: (w.called or w.callback(r), r)[1])
                waiting.addTimeout(wait, reactor)
                try:
                    await waiting
                    break
                except Exception:
                    try:
                        self.process.signalProcess(then)
                    except Exception:
                        pass
        return await ended

    def rss_peak_kib(self) -> int:
        """
        @return: the daemon's peak resident memory (VmHWM) in KiB.
        """
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")

    def rss_kib(self) -> int:
        """
        @return: the daemon's resident memory now (VmRSS) in KiB.
        """
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def open_fds(self) -> int:
        """
        @return: how many file descriptors the daemon has open.
        """
        return len(os.listdir(f"/proc/{self.pid}/fd"))


async def run(test: TestCase, argv: list[str], *, stdin: bytes = b"",
              env: dict[str, str] | None = None, cwd: str | None = None) -> tuple[int | None, str, str]:
    """
    Run a program to completion.

    @param test: the test (for a temporary working directory).
    @param argv: the program and its arguments.
    @param stdin: bytes written to its standard input, which is then closed.
    @param env: extra environment variables.
    @param cwd: the working directory.
    @return: C{(exit code, stdout, stderr)}.
    """
    protocol = _Split()
    full_env = environment()
    full_env.update(env or {})
    reactor.spawnProcess(protocol, argv[0], argv, env=full_env, path=cwd or temp_dir(test))
    protocol.transport.write(stdin)
    protocol.transport.closeStdin()
    code = await protocol.ended
    return code, protocol.out.decode("utf-8", "replace"), protocol.err.decode("utf-8", "replace")


async def spawn_twistd(protocol: ProcessProtocol, args: list[str], cwd: str) -> Any:
    """
    Start C{twistd ARGS...}, forked from the tests' fork server as
    L{Daemon.start} does (a new interpreter with C{RPCD_TESTS_EXEC=1}).

    @param protocol: gets its output and its end, as from
        C{reactor.spawnProcess}.
    @return: its process (C{pid}, C{signalProcess}).
    """
    if not _forking():
        return reactor.spawnProcess(protocol, sys.executable, twistd_command(*args),
                                    env=environment(), path=cwd)
    return await fork_twistd_process(protocol, args, environment(), cwd)


async def run_twistd(test: TestCase, *args: str) -> tuple[int | None, str, str]:
    """
    Run C{twistd ARGS...} to completion, forked from the tests' fork server
    as L{Daemon.start} does (a new interpreter with C{RPCD_TESTS_EXEC=1}).

    @return: C{(exit code, stdout, stderr)}.
    """
    if not _forking():
        return await run(test, twistd_command(*args))
    protocol = _Split()
    await fork_twistd_process(protocol, list(args), environment(), temp_dir(test))
    code = await protocol.ended
    return code, protocol.out.decode("utf-8", "replace"), protocol.err.decode("utf-8", "replace")


def twistd_command(*args: str) -> list[str]:
    """
    @param args: twistd's arguments.
    @return: an argv running twistd with this Python.
    """
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args]


def rpcd_command(*args: str) -> list[str]:
    """
    @param args: the C{rpcd} command's arguments.
    @return: an argv running the C{rpcd} command from this checkout.
    """
    return [sys.executable, "-c", "from rpcd.cli import main; main()", *args]


class _Split(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        code = 0 if isinstance(value, ProcessDone) else getattr(value, "exitCode", None)
        if isinstance(value, ProcessTerminated) and value.signal is not None:
            code = -value.signal
        self.ended.callback(code)


def temp_dir(test: TestCase) -> str:
    """
    @param test: the test.
    @return: a new empty directory for it (absolute path).
    """
    path = Path(test.mktemp())
    path.mkdir(parents=True)
    return str(path.resolve())


def socket_path(test: TestCase, name: str = "rpcd.sock") -> str:
    """
    A path for a Unix socket, in a new directory removed after the test.

    Not under the test's own temporary directory: that sits wherever the
    checkout is, and a Unix socket path has a limit of 107 bytes, which a
    deep checkout (a CI runner's workspace) exceeds.

    @param test: the test.
    @param name: the socket's file name.
    @return: the absolute path (nothing exists there yet).
    """
    directory = tempfile.mkdtemp(prefix="rpcd-")
    test.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return str(Path(directory) / name)
