"""
Running the C{rpcd} command in tests, cheaply.

    code, out, err = await rpcd(self, "call", endpoint, "Arith.Multiply", '{"A": 7, "B": 8}')

Each command is its own process, as from a shell, but forked from a server
(L{tests.forking}) that has already imported the command's modules: the
same C{main()}, argument parsing, output and exit status as
C{run(self, rpcd_command(...))}, without an interpreter start and a second
of imports per command.  A few tests per command keep the real entry point
(L{tests.daemon.rpcd_command} run as a subprocess).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.daemon import environment, temp_dir
from tests.forking import read_line, send_request, server_path


def _call(path: str, request: dict[str, object], pids: list[int]) -> int | None:
    with send_request(path, {"kind": "command", **request}) as conn:
        pid = read_line(conn)
        if not pid:
            return None
        pids.append(int(pid))
        status = read_line(conn)
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
    path = await server_path()
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
