"""
Running the C{rpcd} command in tests, cheaply.

    code, out, err = await rpcd(self, "call", endpoint, "Arith.Multiply", '{"A": 7, "B": 8}')

Each command is its own process, as from a shell, but forked from a server
(L{tests.clizygote}) that has already imported the command's modules: the
same C{main()}, argument parsing, output and exit status as
C{run(self, rpcd_command(...))}, without an interpreter start and a second
of imports per command.  A few tests per command keep the real entry point
(L{tests.daemon.rpcd_command} run as a subprocess).

The server is started on first use, outside the reactor, and killed when
the test process exits (or dies).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.daemon import _die_with_parent, environment, temp_dir

_server: tuple[subprocess.Popen[bytes], str, str, Deferred[bytes]] | None = None


async def _socket_path() -> str:
    global _server
    if _server is None or _server[0].poll() is not None:
        directory = tempfile.mkdtemp(prefix="rpcd-cli-")
        path = os.path.join(directory, "fork.sock")
        # Started from the reactor's thread, not a pool thread: PR_SET_PDEATHSIG
        # fires when the thread that started the process ends.
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.clizygote", path], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, cwd=directory, env=environment(), preexec_fn=_die_with_parent)
        assert process.stdout is not None
        _server = (process, directory, path, deferToThread(process.stdout.readline))
    process, _, path, ready = _server
    waiting: Deferred[bytes] = Deferred()
    ready.addBoth(lambda line: (waiting.callback(line), line)[1])
    line = await waiting
    if line != b"ready\n":
        process.kill()
        raise AssertionError(f"the rpcd command's fork server did not start: {line!r}")
    return path


@atexit.register
def _stop() -> None:
    if _server is not None:
        process, directory, _, _ = _server
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _call(path: str, request: dict[str, object], pids: list[int]) -> int | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.sendall(json.dumps(request).encode())
        conn.shutdown(socket.SHUT_WR)
        with conn.makefile("rb") as replies:
            pid = replies.readline()
            if not pid:
                return None
            pids.append(int(pid))
            status = replies.readline()
    return int(status) if status else None


async def rpcd(test: TestCase, *args: str, stdin: bytes = b"",
               cwd: str | None = None) -> tuple[int | None, str, str]:
    """
    Run the C{rpcd} command to completion.

    @param test: the test (for a temporary directory; the command is killed
        in its cleanup if it still runs).
    @param args: the command's arguments.
    @param stdin: bytes on its standard input (then end of file).
    @param cwd: the working directory (default: a new one).
    @return: C{(exit code, stdout, stderr)}; the code is None if the
        command died without reporting one.
    """
    path = await _socket_path()
    files = Path(temp_dir(test))
    (files / "stdin").write_bytes(stdin)
    for name in ("stdout", "stderr"):
        (files / name).write_bytes(b"")
    request = {"argv": list(args), "env": environment(), "cwd": cwd or temp_dir(test),
               **{name: str(files / name) for name in ("stdin", "stdout", "stderr")}}
    pids: list[int] = []
    done: list[bool] = []

    def kill() -> None:
        if pids and not done:
            try:
                os.kill(pids[0], signal.SIGKILL)
            except ProcessLookupError:
                pass
    test.addCleanup(kill)
    code = await deferToThread(_call, path, request, pids)
    done.append(True)
    return (code, (files / "stdout").read_text("utf-8", "replace"),
            (files / "stderr").read_text("utf-8", "replace"))
