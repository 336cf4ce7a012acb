"""
The fork server behind L{tests.forking}: a process that has imported the
modules of the C{rpcd} command and of the daemon once, and forks a child
per request, so that running either costs a fork instead of an interpreter
start and a second of imports.

    python -m tests.forkserver SOCKET_PATH

It prints C{ready} when it accepts on the Unix socket.  Each connection
carries one request, JSON read until the client shuts down its side, with at
most one file descriptor passed along with its first bytes (C{SCM_RIGHTS}):

  - C{{"kind": "command", "argv", "env", "cwd", "stdin", "stdout",
    "stderr"}} (the standard streams are files' paths): the child sends back
    its pid, runs C{rpcd.cli.main()} exactly as C{python -c "from rpcd.cli
    import main; main()" ARGS...} would, and sends its exit status;
  - C{{"kind": "twistd", "argv", "env", "cwd", "nofile"}} with the write end
    of a pipe (or two: standard output's, then standard error's): the child
    runs twistd as C{python -c "from twisted.scripts.twistd import run; run()"
    ARGS...} would (same C{sys.argv}, C{sys.path}, environment, working
    directory, a fresh reactor), its standard output and error on the
    pipe(s) and no other file descriptor open, with
    RLIMIT_NOFILE lowered to C{nofile} if given.  The server sends the
    child's pid, then, once it has exited, its status: the exit code, or
    minus the signal that killed it.

No reactor is installed here: each child installs its own, as a fresh
process does.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import resource
import signal
import socket
import sys
import traceback
import types

# What the commands and the daemon import (some only once they serve or
# run): every module of rpcd, and the Twisted ones below.  Importing them
# here is what makes a forked child cheap; none installs a reactor.
_PRELOAD = (
    "twisted.internet.task", "twisted.internet.endpoints", "twisted.internet.ssl",
    "twisted.scripts.twistd", "twisted.plugins.rpcd_plugin", "twisted.plugins.rpcd_endpoints",
)


def _preload() -> None:
    import pkgutil

    import rpcd
    for name in _PRELOAD:
        __import__(name)
    for module in pkgutil.walk_packages(rpcd.__path__, "rpcd."):
        __import__(module.name)


# The children whose status this server reports (twistd), by pid.
_REPORTED: dict[int, socket.socket] = {}


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _receive(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 65536, 2)
    while chunk := conn.recv(65536):
        data += chunk
    request: dict[str, object] = json.loads(data)
    return request, fds


def _close_inherited(keep: int = -1) -> None:
    """
    Close every file descriptor above the standard streams (but C{keep}):
    what the server holds for other children is not this child's.
    """
    for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass  # (the directory listing's own descriptor)


def _command(conn: socket.socket, request: dict[str, object]) -> None:
    """
    Run one command in this (forked) process and report on C{conn}; never
    returns.
    """
    code = 1
    try:
        conn.sendall(b"%d\n" % os.getpid())
        for fd, (name, mode) in enumerate((("stdin", os.O_RDONLY), ("stdout", os.O_WRONLY),
                                           ("stderr", os.O_WRONLY))):
            opened = os.open(str(request[name]), mode)
            os.dup2(opened, fd)
            os.close(opened)
        _close_inherited(keep=conn.fileno())
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


def _fresh_path(env: dict[str, str]) -> list[str]:
    """
    @return: C{sys.path} as C{python -c} started with C{env} would have it:
        the working directory, C{PYTHONPATH}'s entries, then the rest of
        this interpreter's path (the standard library and site-packages).
    """
    ours = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    theirs = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    rest = [p for p in sys.path[1:] if p not in ours]
    return ["", *theirs, *rest]


def _twistd(request: dict[str, object], outputs: list[int]) -> None:
    """
    Become the daemon: runs in the forked child and ends by exiting as the
    daemon's process would (it never returns to the server's loop).

    @param outputs: standard output's pipe, and standard error's if apart.
    """
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(outputs[0], 1)
    os.dup2(outputs[-1], 2)
    _close_inherited()
    nofile = request.get("nofile")
    if isinstance(nofile, int):
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    env: dict[str, str] = request["env"]  # type: ignore[assignment]
    os.chdir(str(request["cwd"]))
    sys.path[:] = _fresh_path(env)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["-c", *request["argv"]]  # type: ignore[misc]
    main = types.ModuleType("__main__")  # as C{-c} has it, not this server's
    main.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    from twisted.scripts.twistd import run
    run()
    sys.exit(0)


def _status(status: int) -> int:
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


def _reap(signum: int, frame: object) -> None:
    try:
        while True:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = _REPORTED.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(b"%d\n" % _status(status))
                except OSError:
                    pass  # the test process stopped listening
                conn.close()
    except ChildProcessError:
        pass


def main(path: str) -> None:
    """
    Serve forked children on the Unix socket at C{path} until killed.
    """
    _die_with_parent()
    _preload()
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
        try:
            request, fds = _receive(conn)
        except (OSError, ValueError):
            conn.close()
            continue
        # SIGCHLD waits until the child is in _REPORTED, however soon it ends.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        pid = os.fork()
        if pid == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            _die_with_parent()
            if request.get("kind") == "twistd":
                conn.close()
                _twistd(request, fds)
            else:
                _command(conn, request)
        for fd in fds:
            os.close(fd)
        if request.get("kind") == "twistd":
            conn.sendall(b"%d\n" % pid)
            _REPORTED[pid] = conn
        else:
            conn.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


if __name__ == "__main__":
    main(sys.argv[1])
