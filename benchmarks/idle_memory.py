#!/usr/bin/env python3
"""
Memory per idle connection and per pending long-poll, against the real
daemon (issue 14's targets: at most about 4 KB and 3 KB).

 1. Starts C{twistd -n rpcd} (the demo services; C{KVStoreService}) with
    the connection caps raised, and with C{server.workers} as given.
 2. Opens C{--idle} native connections (raw sockets: the preface, then
    nothing; each waits for the server's preface so the server holds it)
    and reports the daemon's RSS growth per connection.
 3. Closes them, then sends C{--watches} C{KVStoreService.Watch(3600)}
    calls over C{--watch-conns} connections (200) with rpcd's client and, once
    the server has registered them all (a C{Get} after them on each
    connection is answered), reports the RSS growth per pending call.

RSS is the whole process tree's (the supervisor and its workers) from
C{/proc/PID/status}.  RLIMIT_NOFILE is raised to its hard limit here (the
daemon inherits it)::

    python benchmarks/idle_memory.py                          # 10k idle, 100k Watch
    python benchmarks/idle_memory.py --workers 2
    python benchmarks/idle_memory.py --idle 2000 --watches 20000
    python benchmarks/idle_memory.py --idle 0                 # Watch alone, in a fresh daemon

The Watch figure after idle connections reuses the memory they freed (it
stays in the daemon's RSS), so it reads lower the more those connections
held: measure it with C{--idle 0} to compare Watch costs across changes.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

PREFACE = b"\x00RPCD\x01\x00\x00"


def tree_rss_kib(pid: int) -> int:
    """
    @param pid: the daemon (or the supervisor).
    @return: the resident memory of it and its children, in KiB.
    """
    from bench_workers import tree_pids
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def settle(pid: int, tries: int = 20) -> int:
    """
    @return: the RSS once two readings 0.2 s apart agree within 64 KiB
        (the daemon has finished what the last step started), or the last.
    """
    last = tree_rss_kib(pid)
    for _ in range(tries):
        time.sleep(0.2)
        now = tree_rss_kib(pid)
        if abs(now - last) <= 64:
            return now
        last = now
    return last


def start(workers: int, nofile: int, log: object, checkout: str) -> tuple[subprocess.Popen, int]:
    directory = tempfile.mkdtemp(prefix="rpcd-mem-")
    config = os.path.join(directory, "rpcd.toml")
    with open(config, "w") as f:
        f.write(f"""[server]
listen = ["tcp:0:interface=127.0.0.1"]
{f"workers = {workers}" if workers > 1 else ""}
backlog = 4096
[limits]
max_connections = {nofile}
max_connections_per_peer = {nofile}
idle_timeout = 0
keepalive_interval = 0
[services.KVStoreService]
options = {{ max_watch_seconds = 3600 }}
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                             "-n", "--pidfile=", "rpcd", "--config", config],
                            cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    ready = r"rpcd ready: \d+ workers serving" if workers > 1 else r"rpcd ready"
    for _ in range(1200):
        with open(log.name, encoding="utf-8", errors="replace") as f:  # type: ignore[attr-defined]
            text = f.read()
        found = re.search(r"rpcd listening on 127\.0\.0\.1:(\d+)", text)
        if found and re.search(ready, text):
            return proc, int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"the daemon did not start; see {log.name}")  # type: ignore[attr-defined]


def idle_connections(port: int, n: int) -> list[socket.socket]:
    sockets = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(PREFACE)
        got = b""
        while len(got) < 8:
            chunk = s.recv(8 - len(got))
            if not chunk:
                raise SystemExit(f"the server closed connection {len(sockets)}")
            got += chunk
        sockets.append(s)
    return sockets


def watches(port: int, conns: int, total: int) -> None:
    """Send the Watch calls and wait until the server holds them all."""
    from twisted.internet import defer
    from twisted.python.failure import Failure

    from rpcd.client import connect
    from rpcd.errors import NotFound

    async def run(reactor: object) -> None:
        clients = [await connect(f"tcp:127.0.0.1:{port}") for _ in range(conns)]
        per = total // conns
        failed: list[str] = []
        pending = [c.call("KVStoreService.Watch", 3600) for c in clients for _ in range(per)]
        for d in pending:
            d.addErrback(lambda f: failed.append(f.getErrorMessage()))
        await defer.DeferredList([c.call("KVStoreService.Get", "none").addErrback(lambda f: f.trap(NotFound))
                                  for c in clients], consumeErrors=True)
        if failed:
            print(f"{len(failed)} Watch calls failed, e.g.: {failed[0]}", flush=True)
        watches.done = True  # type: ignore[attr-defined]
        rss = settle(watches.pid)  # type: ignore[attr-defined]
        watches.rss = rss  # type: ignore[attr-defined]
        for c in clients:
            c.close()
    from twisted.internet import reactor
    result: list[object] = []

    def done(outcome: object) -> None:
        result.append(outcome)
        reactor.stop()  # type: ignore[attr-defined]
    reactor.callWhenRunning(  # type: ignore[attr-defined]
        lambda: defer.Deferred.fromCoroutine(run(reactor)).addBoth(done))
    reactor.run()  # type: ignore[attr-defined]
    if isinstance(result[0], Failure):
        result[0].raiseException()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idle", type=int, default=10_000)
    p.add_argument("--watches", type=int, default=100_000)
    p.add_argument("--watch-conns", type=int, default=200,
                   help="connections for the Watch calls (each holds at most 999: limits.max_calls_per_connection)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--checkout", default=REPO, help="the rpcd checkout the daemon runs from (%(default)s)")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.idle + 100 > hard:
        raise SystemExit(f"RLIMIT_NOFILE's hard limit {hard} is below --idle {args.idle} + 100")
    log = open(os.path.join(tempfile.gettempdir(), "rpcd-idle-memory.log"), "w")
    proc, port = start(args.workers, hard - 100, log, args.checkout)
    try:
        warm = idle_connections(port, 50)  # first connections pay for imports and caches
        if args.idle:
            base = settle(proc.pid)
            started = time.time()
            sockets = idle_connections(port, args.idle)
            after = settle(proc.pid)
            per_conn = (after - base) * 1024 / args.idle
            print(f"workers {args.workers}: {args.idle} idle native connections: RSS {base} -> {after} KiB: "
                  f"{per_conn:,.0f} bytes per connection (opened in {time.time() - started:.1f} s)", flush=True)
            for s in sockets:
                s.close()
        for s in warm:
            s.close()
        if not args.watches:
            return 0
        time.sleep(1.0)
        base = settle(proc.pid)
        watches.pid = proc.pid  # type: ignore[attr-defined]
        watches(port, args.watch_conns, args.watches)
        after = watches.rss  # type: ignore[attr-defined]
        per_watch = (after - base) * 1024 / args.watches
        print(f"workers {args.workers}: {args.watches} pending Watch over {args.watch_conns} connections: "
              f"RSS {base} -> {after} KiB: {per_watch:,.0f} bytes per pending call", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
