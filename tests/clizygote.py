"""
The fork server behind L{tests.cli.rpcd}: a process that has imported the
C{rpcd} command's modules once and forks a child per command, so that a
command costs a fork instead of an interpreter start and a second of imports.

    python -m tests.clizygote SOCKET_PATH

It prints C{ready} when it accepts on the Unix socket.  Each connection
carries one JSON request (C{argv}, C{env}, C{cwd}, and the files for the
standard streams) and is handled by a forked child, which sends back its pid,
then runs C{rpcd.cli.main()} exactly as C{python -c "from rpcd.cli import main;
main()" ARGS...} would (same C{sys.argv}, environment, working directory and
standard streams), and sends its exit status when it ends.

No reactor is installed here: each child installs its own, as a fresh
process does.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import traceback

# The modules the commands import (some only when run); importing them here
# is what makes a forked command cheap.  None installs a reactor.
_PRELOAD = (
    "rpcd.cli.main", "rpcd.cli.stream", "rpcd.cli.schema", "rpcd.cli.stubs",
    "rpcd.client", "rpcd.client.grpc", "rpcd.client.grpc_protos", "rpcd.client.gobclient",
    "rpcd.client.jsonclient", "rpcd.tls.certs", "rpcd.daemon.auth",
    "twisted.internet.task", "twisted.internet.endpoints", "twisted.internet.ssl",
)


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _receive(conn: socket.socket) -> dict[str, object]:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    request: dict[str, object] = json.loads(data)
    return request


def _command(conn: socket.socket) -> None:
    """
    Run one command in this (forked) process and report on C{conn}; never
    returns.
    """
    code = 1
    try:
        request = _receive(conn)
        conn.sendall(b"%d\n" % os.getpid())
        for fd, (name, mode) in enumerate((("stdin", os.O_RDONLY), ("stdout", os.O_WRONLY),
                                           ("stderr", os.O_WRONLY))):
            opened = os.open(str(request[name]), mode)
            os.dup2(opened, fd)
            os.close(opened)
        os.chdir(str(request["cwd"]))
        os.environ.clear()
        os.environ.update(request["env"])  # type: ignore[call-overload]
        sys.argv = ["-c", *request["argv"]]  # type: ignore[misc]
        try:
            from rpcd.cli import main
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        try:
            conn.sendall(b"%d\n" % code)
        finally:
            os._exit(code)


def _reap(signum: int, frame: object) -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def main(path: str) -> None:
    """
    Serve forked commands on the Unix socket at C{path} until killed.
    """
    _die_with_parent()
    for name in _PRELOAD:
        __import__(name)
    assert "twisted.internet.reactor" not in sys.modules, "a preloaded module installed a reactor"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    # Reap each child as it ends (rather than SIG_IGN, which discards their
    # CPU time: this way it counts in the test run's, as a subprocess's does).
    signal.signal(signal.SIGCHLD, _reap)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _die_with_parent()
            _command(conn)
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1])
