#!/usr/bin/env python3
"""
A rolling restart under load: three daemons behind C{connect_balanced}, a
steady load of calls from rpcd's Python client, and each daemon restarted
in turn with SIGTERM (it drains: see C{rpcd.drain}) and started again on
the same port.  Prints the calls made, the calls failed (the target is 0)
and the worst latency::

    python benchmarks/rolling_restart.py                  # 3 daemons, 32 callers
    python benchmarks/rolling_restart.py --callers 64 --rounds 2

Each caller runs C{Sleep.Sleep(0.05)} (a call that is in flight when the
signal comes) and C{Arith.Multiply} in turn, with no retry policy: only
rpcd's GOAWAY handling keeps calls from failing.

Beside them, C{--go-callers} Go C{net/rpc} (gob) callers (C{tests/go/gobroll},
built with C{go} when it is installed) make the same calls over plain gob
connections, one address after another.  Gob has no GOAWAY: a draining
daemon answers every call it has read and then closes the connection, so a
call that fails with C{rpc.ErrShutdown} or EOF was not run, and the Go caller
redials and sends it again (counted as retried, not failed).  Daemon logs go under
C{$RPCD_BENCH_WORK} (C{/tmp/rpcd-bench}) C{/rolling/}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rpcd.balancer import connect_balanced  # noqa: E402

WORK = Path(os.environ.get("RPCD_BENCH_WORK", "/tmp/rpcd-bench")) / "rolling"

CONFIG = """
[server]
listen = ["tcp:{port}:interface=127.0.0.1"]
shutdown_grace = 30

[services.Arith]
class = "rpcd.examples.arith:Arith"

[services.Sleep]
class = "tests.sleepservice:Sleep"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess:
    """One twistd rpcd process on a fixed port."""

    def __init__(self, index: int, port: int) -> None:
        self.index = index
        self.port = port
        self.config = WORK / f"rpcd{index}.toml"
        self.config.write_text(CONFIG.format(port=port))
        self.log = WORK / f"rpcd{index}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "rpcd", "--config", str(self.config)],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env, cwd=WORK)

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"daemon {self.index} did not listen on {self.port}")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


async def run(args: argparse.Namespace) -> None:
    from twisted.internet import reactor
    WORK.mkdir(parents=True, exist_ok=True)
    daemons = [DaemonProcess(i, free_port()) for i in range(args.daemons)]
    for d in daemons:
        d.start()
    for d in daemons:
        await deferToThread(d.wait_listening)
    balancer = await connect_balanced([f"tcp:127.0.0.1:{d.port}" for d in daemons],
                                      health=None, breaker=None)
    await balancer.when_ready(30, at_least=len(daemons))
    made = failed = 0
    worst = 0.0
    errors: dict[str, int] = {}
    running = True

    async def caller(n: int) -> None:
        nonlocal made, failed, worst
        i = 0
        while running:
            started = time.monotonic()
            try:
                if i % 2:
                    await balancer.call("Arith.Multiply", {"A": n, "B": i})
                else:
                    await balancer.call("Sleep.Sleep", 0.05)
            except Exception as e:
                failed += 1
                key = f"{type(e).__name__}: {e}"[:160]
                errors[key] = errors.get(key, 0) + 1
            made += 1
            worst = max(worst, time.monotonic() - started)
            i += 1

    go_load = start_go_callers(args.go_callers, [d.port for d in daemons])
    callers = [Deferred.fromCoroutine(caller(n)) for n in range(args.callers)]
    began = time.monotonic()
    await task.deferLater(reactor, args.settle, lambda: None)
    exits = []
    for _ in range(args.rounds):
        for d in daemons:
            exits.append(await deferToThread(d.stop))
            d.start()
            await deferToThread(d.wait_listening)
            await task.deferLater(reactor, args.settle, lambda: None)
    running = False
    await gatherResults(callers)
    elapsed = time.monotonic() - began
    await balancer.close()
    go_counts = await deferToThread(stop_go_callers, go_load)
    for d in daemons:
        d.stop()
    print(f"rolling restart: {args.daemons} daemons x {args.rounds} round(s), "
          f"{args.callers} callers, {elapsed:.1f} s")
    print(f"  calls made:   {made} ({made / elapsed:.0f}/s)")
    print(f"  calls failed: {failed}")
    print(f"  worst latency: {worst * 1000:.0f} ms")
    print(f"  daemon exit codes: {exits}")
    for key, count in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"    {count} x {key}")
    if go_counts is not None:
        print(f"  Go net/rpc gob callers ({args.go_callers}): {go_counts['ok']} calls ok, "
              f"{go_counts['failed']} failed, {go_counts['retried']} retried after "
              f"ErrShutdown/EOF (not run), {go_counts['connections']} connections")
        for key, count in sorted(go_counts["errors"].items(), key=lambda kv: -kv[1])[:5]:
            print(f"    {count} x {key[:160]}")


def start_go_callers(callers: int, ports: list[int]) -> subprocess.Popen[bytes] | None:
    """
    Build and start C{benchmarks/go/gobroll} with C{callers} goroutines.

    @return: the process (it runs until its stdin closes), or None without Go.
    """
    if callers <= 0:
        return None
    binary = WORK / "bin" / "gobroll"
    try:
        subprocess.run(["go", "build", "-o", str(binary), "main.go"], check=True,
                       cwd=ROOT / "tests" / "go" / "gobroll",
                       env=dict(os.environ, GOFLAGS="-buildvcs=false"))
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"  (no Go callers: cannot build tests/go/gobroll: {e})")
        return None
    addrs = ",".join(f"127.0.0.1:{port}" for port in ports)
    return subprocess.Popen([str(binary), "-addrs", addrs, "-callers", str(callers)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def stop_go_callers(process: subprocess.Popen[bytes] | None) -> dict | None:
    """
    Close the Go callers' stdin and read their counts.
    """
    if process is None:
        return None
    out, _ = process.communicate(timeout=120)
    return json.loads(out.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--go-callers", type=int, default=8,
                        help="Go net/rpc gob callers beside the Python ones (0: none)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds of load between restarts")
    args = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(run(args)))


if __name__ == "__main__":
    main()
