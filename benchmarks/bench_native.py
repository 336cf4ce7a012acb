#!/usr/bin/env python3
"""
Benchmark rpcd's native protocol against the RPC anchors, in one run.

Each rpcd case starts the real daemon (C{twistd -n --pidfile= rpcd --listen
tcp:PORT:interface=127.0.0.1}) as its own process, drives it with a load
client in another process, reads the server's CPU from C{/proc/PID/stat}
over the measured window, and stops it.  The clients are the Go pipelined
client C{benchmarks/go/nativeload} (sequential, 1 connection x 64 in flight,
4 x 16, 8 x 16) and, for reference, rpcd's own Python client library with
64 in flight.  Then it runs a subset of the anchors harness
(C{../shared/anchors/run_all.sh}: Go net/rpc gob, Twisted AMP, raw Twisted
echo, gRPC) with the same duration, repeat count and pinning, and prints one
table plus the ratios of rpcd to the anchors::

    python benchmarks/bench_native.py                     # ~3 min: rpcd + anchors
    python benchmarks/bench_native.py --repeat 3          # median of 3 fresh runs per case
    python benchmarks/bench_native.py --no-anchors        # rpcd rows only
    python benchmarks/bench_native.py --only '1x64'       # a subset of rpcd cases (regex)
    python benchmarks/bench_native.py --config my.toml    # every rpcd case with this config

The C{1conn x64 metrics...} rows run the daemon with observability on
(C{[http] metrics = true}; then the access log logging every call, then 1% of
them and the slow ones): set beside the row of the same client with nothing
configured, they give its cost per call.

Everything it builds or writes goes under C{$RPCD_BENCH_WORK}
(C{/tmp/rpcd-bench}): the Go binary and C{results/<stamp>/} with the table,
C{results.json}, and each server's and client's log.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORK = os.environ.get("RPCD_BENCH_WORK", "/tmp/rpcd-bench")
DEFAULT_ANCHORS = os.environ.get("RPCD_ANCHORS", os.path.join(os.path.dirname(REPO), "shared", "anchors"))

# The anchors each rpcd row is compared with (case names of the anchors'
# bench.py), and the regex that selects them.
ANCHOR_CASES = [
    "go-gob <- go gob seq",
    "go-gob <- go gob 1conn x64",
    "go-gob <- go gob 8conn x16",
    "amp <- go amp x64",
    "tw-echo <- go x64",
    "tw-echo <- go 4conn x64",
    "grpc-aio <- py aio x64",
]
ANCHOR_REGEX = "|".join("^" + re.escape(c) + "$" for c in ANCHOR_CASES)

# rpcd row -> the anchors it is set against (same client shape where one exists).
COMPARE = {
    "rpcd <- go native seq": ["go-gob <- go gob seq"],
    "rpcd <- go native 1conn x64": ["go-gob <- go gob 1conn x64", "amp <- go amp x64",
                                    "tw-echo <- go x64", "grpc-aio <- py aio x64"],
    "rpcd <- go native 1conn x64 metrics": ["tw-echo <- go x64"],
    "rpcd <- go native 1conn x64 metrics+log 1%": ["tw-echo <- go x64"],
    "rpcd <- go native 4conn x16": ["tw-echo <- go 4conn x64"],
    "rpcd <- go native 8conn x16": ["go-gob <- go gob 8conn x16"],
    "rpcd <- py rpcd.client x64": ["amp <- go amp x64"],
}


@dataclasses.dataclass
class Case:
    name: str
    client: list[str]  # argv with {port} {addr} {pid} {dur} {warmup} {n} {case}
    timeout: float = 40.0
    observed: str = ""  # "" or a key of OBSERVED: serve with that config


# Observability configs for the "observed" rows: TOML added to the embedded
# default config (etc/rpcd.toml) after turning on [http] metrics.
OBSERVED = {
    "metrics": "",
    "metrics+log": '\n[[interceptors]]\nuse = "access_log"\n',
    "metrics+log 1%": '\n[[interceptors]]\nuse = "access_log"\n'
                      'options = { sample = 0.01, slow_ms = 100 }\n',
}


def observed_config(which: str) -> str:
    """
    @param which: a key of L{OBSERVED}.
    @return: the embedded default config with C{[http] metrics} on and that
        row's interceptors.
    """
    with open(os.path.join(REPO, "etc", "rpcd.toml"), encoding="utf-8") as f:
        text = f.read()
    if "#   metrics = true" not in text:
        raise SystemExit("etc/rpcd.toml has no '#   metrics = true' line to turn on")
    return text.replace("#   metrics = true", "metrics = true", 1) + OBSERVED[which]


def go_client(conns: int, inflight: int, *extra: str) -> list[str]:
    return [os.path.join(WORK, "bin", "nativeload"), "-addr", "{addr}", "-conns", str(conns),
            "-inflight", str(inflight), "-dur", "{dur}s", "-warmup", "{warmup}s", "-n", "{n}",
            "-server-pid", "{pid}", "-case", "{case}", *extra]


def cases() -> list[Case]:
    return [
        Case("rpcd <- go native seq", go_client(1, 1)),
        Case("rpcd <- go native 1conn x64", go_client(1, 64)),
        *(Case(f"rpcd <- go native 1conn x64 {which}", go_client(1, 64), observed=which)
          for which in OBSERVED),
        Case("rpcd <- go native 1conn x64 flush-each", go_client(1, 64, "-flush-each")),
        Case("rpcd <- go native 4conn x16", go_client(4, 16)),
        Case("rpcd <- go native 8conn x16", go_client(8, 16)),
        Case("rpcd <- py rpcd.client x64",
             [sys.executable, os.path.join(HERE, "py_native_client.py"), "--port", "{port}",
              "--inflight", "64", "--dur", "{dur}", "--warmup", "{warmup}", "--n", "{n}",
              "--server-pid", "{pid}", "--case", "{case}"]),
        Case("rpcd <- py rpcd.client.aio x64",
             [sys.executable, os.path.join(HERE, "py_native_client.py"), "--aio", "--port",
              "{port}", "--inflight", "64", "--dur", "{dur}", "--warmup", "{warmup}", "--n",
              "{n}", "--server-pid", "{pid}", "--case", "{case}"]),
        Case("rpcd <- py rpcd.client.aio x64 uvloop",
             [sys.executable, os.path.join(HERE, "py_native_client.py"), "--aio", "--uvloop",
              "--port", "{port}", "--inflight", "64", "--dur", "{dur}", "--warmup", "{warmup}",
              "--n", "{n}", "--server-pid", "{pid}", "--case", "{case}"]),
        *(Case(f"rpcd <- py rpcd.client.BlockingClient {threads} thread{'s' * (threads > 1)}",
               [sys.executable, os.path.join(HERE, "py_native_client.py"), "--blocking",
                "--threads", str(threads), "--port", "{port}", "--dur", "{dur}", "--warmup",
                "{warmup}", "--n", "{n}", "--server-pid", "{pid}", "--case", "{case}"])
          for threads in (1, 8)),
    ]


def build_go() -> None:
    os.makedirs(os.path.join(WORK, "bin"), exist_ok=True)
    subprocess.run(["go", "build", "-o", os.path.join(WORK, "bin", "nativeload"), "./nativeload"],
                   cwd=os.path.join(HERE, "go"), check=True,
                   env={**os.environ, "GOFLAGS": "-buildvcs=false"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def pin_prefix(pin: str, role: str) -> list[str]:
    if pin == "split":
        return ["taskset", "-c", "1" if role == "server" else "0"]
    if pin == "same":
        return ["taskset", "-c", "1"]
    return []


def start_daemon(port: int, pin: str, log: Any, config: str | None = None) -> subprocess.Popen:
    """
    Start C{twistd -n rpcd} from this checkout, as the process to measure
    (no shell wrapper: its PID is the server's own).

    @param config: a config file (its listeners replaced by the port), or
        None for the embedded default.
    """
    argv = pin_prefix(pin, "server") + [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "rpcd", *(["--config", config] if config else []),
        "--listen", f"tcp:{port}:interface=127.0.0.1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_case(case: Case, args: argparse.Namespace, logdir: str, idx: int) -> dict[str, Any]:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", case.name).strip("_")
    port = free_port()
    with open(os.path.join(logdir, f"{idx:02d}_{slug}.server.log"), "w") as log:
        config = args.config
        if case.observed:
            config = os.path.join(logdir, re.sub(r"[^a-z0-9]+", "_", case.observed) + ".toml")
            if not os.path.exists(config):
                with open(config, "w", encoding="utf-8") as f:
                    f.write(observed_config(case.observed))
        proc = start_daemon(port, args.pin, log, config)
        try:
            if not wait_port(port, proc):
                return dict(case=case.name, error="rpcd did not start (see its log)")
            argv = pin_prefix(args.pin, "client") + [
                a.format(port=port, addr=f"127.0.0.1:{port}", pid=proc.pid, dur=args.dur,
                         warmup=args.warmup, n=args.n, case=case.name) for a in case.client]
            limit = args.warmup + args.dur + case.timeout
            log_path = os.path.join(logdir, f"{idx:02d}_{slug}.client.log")
            return run_client(argv, limit, log_path, case.name, proc, "rpcd")
        finally:
            stop(proc)


def run_client(argv: list[str], limit: float, log_path: str, case_name: str,
               server: subprocess.Popen, server_name: str) -> dict[str, Any]:
    """
    Run a load client to the end and read its JSON result line.

    @param argv: the client's command.
    @param limit: seconds before it is killed.
    @param log_path: where its command line and stderr go.
    @param case_name: the row's name.
    @param server: the server process (checked to be alive after the run).
    @param server_name: how errors name the server.
    @return: the client's result with the derived columns, or an C{error}.
    """
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=limit,
                            stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return dict(case=case_name, error=f"client timed out after {limit:.0f}s")
    with open(log_path, "w") as f:
        f.write(" ".join(shlex.quote(a) for a in argv) + "\n" + cp.stderr)
    lines = [line for line in cp.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (cp.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(case=case_name, error=f"client exit {cp.returncode}: {tail}")
    res = json.loads(lines[-1])
    res.update(case=case_name, client_rc=cp.returncode, client_cmd=" ".join(argv))
    if server.poll() is not None:
        res["error"] = f"{server_name} died during the run"
    return derive(res)


def derive(res: dict[str, Any]) -> dict[str, Any]:
    calls = res.get("calls") or 0
    srv = res.get("server_cpu_s")
    res["srv_us_per_call"] = srv / calls * 1e6 if srv is not None and calls else None
    res["cli_us_per_call"] = res["client_cpu_s"] / calls * 1e6 if calls else None
    res["srv_cores"] = srv / res["secs"] if srv is not None and res.get("secs") else None
    return res


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median calls/s, with the median server CPU per call."""
    ok = sorted((r for r in runs if "rate" in r), key=lambda r: r["rate"])
    if not ok:
        return runs[-1]
    row = dict(ok[(len(ok) - 1) // 2])
    row["rate_min"], row["rate_max"] = ok[0]["rate"], ok[-1]["rate"]
    per_call = [r["srv_us_per_call"] for r in ok if r.get("srv_us_per_call") is not None]
    if per_call:
        row["srv_us_per_call"] = statistics.median(per_call)
    return row


def run_anchors(args: argparse.Namespace, outdir: str) -> list[dict[str, Any]]:
    """
    Run the anchors' subset with their own harness and read its rows back.
    """
    script = os.path.join(args.anchors, "run_all.sh")
    if not os.path.exists(script):
        print(f"anchors not found at {args.anchors} (give --anchors DIR); skipping them",
              file=sys.stderr)
        return []
    out = os.path.join(outdir, "anchors")
    argv = [script, "--only", args.anchor_regex, "--dur", str(args.dur), "--warmup",
            str(args.warmup), "--n", str(args.n), "--repeat", str(args.repeat),
            "--pin", args.pin, "--out", out]
    print("== anchors: " + " ".join(shlex.quote(a) for a in argv), flush=True)
    subprocess.run(argv, check=False)
    found = sorted(glob.glob(os.path.join(out, "*", "results.json")))
    if not found:
        print("the anchors wrote no results.json", file=sys.stderr)
        return []
    with open(found[-1]) as f:
        return json.load(f)["rows"]


def fmt(x: float | None, nd: int = 0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def table(rows: list[dict[str, Any]], repeat: int) -> str:
    head = ["case", "calls/s", "p50 us", "p99 us", "srv CPU us/call", "cli CPU us/call",
            "srv cores", "err"]
    if repeat > 1:
        head.insert(2, "calls/s min-max")
    out = [head]
    for r in rows:
        if "rate" not in r:
            out.append([r["case"], "ERROR: " + r.get("error", "?")] + [""] * (len(head) - 2))
            continue
        unit = {"frames": " fr", "msgs": " msg"}.get(r.get("unit"), "")
        line = [r["case"], fmt(r["rate"]) + unit, fmt(r.get("p50_us")), fmt(r.get("p99_us")),
                fmt(r.get("srv_us_per_call"), 1), fmt(r.get("cli_us_per_call"), 1),
                fmt(r.get("srv_cores"), 2), str(r.get("errors", 0)) + (" !" if r.get("error") else "")]
        if repeat > 1:
            line.insert(2, f"{fmt(r.get('rate_min'))}-{fmt(r.get('rate_max'))}")
        out.append(line)
    widths = [max(len(str(row[i])) for row in out) for i in range(len(head))]
    lines = []
    for j, row in enumerate(out):
        lines.append(" | ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i])
                                for i, c in enumerate(row)))
        if j == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def observed_cost(mine: list[dict[str, Any]]) -> str:
    """
    @return: for each observed row, its server CPU per call beside the row
        of the same client with nothing configured, or "" if none ran.
    """
    by_name = {r["case"]: r for r in mine if r.get("srv_us_per_call")}
    lines = []
    for name, r in by_name.items():
        which = next((w for w in OBSERVED if name.endswith(" " + w)), None)
        plain = None if which is None else by_name.get(name.removesuffix(" " + which))
        if plain is not None:
            extra = r["srv_us_per_call"] - plain["srv_us_per_call"]
            lines.append(f"  {name}: srv CPU/call {r['srv_us_per_call']:.1f} us vs "
                         f"{plain['srv_us_per_call']:.1f} us with nothing configured: "
                         f"{extra:+.1f} us/call ({r['srv_us_per_call'] / plain['srv_us_per_call']:.2f}x); "
                         f"calls/s {r['rate'] / plain['rate']:.2f}x")
    return "\n".join(["the cost of observability", *lines]) if lines else ""


def ratios(mine: list[dict[str, Any]], anchors: list[dict[str, Any]]) -> str:
    by_name = {r["case"]: r for r in anchors if "rate" in r}
    lines = ["rpcd / anchor (calls/s: higher is better; server CPU per call: lower is better)"]
    for r in mine:
        if "rate" not in r:
            continue
        for name in COMPARE.get(r["case"], []):
            a = by_name.get(name)
            if a is None:
                continue
            rate = r["rate"] / a["rate"] if a.get("rate") else None
            cpu = (r["srv_us_per_call"] / a["srv_us_per_call"]
                   if r.get("srv_us_per_call") and a.get("srv_us_per_call") else None)
            unit = " (per echo frame)" if a.get("unit") == "frames" else ""
            lines.append(f"  {r['case']:<30} vs {name:<28}: calls/s {fmt(rate, 2)}x, "
                         f"srv CPU/call {fmt(cpu, 2)}x{unit}")
    return "\n".join(lines)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """
    The options every socket benchmark shares (duration, warm-up, call cap,
    repeats, CPU pinning), with the anchors' environment variables as defaults.
    """
    p.add_argument("--dur", type=float, default=float(os.environ.get("DUR", 3)),
                   help="measured seconds per case (env DUR; 3)")
    p.add_argument("--warmup", type=float, default=float(os.environ.get("WARMUP", 0.5)))
    p.add_argument("--n", type=int, default=int(os.environ.get("N", 5_000_000)),
                   help="cap on measured calls per case")
    p.add_argument("--repeat", type=int, default=int(os.environ.get("REPEAT", 1)),
                   help="fresh runs per case; the table shows the median (env REPEAT)")
    p.add_argument("--pin", choices=["none", "split", "same"], default=os.environ.get("PIN", "none"),
                   help="taskset as the anchors do: split = server cpu1 / client cpu0")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p)
    p.add_argument("--only", default=None, help="regex on rpcd case names")
    p.add_argument("--no-anchors", action="store_true", help="run only the rpcd cases")
    p.add_argument("--anchors", default=DEFAULT_ANCHORS, help="the anchors folder (%(default)s)")
    p.add_argument("--anchor-regex", default=ANCHOR_REGEX, help="which anchor cases to run")
    p.add_argument("--config", default=None,
                   help="a config file for the rpcd cases (the observed rows use their own)")
    p.add_argument("--list", action="store_true")
    args = p.parse_args()

    selected = [c for c in cases() if not args.only or re.search(args.only, c.name)]
    if args.list:
        for c in selected:
            print(c.name)
        if not args.no_anchors:
            for name in ANCHOR_CASES:
                print(f"{name}  (anchor)")
        return 0
    build_go()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(WORK, "results", stamp)
    logdir = os.path.join(outdir, "logs")
    os.makedirs(logdir, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    print(f"rpcd {commit}{' (dirty tree)' if dirty else ''}; dur {args.dur}s warmup {args.warmup}s "
          f"repeat {args.repeat} pin {args.pin}; {len(selected)} rpcd cases; results in {outdir}",
          flush=True)
    mine, raw = [], []
    for i, case in enumerate(selected):
        runs = []
        for _ in range(args.repeat):
            r = run_case(case, args, logdir, i)
            runs.append(r)
            raw.append(r)
            msg = r.get("error") or f"{r['rate']:,.0f}/s srv {fmt(r.get('srv_us_per_call'), 1)} us/call"
            print(f"  [{i + 1}/{len(selected)}] {case.name}: {msg}", flush=True)
        mine.append(median_row(runs))
    anchors = [] if args.no_anchors else run_anchors(args, outdir)
    text = table(mine + anchors, args.repeat)
    cost = observed_cost(mine)
    if cost:
        text += "\n\n" + cost
    if anchors:
        text += "\n\n" + ratios(mine, anchors)
    print("\n" + text)
    with open(os.path.join(outdir, "table.txt"), "w") as f:
        f.write(f"# {stamp} rpcd {commit} dur {args.dur}s warmup {args.warmup}s repeat "
                f"{args.repeat} pin {args.pin}\n\n{text}\n")
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(dict(stamp=stamp, commit=commit, args=vars(args), rows=mine, runs=raw,
                       anchors=anchors), f, indent=1)
    print(f"\nsaved {outdir}/table.txt and results.json")
    return 1 if any("error" in r for r in mine) else 0


if __name__ == "__main__":
    sys.exit(main())
