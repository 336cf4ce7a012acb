"""
Soak test of the cluster client: mixed calls, streams, cancellations and
reconnects through L{rpcd.balancer} while daemons are stopped and started.

    python benchmarks/soak.py                     # 10 minutes, 3 daemons, 16 workers
    python benchmarks/soak.py --minutes 2 --workers 8 --chaos 15

It starts C{--daemons} real daemons (C{twistd -n rpcd}, from this checkout,
on 127.0.0.1 port 0) serving the L{Soak} service below, and one balancer
over them (health checks every 0.5 s, the default retry policy and retry
budget).  C{--workers} loops each run, over and over: a unary call (70%), a
server stream (10%), a client stream (5%), a bidirectional stream (5%), or
a slow call cancelled after 5-50 ms (10%).  Every C{--chaos} seconds one
daemon is stopped (SIGTERM and SIGKILL in turn) and a new one started
(on a new port: the balancer is given the new list, as a resolver would).

Each minute it prints the calls and streams that succeeded, those that
failed (by error), the cancellations, and the resident memory (RSS) of this
client and of each daemon; flat RSS is the target.  Failures are expected
only for streams that had received messages when their daemon went away
(those are not retried) and calls that were in flight on a killed daemon
past their retries.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator

from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rpcd.backend import HealthCheck  # noqa: E402
from rpcd.balancer import Balancer, connect_balanced  # noqa: E402
from rpcd.service import exposed  # noqa: E402

LISTENING = re.compile(r"rpcd listening on 127\.0\.0\.1:(\d+)")


class Soak:
    """The soak's service (loaded by the daemons from this file)."""

    @exposed
    def Echo(self, value: Any) -> Any:
        """Answer the value."""
        return value

    @exposed
    async def Slow(self, seconds: float) -> float:
        """Answer after a while (callers cancel it first)."""
        from twisted.internet import reactor
        await task.deferLater(reactor, seconds)
        return seconds

    @exposed
    async def Count(self, n: int) -> AsyncIterator[int]:
        """Stream 0..n-1."""
        for i in range(n):
            yield i

    @exposed
    async def Sum(self, values: AsyncIterator[int]) -> int:
        """Answer the sum of the streamed values."""
        return sum([v async for v in values])

    @exposed
    async def Chat(self, values: AsyncIterator[int]) -> AsyncIterator[int]:
        """Answer each value doubled."""
        async for value in values:
            yield value * 2


def rss_kib(pid: int | str = "self") -> int:
    """
    @return: a process's resident set size in KiB (0 if it is gone).
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class DaemonProcess(ProcessProtocol):
    """One C{twistd -n rpcd} serving L{Soak}."""

    def __init__(self) -> None:
        self.output = b""
        self.port: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.pid = 0

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-20000:]
        found = LISTENING.search(self.output.decode("utf-8", "replace"))
        if found and not self.port.called:
            self.port.callback(int(found.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.port.called:
            self.port.errback(RuntimeError("the daemon exited:\n" + self.output.decode()[-3000:]))
        self.ended.callback(None)


async def start_daemon(reactor: Any, workdir: Path) -> tuple[DaemonProcess, str]:
    """
    @return: a started daemon and its client endpoint string.
    """
    config = workdir / "soak.toml"
    if not config.exists():
        config.write_text('[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
                          '[services.Soak]\nclass = "soak:Soak"\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"),
                                         env.get("PYTHONPATH", "")])
    daemon = DaemonProcess()
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "rpcd", "--config", str(config)]
    transport = reactor.spawnProcess(daemon, sys.executable, argv, env=env, path=str(workdir))
    daemon.pid = transport.pid
    daemon.transport = transport
    port = await daemon.port
    return daemon, f"tcp:127.0.0.1:{port}"


class Stats:
    """What the workers did."""

    def __init__(self) -> None:
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.cancelled = 0
        self.restarts = 0


async def one_round(balancer: Balancer, reactor: Any, rng: random.Random, stats: Stats) -> None:
    """One operation of a worker."""
    roll = rng.random()
    kind = ("call" if roll < 0.70 else "server-stream" if roll < 0.80 else
            "client-stream" if roll < 0.85 else "bidi" if roll < 0.90 else "cancel")
    try:
        if kind == "call":
            value = rng.randrange(1 << 30)
            if await balancer.call("Soak.Echo", value, timeout=10) != value:
                raise AssertionError("wrong echo")
        elif kind == "server-stream":
            got = [m async for m in balancer.stream("Soak.Count", 20, timeout=10)]
            if got != list(range(20)):
                raise AssertionError("wrong stream")
        elif kind == "client-stream":
            stream = balancer.stream("Soak.Sum", timeout=10)
            for i in range(10):
                await stream.send(i)
            stream.close_send()
            if await stream.result() != 45:
                raise AssertionError("wrong sum")
        elif kind == "bidi":
            stream = balancer.stream("Soak.Chat", timeout=10)
            for i in range(5):
                await stream.send(i)
                if await stream.__anext__() != i * 2:
                    raise AssertionError("wrong chat")
            stream.close_send()
            await stream.result()
        else:
            d = balancer.call("Soak.Slow", 5.0, timeout=10)
            reactor.callLater(rng.uniform(0.005, 0.05), d.cancel)
            try:
                await d
            except CancelledError:
                stats.cancelled += 1
                return
        stats.ok[kind] += 1
    except Exception as e:
        stats.failed[f"{kind}: {type(e).__name__}"] += 1


async def worker(balancer: Balancer, reactor: Any, rng: random.Random, stats: Stats,
                 until: float) -> None:
    while reactor.seconds() < until:
        await one_round(balancer, reactor, rng, stats)


async def chaos(reactor: Any, balancer: Balancer, daemons: list[tuple[DaemonProcess, str]],
                workdir: Path, interval: float, until: float, stats: Stats,
                rng: random.Random) -> None:
    kill = False
    while reactor.seconds() + interval < until:
        await task.deferLater(reactor, interval)
        index = rng.randrange(len(daemons))
        victim, _ = daemons[index]
        victim.transport.signalProcess(signal.SIGKILL if kill else signal.SIGTERM)
        kill = not kill
        await victim.ended
        await task.deferLater(reactor, 1.0)
        daemons[index] = await start_daemon(reactor, workdir)
        balancer.set_endpoints([endpoint for _, endpoint in daemons])
        stats.restarts += 1


async def report(reactor: Any, daemons: list[tuple[DaemonProcess, str]], stats: Stats,
                 minutes: int, started: float) -> None:
    print(f"{'min':>3} {'calls':>8} {'streams':>8} {'cancels':>8} {'failed':>7} {'restarts':>8} "
          f"{'client RSS':>11}  daemons' RSS (KiB)", flush=True)
    for minute in range(1, minutes + 1):
        await task.deferLater(reactor, max(0.0, started + 60 * minute - reactor.seconds()))
        streams = sum(n for k, n in stats.ok.items() if k != "call")
        print(f"{minute:>3} {stats.ok['call']:>8} {streams:>8} {stats.cancelled:>8} "
              f"{sum(stats.failed.values()):>7} {stats.restarts:>8} {rss_kib():>8} KiB  "
              + " ".join(str(rss_kib(d.pid) or "down") for d, _ in daemons), flush=True)


async def main(reactor: Any, options: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="rpcd-soak-"))
    daemons = [await start_daemon(reactor, workdir) for _ in range(options.daemons)]
    rng = random.Random(options.seed)
    balancer = await connect_balanced([e for _, e in daemons], reactor=reactor,
                                      health=HealthCheck(interval=0.5, timeout=2.0),
                                      reconnect=lambda attempt: 0.5, default_timeout=10)
    stats = Stats()
    started = reactor.seconds()
    until = started + 60 * options.minutes
    wall = time.monotonic()
    try:
        await gatherResults([
            Deferred.fromCoroutine(report(reactor, daemons, stats, options.minutes, started)),
            Deferred.fromCoroutine(chaos(reactor, balancer, daemons, workdir, options.chaos,
                                         until, stats, rng)),
            *[Deferred.fromCoroutine(worker(balancer, reactor, random.Random(rng.random()),
                                            stats, until)) for _ in range(options.workers)],
        ])
    finally:
        await balancer.close()
        for daemon, _ in daemons:
            daemon.transport.signalProcess(signal.SIGTERM)
            await daemon.ended
    total = sum(stats.ok.values())
    print(f"\n{time.monotonic() - wall:.0f} s: {total} ok ({dict(stats.ok)}), "
          f"{stats.cancelled} cancelled, {sum(stats.failed.values())} failed, "
          f"{stats.restarts} daemon restarts; retry budget {balancer.budget.tokens if balancer.budget else '-'} tokens")
    for what, n in stats.failed.most_common():
        print(f"  failed {n:>6}  {what}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=10, help="how long to run (default 10)")
    parser.add_argument("--daemons", type=int, default=3, help="daemons to balance over (3)")
    parser.add_argument("--workers", type=int, default=16, help="concurrent worker loops (16)")
    parser.add_argument("--chaos", type=float, default=20.0,
                        help="seconds between daemon restarts (20)")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse()
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, arguments)))
