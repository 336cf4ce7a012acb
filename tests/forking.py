"""
Starting the C{rpcd} command and the daemon in tests by forking them from
a server that has imported their modules once (L{tests.forkserver}): each
is its own process, with the same entry point, arguments, environment and
working directory as a fresh interpreter would have, without the interpreter
start and the second of imports.

The server is started on first use, outside the reactor, and killed when the
test process exits or dies (its children with it).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.cache import cache_dir

ROOT = Path(__file__).resolve().parent.parent


def environment() -> dict[str, str]:
    """
    @return: the environment for subprocesses: this one, with the checkout on
        C{PYTHONPATH} so they import the code under test (and bytecode
        written to L{tests.cache} where C{PYTHONDONTWRITEBYTECODE} forbids
        writing it beside the sources).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        # The checkout stays free of __pycache__ as asked, yet the hundreds of
        # daemons and commands the tests start do not each compile rpcd again:
        # their bytecode goes to the tests' cache, outside the checkout.
        env.setdefault("PYTHONPYCACHEPREFIX", str(cache_dir("pycache")))
    return env


def die_with_parent() -> None:
    """
    Have the kernel send this process SIGKILL when its parent dies, however
    it dies (an interrupted or killed test run).  Run in a child before it
    execs (C{preexec_fn}).
    """
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_server: tuple[subprocess.Popen[bytes], str, str, Deferred[bytes]] | None = None


async def server_path() -> str:
    """
    @return: the fork server's socket, once it is ready (started here on
        first use).
    """
    global _server
    if _server is None or _server[0].poll() is not None:
        directory = tempfile.mkdtemp(prefix="rpcd-fork-")
        path = os.path.join(directory, "fork.sock")
        # Started from the reactor's thread, not a pool thread: PR_SET_PDEATHSIG
        # fires when the thread that started the process ends.
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.forkserver", path], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, cwd=directory, env=environment(), preexec_fn=die_with_parent)
        assert process.stdout is not None
        _server = (process, directory, path, deferToThread(process.stdout.readline))
    process, _, path, ready = _server
    waiting: Deferred[bytes] = Deferred()
    ready.addBoth(lambda line: (waiting.callback(line), line)[1])
    line = await waiting
    if line != b"ready\n":
        process.kill()
        raise AssertionError(f"the tests' fork server did not start: {line!r}")
    return path


@atexit.register
def _stop() -> None:
    if _server is not None:
        process, directory, _, _ = _server
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def send_request(path: str, request: dict[str, object], fds: list[int] = []) -> socket.socket:
    """
    Send one request to the fork server.

    @param path: its socket (L{server_path}).
    @param request: the request (see L{tests.forkserver}).
    @param fds: file descriptors to pass along.
    @return: the connection, its write side shut down, for the replies.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        data = json.dumps(request).encode()
        sent = socket.send_fds(conn, [data], fds)
        conn.sendall(data[sent:])
        conn.shutdown(socket.SHUT_WR)
    except BaseException:
        conn.close()
        raise
    return conn


def read_line(conn: socket.socket) -> bytes:
    """
    @return: the next line on a blocking connection (without its newline),
        or C{b""} at its end.
    """
    line = b""
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            return b""
        line += byte
    return line[:-1]


def exit_reason(line: bytes) -> Failure:
    """
    @param line: the status line the fork server sent (C{b""}: none, as it
        died).
    @return: the reason a L{ProcessProtocol} gets in C{processEnded}.
    """
    if not line:
        return Failure(ProcessTerminated())
    code = int(line)
    if code == 0:
        return Failure(ProcessDone(0))
    if code > 0:
        return Failure(ProcessTerminated(exitCode=code))
    return Failure(ProcessTerminated(signal=-code))


def fork_twistd(path: str, argv: list[str], env: dict[str, str], cwd: str,
                nofile: int | None = None) -> tuple[int, int, socket.socket]:
    """
    Fork C{twistd ARGV...} from the server.

    @param path: the server's socket (L{server_path}).
    @param argv: twistd's arguments.
    @param env: its whole environment.
    @param cwd: its working directory.
    @param nofile: its RLIMIT_NOFILE, if lowered.
    @return: its pid, the read end of its output (standard output and error;
        blocking), and the connection that will carry its exit status.
    """
    pid, (output,), conn = fork_twistd_outputs(path, argv, env, cwd, nofile, apart=False)
    return pid, output, conn


def fork_twistd_outputs(path: str, argv: list[str], env: dict[str, str], cwd: str,
                        nofile: int | None = None,
                        apart: bool = True) -> tuple[int, list[int], socket.socket]:
    """
    L{fork_twistd}, with standard error on a pipe of its own if C{apart}.

    @return: its pid, the read ends of its output pipes (standard output's,
        then standard error's if apart; blocking), and the connection that
        will carry its exit status.
    """
    pipes = [os.pipe() for _ in range(2 if apart else 1)]
    try:
        conn = send_request(path, {"kind": "twistd", "argv": argv, "env": env, "cwd": cwd,
                                   "nofile": nofile}, [write for _, write in pipes])
    except BaseException:
        for read, _ in pipes:
            os.close(read)
        raise
    finally:
        for _, write in pipes:
            os.close(write)
    pid = read_line(conn)
    if not pid:
        for read, _ in pipes:
            os.close(read)
        conn.close()
        raise AssertionError("the tests' fork server did not fork the daemon")
    return int(pid), [read for read, _ in pipes], conn


@implementer(IReadDescriptor)
class _Reader:
    """Reads a file descriptor in the reactor until its end."""

    def __init__(self, fd: int, received: Callable[[bytes], None],
                 ended: Callable[[], None]) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.received = received
        self.ended = ended

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "forked daemon"

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            return ConnectionDone()
        self.received(data)
        return None

    def connectionLost(self, reason: Failure) -> None:
        os.close(self.fd)
        self.ended()


class ForkedProcess:
    """
    A daemon forked by the fork server, its output and exit read in the
    reactor: for its L{twisted.internet.protocol.ProcessProtocol}, what
    C{reactor.spawnProcess} would have given (C{outReceived}, then
    C{processEnded} once the output has ended and the process has exited).

    @ivar pid: its process id.
    """

    def __init__(self, protocol: Any, pid: int, output: int, status: socket.socket,
                 errors: int | None = None) -> None:
        """
        @param output: its standard output's pipe (and standard error's,
            unless C{errors} is given).
        @param errors: its standard error's pipe, read into C{errReceived}.
        """
        self.protocol = protocol
        self.pid = pid
        self._status = b""
        self._exited = False
        self._open = 2 if errors is None else 3
        self._conn = status
        reactor.addReader(_Reader(output, protocol.outReceived, self._part_ended))
        if errors is not None:
            reactor.addReader(_Reader(errors, protocol.errReceived, self._part_ended))
        reactor.addReader(_Reader(os.dup(status.fileno()), self._status_received, self._exit))

    def _status_received(self, data: bytes) -> None:
        self._status += data

    def _exit(self) -> None:
        self._exited = True
        self._conn.close()
        self._part_ended()

    def _part_ended(self) -> None:
        self._open -= 1
        if self._open == 0:
            self.protocol.processEnded(exit_reason(self._status.strip()))

    def signalProcess(self, number: int | str) -> None:
        """
        @param number: a signal to send it, or its name without C{SIG}
            (C{"TERM"}), as Twisted's process transports take it.
        @raise ProcessExitedAlready: it has exited.
        """
        if self._exited:
            raise ProcessExitedAlready()
        os.kill(self.pid, getattr(signal, f"SIG{number}") if isinstance(number, str) else number)


async def fork_daemon(protocol: Any, argv: list[str], env: dict[str, str], cwd: str,
                      nofile: int | None = None) -> ForkedProcess:
    """
    Fork the daemon, read in the reactor.

    @param protocol: gets its output and its end.
    @param argv: twistd's arguments.
    @param env: its whole environment.
    @param cwd: its working directory.
    @param nofile: its RLIMIT_NOFILE, if lowered.
    @return: the process.
    """
    path = await server_path()
    pid, output, status = fork_twistd(path, argv, env, cwd, nofile)
    return ForkedProcess(protocol, pid, output, status)


async def fork_twistd_process(protocol: Any, argv: list[str], env: dict[str, str],
                              cwd: str) -> ForkedProcess:
    """
    Fork twistd with its standard output and error apart, read in the
    reactor (C{outReceived}, C{errReceived}, C{processEnded}), as
    C{reactor.spawnProcess} of C{twistd ARGV...} would.
    """
    path = await server_path()
    pid, (output, errors), status = fork_twistd_outputs(path, argv, env, cwd)
    return ForkedProcess(protocol, pid, output, status, errors)
