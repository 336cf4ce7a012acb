#!/usr/bin/env python3
"""
Benchmark C{server.workers}: the same load (the Go pipelined client,
C{nativeload -conns 4 -inflight 64}) against the daemon with 1, 2 and
C{auto} workers, in one run, and the ratio of calls/s to one worker's.

The server's CPU is the whole process tree's (the supervisor and its
workers: utime+stime from C{/proc/PID/stat} of each), sampled after the
warm-up and at the end of the measured window; each worker's share and
the connections it holds (its sockets among C{/proc/net/tcp}'s, halfway
through) are shown, and the supervisor's own CPU::

    python benchmarks/bench_workers.py                  # 3 cases, 3 s each
    python benchmarks/bench_workers.py --repeat 3       # median of 3 runs per case
    python benchmarks/bench_workers.py --conns 8 --inflight 16 --spread

The load client runs on the same cores, so the machine's ceiling is
C{cores / (server + client CPU per call)} calls/s; the table gives it per
row, and each rate as a fraction of it.  One worker with a core to itself
serves C{1 / server CPU per call}, so no number of workers can show more
than C{cores * s / (s + c)} times one worker's rate.  That is why the default
load is 4 connections of 64 calls in flight: the Go client's CPU per call
(c) is about a sixth of the server's (s) there (an 8 x 16 load costs it
twice as much per call: smaller batches per write and read, on both sides,
and then no run on two cores can reach 1.6x: 2s / (s + c) is about 1.5),
and 4 connections spread evenly over 2 workers.

It also prints the machine's load average at the start and the end (the
ratio means little when other work takes the cores).  Results go under
C{$RPCD_BENCH_WORK} (C{/tmp/rpcd-bench}) like C{bench_native.py}'s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_native import (  # noqa: E402
    REPO, WORK, add_run_options, build_go, derive, fmt, free_port, go_client, median_row, pin_prefix,
    start_daemon, stop, wait_port,
)

TICKS = os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    """
    @param pid: the supervisor (or the single daemon).
    @return: it and its children (the workers).
    """
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid] + [int(p) for p in f.read().split()]
    except OSError:
        return [pid]


def tree_cpu(pid: int) -> dict[int, float]:
    """
    @param pid: the supervisor (or the single daemon).
    @return: CPU seconds (user + system) used by it and by each of its
        children (the workers) now, by pid.
    """
    used = {}
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[p] = (int(fields[11]) + int(fields[12])) / TICKS
    return used


def connections_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    """
    @param port: the server's TCP port.
    @param pids: the processes to look in.
    @return: how many established connections to C{port} each holds (the
        sockets of C{/proc/net/tcp} found among its descriptors).
    """
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].split(":")[1], 16) == port:
                inodes.add(fields[9])
    counts = {}
    for p in pids:
        n = 0
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    target = os.readlink(f"/proc/{p}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    n += 1
        except OSError:
            pass
        counts[p] = n
    return counts


def spread_workers(pid: int) -> None:
    """
    Pin each worker to a CPU of its own (the Nth child to CPU N modulo
    the CPUs this process may use); the supervisor is left alone.
    """
    cpus = sorted(os.sched_getaffinity(0))
    for i, child in enumerate(tree_pids(pid)[1:]):
        try:
            os.sched_setaffinity(child, {cpus[i % len(cpus)]})
        except OSError:
            pass


def config_for(workers: str, logdir: str) -> str:
    """
    @param workers: C{server.workers} as written in TOML.
    @return: a config file: the embedded default with that many workers.
    """
    with open(os.path.join(REPO, "etc", "rpcd.toml"), encoding="utf-8") as f:
        text = f.read()
    text = text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
    path = os.path.join(logdir, f"workers_{re.sub('[^a-z0-9]', '', workers)}.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def wait_ready(log_path: str, proc: Any, timeout: float = 120.0) -> bool:
    """
    Wait for the supervisor's C{rpcd ready: N workers serving} line.
    """
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            if re.search(r"rpcd ready: \d+ workers serving", f.read()):
                return True
        time.sleep(0.1)
    return False


def run_case(workers: str, args: argparse.Namespace, logdir: str) -> dict[str, Any]:
    name = f"rpcd workers={workers.strip(chr(34))} <- go native {args.conns}conn x{args.inflight}"
    port = free_port()
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    log_path = os.path.join(logdir, f"{slug}.server.log")
    with open(log_path, "w") as log:
        proc = start_daemon(port, args.pin, log, config_for(workers, logdir))
        try:
            if not wait_port(port, proc):
                return dict(case=name, error="rpcd did not start (see its log)")
            if workers != "1" and not wait_ready(log_path, proc):
                return dict(case=name, error="the workers did not get ready (see the log)")
            if args.spread:
                spread_workers(proc.pid)
            argv = pin_prefix(args.pin, "client") + [
                a.format(port=port, addr=f"127.0.0.1:{port}", pid=proc.pid, dur=args.dur,
                         warmup=args.warmup, n=args.n, case=name)
                for a in go_client(args.conns, args.inflight)]
            samples: list[dict[int, float]] = []
            spread: dict[int, int] = {}

            def sample() -> None:
                time.sleep(args.warmup)
                samples.append(tree_cpu(proc.pid))
                time.sleep(args.dur / 2)
                spread.update(connections_by_pid(port, tree_pids(proc.pid)))
                time.sleep(args.dur / 2)
                samples.append(tree_cpu(proc.pid))
            sampler = threading.Thread(target=sample)
            sampler.start()
            cp = subprocess.run(argv, capture_output=True, text=True,
                                timeout=args.warmup + args.dur + 60, stdin=subprocess.DEVNULL)
            sampler.join()
            lines = [line for line in cp.stdout.splitlines() if line.startswith("{")]
            if not lines:
                return dict(case=name, error=f"client exit {cp.returncode}: {cp.stderr[-300:]}")
            res = json.loads(lines[-1])
            res["case"] = name
            before, after = samples
            used = {p: after[p] - before.get(p, 0.0) for p in after}
            res["server_cpu_s"] = sum(used.values())  # the whole tree, not just the supervisor
            if workers != "1":
                res["supervisor_cpu_s"] = used.pop(proc.pid, 0.0)
                res["workers_cpu_s"] = [used[p] for p in sorted(used)]
                res["workers_conns"] = [spread.get(p, 0) for p in sorted(used)]
            return derive(res)
        finally:
            stop(proc)


def machine_ceiling(row: dict[str, Any], cores: int) -> float | None:
    """
    @return: the calls/s this machine's cores allow at the row's CPU per
        call (server and load client together: they share the cores), or
        None when a figure is missing.
    """
    srv, cli = row.get("srv_us_per_call"), row.get("cli_us_per_call")
    if not srv or cli is None:
        return None
    return cores / ((srv + cli) * 1e-6)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(p)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--workers", default="1,2,auto", help="comma-separated server.workers values")
    p.add_argument("--spread", action="store_true",
                   help="pin worker N to CPU N (the supervisor and the client unpinned)")
    args = p.parse_args()
    build_go()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(WORK, "results", f"workers-{stamp}")
    logdir = os.path.join(outdir, "logs")
    os.makedirs(logdir, exist_ok=True)
    load_before = os.getloadavg()
    rows = []
    for workers in args.workers.split(","):
        value = '"auto"' if workers == "auto" else workers
        runs = [run_case(value, args, logdir) for _ in range(args.repeat)]
        for r in runs:
            print(f"  {r['case']}: " + (r.get("error") or f"{r['rate']:,.0f}/s"), flush=True)
        rows.append(median_row(runs))
    load_after = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    base = rows[0] if rows and "error" not in rows[0] else None
    lines = [f"# {stamp} cores {cores}, load average {load_before[0]:.1f} before / "
             f"{load_after[0]:.1f} after; dur {args.dur}s repeat {args.repeat} pin {args.pin}"
             f"{' spread' if args.spread else ''}", "",
             "| case | calls/s | vs 1 worker | ceiling | of ceiling | server CPU µs/call "
             "(all processes) | client CPU µs/call | server cores | per worker: conns, cores "
             "| supervisor cores |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error']} | | | | | | | | |")
            continue
        ratio = f"{r['rate'] / base['rate']:.2f}x" if base else "-"
        ceiling = machine_ceiling(r, cores)
        secs = r.get("secs") or 0
        per_worker = ", ".join(f"{n} {cpu / secs:.2f}" for n, cpu in
                               zip(r.get("workers_conns", []), r.get("workers_cpu_s", []))) if secs else ""
        supervisor = r.get("supervisor_cpu_s")
        lines.append(f"| {r['case']} | {r['rate']:,.0f} | {ratio} | {fmt(ceiling)} | "
                     f"{fmt(r['rate'] / ceiling * 100 if ceiling else None)}% | "
                     f"{fmt(r.get('srv_us_per_call'), 1)} | {fmt(r.get('cli_us_per_call'), 1)} | "
                     f"{fmt(r.get('srv_cores'), 2)} | {per_worker or '-'} | "
                     f"{fmt(supervisor / secs if supervisor is not None and secs else None, 3)} |")
    ceiling = machine_ceiling(base, cores) if base else None
    if base and ceiling:
        srv, cli = base["srv_us_per_call"], base["cli_us_per_call"]
        lines += ["", f"ceiling: {cores} cores / (server + client CPU per call) of the same row: "
                  f"the load client shares the cores.  At one worker's CPU per call ({srv:.1f} + "
                  f"{cli:.1f} µs) this machine serves at most {ceiling:,.0f} calls/s, "
                  f"{ceiling / base['rate']:.2f}x the rate one worker reached here, and "
                  f"{ceiling * srv * 1e-6:.2f}x what one worker with a core to itself would "
                  f"(1 / {srv:.1f} µs): the best 'vs 1 worker' any number of workers can show."]
    text = "\n".join(lines)
    print("\n" + text)
    with open(os.path.join(outdir, "table.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(dict(stamp=stamp, rows=rows, load=[load_before, load_after]), f, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
