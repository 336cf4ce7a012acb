"""
A load client built on rpcd's own client library (L{rpcd.client.connect} on
Twisted, with C{--aio} L{rpcd.client.aio.connect} in C{asyncio.run}, or
with C{--blocking} L{rpcd.client.BlockingClient} from C{--threads} threads):
C{--inflight} coroutines share one connection and call C{Arith.Multiply}
over and over, checking every answer.

It prints, as its last stdout line, the same JSON result as the Go clients
(C{calls, secs, rate, p50_us, p99_us, errors, server_cpu_s, client_cpu_s}),
so that C{bench_native.py} puts it in the same table::

    python benchmarks/py_native_client.py --port 1234 --inflight 64 --server-pid PID
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from rpcd.client import connect  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """
    @param pid: a process id.
    @return: its utime+stime from C{/proc/PID/stat}, or None.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_ns: list[int], p: float) -> float | None:
    if not sorted_ns:
        return None
    i = min(len(sorted_ns) - 1, max(0, int(p * len(sorted_ns) + 0.999999) - 1))
    return sorted_ns[i] / 1e3


async def caller(client: Any, seed: int, state: dict[str, Any], lats: list[int],
                 args: argparse.Namespace) -> None:
    """
    One of C{--inflight} callers, for either client: call until told to stop,
    counting errors and the latencies of the measured window in C{lats}.
    """
    perf = time.perf_counter_ns
    i = 0
    while not state["stopping"]:
        measured = state["measuring"]
        if measured:
            state["started"] += 1
            if state["started"] > args.n:
                state["stopping"] = True
                return
        a = (seed + i) % 1000
        i += 1
        t0 = perf()
        try:
            result = await client.call("Arith.Multiply", {"A": a, "B": 7})
        except Exception as e:  # noqa: BLE001
            state["errors"] += 1
            print(f"call error: {e!r}", file=sys.stderr)
            if state["errors"] > 100:
                state["stopping"] = True
            continue
        if result != a * 7:
            state["errors"] += 1
        elif measured:
            lats.append(perf() - t0)


async def run(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    client = await connect(f"tcp:{args.host}:{args.port}", reactor=reactor)
    state = {"measuring": False, "stopping": False, "started": 0, "errors": 0}
    lats: list[int] = []


    workers = [defer.Deferred.fromCoroutine(caller(client, k * 17, state, lats, args))
               for k in range(args.inflight)]
    await task.deferLater(reactor, args.warmup, lambda: None)
    srv0 = cpu_seconds(args.server_pid) if args.server_pid else None
    cli0 = self_cpu()
    t0 = time.perf_counter()
    state["measuring"] = True
    await task.deferLater(reactor, args.dur, lambda: None)
    state["stopping"] = True
    secs = time.perf_counter() - t0
    srv1 = cpu_seconds(args.server_pid) if args.server_pid else None
    cli1 = self_cpu()
    await defer.gatherResults(workers)
    await client.close()
    lats.sort()
    return dict(case=args.case or f"rpcd native py 1x{args.inflight}", unit="calls",
                calls=len(lats), secs=secs, rate=len(lats) / secs,
                p50_us=percentile(lats, 0.50), p99_us=percentile(lats, 0.99),
                errors=state["errors"],
                server_cpu_s=None if srv0 is None or srv1 is None else srv1 - srv0,
                client_cpu_s=cli1 - cli0, conns=1, inflight=args.inflight, procs=1,
                client="rpcd.client (python)")


async def run_aio(args: argparse.Namespace) -> dict[str, Any]:
    """
    The same load as L{run}, from the asyncio client.
    """
    import asyncio

    from rpcd.client import aio
    client = await aio.connect(f"tcp:{args.host}:{args.port}")
    state = {"measuring": False, "stopping": False, "started": 0, "errors": 0}
    lats: list[int] = []


    workers = [asyncio.ensure_future(caller(client, k * 17, state, lats, args))
               for k in range(args.inflight)]
    await asyncio.sleep(args.warmup)
    srv0 = cpu_seconds(args.server_pid) if args.server_pid else None
    cli0 = self_cpu()
    t0 = time.perf_counter()
    state["measuring"] = True
    await asyncio.sleep(args.dur)
    state["stopping"] = True
    secs = time.perf_counter() - t0
    srv1 = cpu_seconds(args.server_pid) if args.server_pid else None
    cli1 = self_cpu()
    await asyncio.gather(*workers)
    await client.close()
    lats.sort()
    return dict(case=args.case or f"rpcd native py aio 1x{args.inflight}", unit="calls",
                calls=len(lats), secs=secs, rate=len(lats) / secs,
                p50_us=percentile(lats, 0.50), p99_us=percentile(lats, 0.99),
                errors=state["errors"],
                server_cpu_s=None if srv0 is None or srv1 is None else srv1 - srv0,
                client_cpu_s=cli1 - cli0, conns=1, inflight=args.inflight, procs=1,
                client="rpcd.client.aio (python)" + (" on uvloop" if args.uvloop else ""))


def run_blocking(args: argparse.Namespace) -> dict[str, Any]:
    """
    The same load from L{rpcd.client.BlockingClient}: C{--threads} caller
    threads share one client, each making sequential blocking calls.
    """
    import threading

    from rpcd.client import BlockingClient
    client = BlockingClient(f"tcp:{args.host}:{args.port}")
    state = {"measuring": False, "stopping": False, "started": 0, "errors": 0}
    lats: list[int] = []
    perf = time.perf_counter_ns
    lock = threading.Lock()

    def worker(seed: int) -> None:
        i = 0
        while not state["stopping"]:
            measured = state["measuring"]
            if measured:
                with lock:
                    state["started"] += 1
                    if state["started"] > args.n:
                        state["stopping"] = True
                        return
            a = (seed + i) % 1000
            i += 1
            t0 = perf()
            try:
                result = client.call("Arith.Multiply", {"A": a, "B": 7})
            except Exception as e:  # noqa: BLE001
                with lock:
                    state["errors"] += 1
                print(f"call error: {e!r}", file=sys.stderr)
                if state["errors"] > 100:
                    state["stopping"] = True
                continue
            if result != a * 7:
                with lock:
                    state["errors"] += 1
            elif measured:
                lats.append(perf() - t0)

    threads = [threading.Thread(target=worker, args=(k * 17,)) for k in range(args.threads)]
    for t in threads:
        t.start()
    time.sleep(args.warmup)
    srv0 = cpu_seconds(args.server_pid) if args.server_pid else None
    cli0 = self_cpu()
    t0 = time.perf_counter()
    state["measuring"] = True
    time.sleep(args.dur)
    state["stopping"] = True
    secs = time.perf_counter() - t0
    srv1 = cpu_seconds(args.server_pid) if args.server_pid else None
    cli1 = self_cpu()
    for t in threads:
        t.join()
    client.close()
    lats.sort()
    return dict(case=args.case or f"rpcd native py blocking {args.threads} threads",
                unit="calls", calls=len(lats), secs=secs, rate=len(lats) / secs,
                p50_us=percentile(lats, 0.50), p99_us=percentile(lats, 0.99),
                errors=state["errors"],
                server_cpu_s=None if srv0 is None or srv1 is None else srv1 - srv0,
                client_cpu_s=cli1 - cli0, conns=1, inflight=args.threads, procs=1,
                client="rpcd.client.BlockingClient (python)")


def report(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)
    p50, p99 = result["p50_us"] or -1, result["p99_us"] or -1
    print(f"{result['case']}: {result['calls']} calls in {result['secs']:.2f}s = "
          f"{result['rate']:.0f}/s p50 {p50:.0f}us p99 {p99:.0f}us errors {result['errors']}",
          file=sys.stderr)
    if result["errors"]:
        raise SystemExit(2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--dur", type=float, default=3.0, help="measured window, s")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured warmup, s")
    p.add_argument("--n", type=int, default=10_000_000, help="cap on measured calls")
    p.add_argument("--server-pid", type=int, default=0)
    p.add_argument("--case", default="")
    p.add_argument("--aio", action="store_true", help="the asyncio client, not Twisted's")
    p.add_argument("--blocking", action="store_true",
                   help="BlockingClient from --threads caller threads, not Twisted's")
    p.add_argument("--threads", type=int, default=1, help="caller threads for --blocking")
    p.add_argument("--uvloop", action="store_true",
                   help="with --aio: on uvloop's event loop, not asyncio's own")
    args = p.parse_args()
    if args.blocking:
        report(run_blocking(args))
        return 0
    if args.aio:
        import asyncio
        if args.uvloop:
            import uvloop  # an optional dependency: pip install uvloop
            report(uvloop.run(run_aio(args)))
        else:
            report(asyncio.run(run_aio(args)))
        return 0

    async def go(reactor: Any) -> None:
        report(await run(reactor, args))

    task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
