"""
Running the real daemon (C{twistd -n rpcd}) as a subprocess in end-to-end
tests, and running other real programs (the C{rpcd} command, Go programs).

    daemon = await Daemon.start(self, "--listen", "tcp:0:interface=127.0.0.1")
    client = await connect(f"tcp:127.0.0.1:{daemon.port}")

The daemon listens on port 0 and the test reads the real port from its log
line C{rpcd listening on HOST:PORT (...)}; nothing sleeps.  It is stopped
with SIGTERM in the test's cleanup.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"rpcd listening on (\S+):(\d+) \(")


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
        text = self.output.decode("utf-8", "replace")
        for waiter in list(self.waiters):
            match, d = waiter
            found = match(text)
            if found is not None:
                self.waiters.remove(waiter)
                d.callback(found)

    def wait_for(self, match: Callable[[str], Any], what: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiters.append((match, d))
        self._check()
        if not self.running and not d.called:
            self.waiters.remove((match, d))
            d.errback(AssertionError(f"process ended before {what}; output:\n{self.text}"))
        return d

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        value = reason.value
        self.exit_code = getattr(value, "exitCode", None)
        for match, d in self.waiters:
            d.errback(AssertionError(f"process ended (exit {self.exit_code}) while waiting; "
                                     f"output:\n{self.text}"))
        self.waiters = []
        self.ended.callback(self.exit_code)


def environment() -> dict[str, str]:
    """
    @return: the environment for subprocesses: this one, with the checkout on
        C{PYTHONPATH} so they import the code under test.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Daemon:
    """
    A running C{twistd -n rpcd}.

    @ivar ports: the TCP ports it listens on, in the order of its endpoints.
    @ivar port: the first of them.
    @ivar pid: its process id.
    """

    def __init__(self, process: Any, output: _Output) -> None:
        self.process = process
        self.output_protocol = output
        self.pid: int = process.pid
        self.ports: list[int] = []

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def output(self) -> str:
        """
        @return: everything it has logged so far.
        """
        return self.output_protocol.text

    @classmethod
    async def start(cls, test: TestCase, *args: str, listeners: int = 1,
                    env: dict[str, str] | None = None, cwd: str | None = None) -> Daemon:
        """
        Start the daemon and wait until every endpoint listens.

        @param test: the test; the daemon is stopped in its cleanup.
        @param args: arguments after C{twistd -n --pidfile= rpcd}.
        @param listeners: how many "listening" log lines to wait for.
        @param env: extra environment variables.
        @param cwd: the working directory.
        @return: the running daemon.
        """
        output = _Output()
        argv = twistd_command("-n", "--pidfile=", "rpcd", *args)
        full_env = environment()
        full_env.update(env or {})
        process = reactor.spawnProcess(output, sys.executable, argv, env=full_env,
                                       path=cwd or temp_dir(test))
        daemon = cls(process, output)
        test.addCleanup(daemon.stop)
        for n in range(listeners):
            found = await output.wait_for(
                lambda text, n=n: (lambda ms: ms[n] if len(ms) > n else None)(LISTENING.findall(text)),
                "the daemon listened")
            daemon.ports.append(int(found[1]))
        return daemon

    def wait_for_log(self, pattern: str) -> Deferred[re.Match[str]]:
        """
        Wait until the daemon logs a line matching a regular expression.

        @param pattern: the expression.
        @return: a Deferred firing with the match.
        """
        regex = re.compile(pattern)
        return self.output_protocol.wait_for(regex.search, f"a log line matching {pattern!r}")

    async def stop(self) -> int | None:
        """
        Stop it with SIGTERM and wait for it to exit.

        @return: its exit code.
        """
        if self.output_protocol.running:
            try:
                self.process.signalProcess(signal.SIGTERM)
            except Exception:
                pass
        return await self.output_protocol.ended

    def rss_peak_kib(self) -> int:
        """
        @return: the daemon's peak resident memory (VmHWM) in KiB.
        """
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")


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
