"""
Server-streaming throughput: rpcd beside gRPC (the anchors), in one run;
with C{--clients}, the client's CPU per message beside the daemon's, for a
server stream and a client stream, from the Twisted and the asyncio client.

    python benchmarks/bench_stream.py                    # rpcd, then the gRPC anchors
    python benchmarks/bench_stream.py --count 2000000 --window 1024 --no-anchor
    python benchmarks/bench_stream.py --clients --count 300000 --no-anchor

C{--clients} rows, each on a fresh daemon: C{server stream}, the client
takes C{StreamBench.Stream(count)}'s messages (C{async for} on both
clients; the Twisted client also through C{deliver_to}); C{client stream},
the client sends C{count} integers to C{StreamBench.Sum} (C{await
stream.send(i)} each), half-closes and awaits the sum.  The measured
window is the whole stream after a warmup stream of 10% of the messages;
the ratio is the client's CPU per message over the daemon's, in the same
run.

rpcd: the real daemon (C{twistd -n rpcd}) serves C{StreamBench.Stream(count)},
an async generator yielding the integers 0..count-1 (gRPC's anchor streams
C{Reply(result=i)}, the same content).  This process is the client: one
stream, its messages delivered to a consumer that only counts them, credit
handed back half a window at a time.  After a warmup of 10% of the
messages, the measured window runs to the end of the stream; the server's
CPU (utime + stime from /proc/PID/stat, all threads) over that window
divided by the messages in it is the "server CPU us/msg".

gRPC: C{../shared/anchors/run_all.sh --only stream} (or C{$RPCD_ANCHORS}) (its sync and aio
servers, a Python client, 100,000 messages), read from its results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's rpcd, as the daemon's PYTHONPATH has it
ANCHORS = Path(os.environ.get("RPCD_ANCHORS")
               or Path(__file__).resolve().parents[2] / "shared" / "anchors")
ANCHORS_WORK = Path(os.environ.get("ANCHORS_WORK", "/tmp/rpcd-anchors"))
TICKS = os.sysconf("SC_CLK_TCK")


class StreamBench:
    """The benchmark's service (loaded by the daemon from this file)."""

    from rpcd.service import exposed as _exposed

    @_exposed
    async def Stream(self, count: int) -> AsyncIterator[int]:
        """Yield 0..count-1."""
        for i in range(count):
            yield i

    @_exposed
    async def Sum(self, numbers: AsyncIterator[int]) -> int:
        """The sum of the client's messages."""
        total = 0
        async for n in numbers:
            total += n
        return total


def cpu_seconds(pid: int) -> float:
    """
    @return: a process's user + system CPU seconds so far.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start_daemon(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    config = Path(workdir) / "bench.toml"
    config.write_text('[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n\n'
                      '[services.StreamBench]\nclass = "bench_stream:StreamBench"\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"),
                                         env.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "rpcd", "--config", str(config)],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    output = b""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output += line
        found = re.search(rb"rpcd listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            return process, int(found.group(1))
    process.kill()
    raise SystemExit(f"the daemon did not start:\n{output.decode(errors='replace')}")


class _Counter:
    """A consumer that counts messages and notes the measured window."""

    def __init__(self, count: int, warmup: int, server_pid: int) -> None:
        self.count = count
        self.warmup = warmup
        self.server_pid = server_pid
        self.received = 0
        self.started: tuple[float, float, float] | None = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, message: Any) -> None:
        self.received += 1
        if self.received == self.warmup:
            self.started = (time.perf_counter(), cpu_seconds(self.server_pid),
                            resource.getrusage(resource.RUSAGE_SELF).ru_utime
                            + resource.getrusage(resource.RUSAGE_SELF).ru_stime)


def run_rpcd(count: int, window: int) -> dict[str, Any]:
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    from rpcd.client import connect

    with tempfile.TemporaryDirectory() as workdir:
        process, port = start_daemon(workdir)
        result: dict[str, Any] = {}
        try:
            async def go(reactor: Any) -> None:
                client = await connect(f"tcp:127.0.0.1:{port}", reactor=reactor)
                warm = client.stream("StreamBench.Stream", 20000, window=window)
                await warm.deliver_to(_Counter(20000, 0, process.pid))
                counter = _Counter(count, count // 10, process.pid)
                stream = client.stream("StreamBench.Stream", count, window=window)
                await stream.deliver_to(counter)
                end = (time.perf_counter(), cpu_seconds(process.pid),
                       resource.getrusage(resource.RUSAGE_SELF).ru_utime
                       + resource.getrusage(resource.RUSAGE_SELF).ru_stime)
                assert counter.started is not None and counter.received == count
                messages = count - counter.warmup
                secs = end[0] - counter.started[0]
                result.update(case=f"rpcd stream {count:,} msgs (window {window})",
                              messages=messages, secs=secs, rate=messages / secs,
                              server_cpu_s=end[1] - counter.started[1],
                              client_cpu_s=end[2] - counter.started[2])
                await client.close()
            react(lambda reactor: Deferred.fromCoroutine(go(reactor)), [])
        except SystemExit as e:
            if e.code not in (0, None):
                raise
        finally:
            process.terminate()
            process.wait(10)
    result["srv_us_per_msg"] = result["server_cpu_s"] / result["messages"] * 1e6
    result["cli_us_per_msg"] = result["client_cpu_s"] / result["messages"] * 1e6
    return result


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _twisted_server_stream(client: Any, count: int, window: int) -> int:
    received = 0
    async for _ in client.stream("StreamBench.Stream", count, window=window):
        received += 1
    return received


async def _twisted_deliver(client: Any, count: int, window: int) -> int:
    counter = _Counter(count, -1, 0)
    await client.stream("StreamBench.Stream", count, window=window).deliver_to(counter)
    return counter.received


async def _client_stream(client: Any, count: int, window: int) -> int:
    stream = client.stream("StreamBench.Sum", None, window=window)
    for i in range(count):
        await stream.send(i)
    result = stream.close_send()
    if result is not None:  # the asyncio client's is a coroutine
        await result
    total: int = await stream.result()
    if total != count * (count - 1) // 2:
        raise SystemExit(f"StreamBench.Sum answered {total}")
    return count


async def _aio_server_stream(client: Any, count: int, window: int) -> int:
    received = 0
    async for _ in client.stream("StreamBench.Stream", count, window=window):
        received += 1
    return received


CLIENT_CASES: dict[str, tuple[str, Any]] = {
    "server stream, Twisted client, async for": ("twisted", _twisted_server_stream),
    "server stream, Twisted client, deliver_to": ("twisted", _twisted_deliver),
    "server stream, asyncio client, async for": ("aio", _aio_server_stream),
    "client stream, Twisted client": ("twisted", _client_stream),
    "client stream, asyncio client": ("aio", _client_stream),
}


async def _measure(client: Any, run: Any, count: int, window: int,
                   pid: int) -> dict[str, Any]:
    await run(client, max(count // 10, 1000), window)  # warmup
    t0, srv0, cli0 = time.perf_counter(), cpu_seconds(pid), _self_cpu()
    messages = await run(client, count, window)
    secs = time.perf_counter() - t0
    server, mine = cpu_seconds(pid) - srv0, _self_cpu() - cli0
    if messages != count:
        raise SystemExit(f"{messages} messages of {count}")
    return dict(messages=count, secs=secs, rate=count / secs, server_cpu_s=server,
                client_cpu_s=mine, srv_us_per_msg=server / count * 1e6,
                cli_us_per_msg=mine / count * 1e6)


def run_client_case(name: str, count: int, window: int) -> dict[str, Any]:
    """
    One C{--clients} row on a fresh daemon.
    """
    kind, run = CLIENT_CASES[name]
    with tempfile.TemporaryDirectory() as workdir:
        process, port = start_daemon(workdir)
        result: dict[str, Any] = {}
        try:
            if kind == "aio":
                import asyncio

                from rpcd.client import aio

                async def go_aio() -> None:
                    client = await aio.connect(f"tcp:127.0.0.1:{port}")
                    result.update(await _measure(client, run, count, window, process.pid))
                    await client.close()
                asyncio.run(go_aio())
            else:
                from twisted.internet.defer import ensureDeferred
                from twisted.internet.task import react

                from rpcd.client import connect

                async def go(reactor: Any) -> None:
                    client = await connect(f"tcp:127.0.0.1:{port}", reactor=reactor)
                    result.update(await _measure(client, run, count, window, process.pid))
                    await client.close()
                try:
                    react(lambda reactor: ensureDeferred(go(reactor)), [])
                except SystemExit as e:
                    if e.code not in (0, None):
                        raise
        finally:
            process.terminate()
            process.wait(10)
    result["case"] = f"{name} ({count:,} msgs)"
    return result


def run_clients(count: int, window: int, repeat: int) -> None:
    """
    Print the C{--clients} table: each case C{repeat} times, alternating,
    each in a process of its own (a reactor runs once per process).
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CLIENT_CASES}
    for _ in range(repeat):
        for name in CLIENT_CASES:
            out = subprocess.run([sys.executable, __file__, "--one-case", name, "--count",
                                  str(count), "--window", str(window)],
                                 check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.splitlines()[-1]))
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; window {window}")
    print(f"{'case':48} | {'msg/s':>9} | {'srv CPU us/msg':>14} | {'cli CPU us/msg':>14} | "
          f"cli/srv (runs)")
    for name, rows in runs.items():
        rows.sort(key=lambda r: r["cli_us_per_msg"] / r["srv_us_per_msg"])
        mid = rows[(len(rows) - 1) // 2]
        ratios = ", ".join(f"{r['cli_us_per_msg'] / r['srv_us_per_msg']:.2f}" for r in rows)
        print(f"{name:48} | {mid['rate']:>9,.0f} | {mid['srv_us_per_msg']:>14.2f} | "
              f"{mid['cli_us_per_msg']:>14.2f} | {ratios}")


def run_anchor() -> list[dict[str, Any]]:
    before = set(os.listdir(ANCHORS_WORK / "results")) if (ANCHORS_WORK / "results").exists() else set()
    subprocess.run([str(ANCHORS / "run_all.sh"), "--only", "stream"], check=True,
                   stdout=subprocess.DEVNULL)
    new = sorted(set(os.listdir(ANCHORS_WORK / "results")) - before)
    if not new:
        raise SystemExit("the anchors wrote no results")
    results = json.loads((ANCHORS_WORK / "results" / new[-1] / "results.json").read_text())
    return [{"case": r["case"], "rate": r["rate"], "srv_us_per_msg": r["srv_us_per_call"],
             "cli_us_per_msg": r["cli_us_per_call"]} for r in results["runs"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="messages in the stream")
    parser.add_argument("--window", type=int, default=1024, help="the client's credit window")
    parser.add_argument("--no-anchor", action="store_true", help="skip the gRPC anchor")
    parser.add_argument("--clients", action="store_true",
                        help="client CPU per message, server and client streams, both clients")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each --clients case")
    parser.add_argument("--one-case", choices=sorted(CLIENT_CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        run_clients(args.count, args.window, args.repeat)
        return
    if args.one_case:
        print(json.dumps(run_client_case(args.one_case, args.count, args.window)))
        return
    rows = [run_rpcd(args.count, args.window)]
    if not args.no_anchor:
        rows += run_anchor()
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'case':40} | {'msg/s':>10} | {'srv CPU us/msg':>14} | {'cli CPU us/msg':>14}")
    print("-" * 41 + "+" + "-" * 12 + "+" + "-" * 16 + "+" + "-" * 15)
    for row in rows:
        print(f"{row['case']:40} | {row['rate']:>10,.0f} | {row['srv_us_per_msg']:>14.2f} | "
              f"{row['cli_us_per_msg']:>14.2f}")
    if len(rows) > 1:
        ours = rows[0]
        for other in rows[1:]:
            print(f"rpcd / {other['case']}: {ours['rate'] / other['rate']:.1f}x the messages/s, "
                  f"{other['srv_us_per_msg'] / ours['srv_us_per_msg']:.1f}x less server CPU "
                  f"per message")


if __name__ == "__main__":
    main()
