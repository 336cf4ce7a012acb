#!/usr/bin/env python3
"""
Benchmark C{server.workers}: the same load (the Go pipelined client,
C{nativeload -conns 8 -inflight 16}) against the daemon with 1, 2 and
C{auto} workers, in one run, and the ratio of calls/s to one worker's.

The server's CPU is the whole process tree's (the supervisor and its
workers: utime+stime from C{/proc/PID/stat} of each), sampled after the
warm-up and at the end of the measured window::

    python benchmarks/bench_workers.py                  # 3 cases, 3 s each
    python benchmarks/bench_workers.py --repeat 3       # median of 3 runs per case
    python benchmarks/bench_workers.py --conns 16 --inflight 8

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
    REPO, WORK, add_run_options, build_go, derive, fmt, free_port, go_client, median_row, start_daemon,
    stop, wait_port,
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


def tree_cpu(pid: int) -> float:
    """
    @param pid: the supervisor (or the single daemon).
    @return: CPU seconds (user + system) used by it and its children now.
    """
    total = 0.0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


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
            argv = [a.format(port=port, addr=f"127.0.0.1:{port}", pid=proc.pid, dur=args.dur,
                             warmup=args.warmup, n=args.n, case=name)
                    for a in go_client(args.conns, args.inflight)]
            samples: list[float] = []

            def sample() -> None:
                time.sleep(args.warmup)
                samples.append(tree_cpu(proc.pid))
                time.sleep(args.dur)
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
            res["server_cpu_s"] = samples[1] - samples[0]  # the whole tree, not just the supervisor
            return derive(res)
        finally:
            stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(p)
    p.add_argument("--conns", type=int, default=8)
    p.add_argument("--inflight", type=int, default=16)
    p.add_argument("--workers", default="1,2,auto", help="comma-separated server.workers values")
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
    base = rows[0].get("rate") if rows and "error" not in rows[0] else None
    lines = [f"# {stamp} cores {len(os.sched_getaffinity(0))}, load average {load_before[0]:.1f} "
             f"before / {load_after[0]:.1f} after; dur {args.dur}s repeat {args.repeat}",
             "", "| case | calls/s | vs 1 worker | server CPU µs/call (all processes) | server cores |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | error: {r['error']} | | | |")
            continue
        ratio = f"{r['rate'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['case']} | {r['rate']:,.0f} | {ratio} | {fmt(r.get('srv_us_per_call'), 1)} | "
                     f"{fmt(r.get('srv_cores'), 2)} |")
    text = "\n".join(lines)
    print("\n" + text)
    with open(os.path.join(outdir, "table.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(dict(stamp=stamp, rows=rows, load=[load_before, load_after]), f, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
