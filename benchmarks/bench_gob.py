#!/usr/bin/env python3
"""
Benchmark rpcd as a Go net/rpc server (gob and jsonrpc) beside Go's own
net/rpc server, in one run, with Go's own client.

The load client is the anchors' C{rpcload} (Go's standard C{net/rpc} client
only: C{rpc.Dial}, C{rpc.DialHTTP}, C{jsonrpc.Dial}) calling
C{Arith.Multiply{A, B}}; the reference server is the anchors' C{rpcserver}
(Go's C{net/rpc}).  Both are built from the anchors' Go sources (found at
C{../shared/anchors} beside the repository clone;
that folder is only read).  Each case starts a fresh server process, runs
C{rpcload -server-pid PID} (the server's CPU over the measured window, from
C{/proc/PID/stat}), and stops the server::

    python benchmarks/bench_gob.py                  # ~1 min: gob and json, 1x64 and 8x16, rpcd and Go
    python benchmarks/bench_gob.py --repeat 3       # median of 3 fresh runs per case
    python benchmarks/bench_gob.py --http           # also gob over HTTP CONNECT
    python benchmarks/bench_gob.py --pin split      # server on cpu1, client on cpu0

It prints calls/s, p50/p99 latency, server and client CPU per call, and the
ratios of rpcd to Go's server for the same protocol and client shape.  The
target is rpcd's server CPU per call at most Go's.  Logs and results go
under C{$RPCD_BENCH_WORK} (C{/tmp/rpcd-bench}).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_native import (  # noqa: E402  (helpers shared with the native benchmark)
    WORK,
    add_run_options,
    fmt,
    free_port,
    median_row,
    pin_prefix,
    run_client,
    start_daemon,
    stop,
    table,
    wait_port,
)

SHAPES = [(1, 64), (8, 16)]


def anchors_dir() -> str:
    """
    @return: the anchors folder: C{$RPCD_ANCHORS}, or C{../shared/anchors}
        beside the clone.
    """
    for path in (os.environ.get("RPCD_ANCHORS"),
                 os.path.join(os.path.dirname(REPO), "shared", "anchors")):
        if path and os.path.isdir(os.path.join(path, "go", "cmd", "rpcload")):
            return path
    sys.exit("cannot find the anchors' Go sources (set RPCD_ANCHORS=DIR)")


def build_anchors(bindir: str) -> None:
    """
    Build C{rpcload} and C{rpcserver} from the read-only anchors folder.
    """
    os.makedirs(bindir, exist_ok=True)
    env = {**os.environ, "GOFLAGS": "-buildvcs=false",
           "GOCACHE": os.environ.get("GOCACHE") or os.path.join(tempfile.gettempdir(), "rpcd-bench-gocache"),
           "GOPATH": os.environ.get("GOPATH") or os.path.join(tempfile.gettempdir(), "rpcd-bench-gopath")}
    subprocess.run(["go", "build", "-o", bindir + os.sep, "./cmd/rpcload", "./cmd/rpcserver"],
                   cwd=os.path.join(anchors_dir(), "go"), env=env, check=True)


@dataclasses.dataclass
class Case:
    server: str  # "rpcd" or "go"
    proto: str  # rpcload's -proto: gob, json, http
    conns: int
    workers: int

    @property
    def name(self) -> str:
        return f"{self.server}-{self.proto} <- go {self.proto} {self.conns}conn x{self.workers}"


def cases(http: bool) -> list[Case]:
    protos = ["gob", "json"] + (["http"] if http else [])
    return [Case(server, proto, conns, workers)
            for proto in protos for conns, workers in SHAPES for server in ("rpcd", "go")]


def start_server(case: Case, port: int, pin: str, bindir: str, log: Any) -> subprocess.Popen:
    if case.server == "rpcd":
        return start_daemon(port, pin, log)
    argv = pin_prefix(pin, "server") + [os.path.join(bindir, "rpcserver"), "-proto", case.proto,
                                        "-addr", f"127.0.0.1:{port}"]
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def run_case(case: Case, args: argparse.Namespace, bindir: str, logdir: str,
             idx: int) -> dict[str, Any]:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", case.name).strip("_")
    port = free_port()
    with open(os.path.join(logdir, f"{idx:02d}_{slug}.server.log"), "w") as log:
        proc = start_server(case, port, args.pin, bindir, log)
        try:
            if not wait_port(port, proc):
                return dict(case=case.name, error="the server did not start (see its log)")
            argv = pin_prefix(args.pin, "client") + [
                os.path.join(bindir, "rpcload"), "-proto", case.proto, "-addr", f"127.0.0.1:{port}",
                "-conns", str(case.conns), "-workers", str(case.workers),
                "-dur", f"{args.dur}s", "-warmup", f"{args.warmup}s", "-n", str(args.n),
                "-server-pid", str(proc.pid), "-case", case.name]
            limit = args.warmup + args.dur + 40
            log_path = os.path.join(logdir, f"{idx:02d}_{slug}.client.log")
            return run_client(argv, limit, log_path, case.name, proc, "the server")
        finally:
            stop(proc)


def ratios(rows: list[dict[str, Any]]) -> str:
    by_name = {r["case"]: r for r in rows if "rate" in r}
    out = ["rpcd / Go net/rpc, same protocol and client shape "
           "(calls/s: higher is better; server CPU per call: lower is better)"]
    for r in rows:
        if not r["case"].startswith("rpcd-") or "rate" not in r:
            continue
        go = by_name.get("go-" + r["case"][len("rpcd-"):])
        if go is None:
            continue
        rate = r["rate"] / go["rate"] if go.get("rate") else None
        cpu = (r["srv_us_per_call"] / go["srv_us_per_call"]
               if r.get("srv_us_per_call") and go.get("srv_us_per_call") else None)
        out.append(f"  {r['case']:<36}: calls/s {fmt(rate, 2)}x, srv CPU/call {fmt(cpu, 2)}x")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p)
    p.add_argument("--http", action="store_true", help="also gob over HTTP CONNECT")
    p.add_argument("--only", default=None, help="regex on case names")
    args = p.parse_args()

    selected = [c for c in cases(args.http) if not args.only or re.search(args.only, c.name)]
    bindir = os.path.join(WORK, "bin")
    build_anchors(bindir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(WORK, "results", f"gob-{stamp}")
    logdir = os.path.join(outdir, "logs")
    os.makedirs(logdir, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    print(f"rpcd {commit}; dur {args.dur}s warmup {args.warmup}s repeat {args.repeat} "
          f"pin {args.pin}; {len(selected)} cases; results in {outdir}", flush=True)
    rows, raw = [], []
    for i, case in enumerate(selected):
        runs = []
        for _ in range(args.repeat):
            r = run_case(case, args, bindir, logdir, i)
            runs.append(r)
            raw.append(r)
            msg = r.get("error") or f"{r['rate']:,.0f}/s srv {fmt(r.get('srv_us_per_call'), 1)} us/call"
            print(f"  [{i + 1}/{len(selected)}] {case.name}: {msg}", flush=True)
        rows.append(median_row(runs))
    text = table(rows, args.repeat) + "\n\n" + ratios(rows)
    print("\n" + text)
    with open(os.path.join(outdir, "table.txt"), "w") as f:
        f.write(f"# {stamp} rpcd {commit} dur {args.dur}s warmup {args.warmup}s repeat "
                f"{args.repeat} pin {args.pin}\n\n{text}\n")
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(dict(stamp=stamp, commit=commit, args=vars(args), rows=rows, runs=raw), f, indent=1)
    print(f"\nsaved {outdir}/table.txt and results.json")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
