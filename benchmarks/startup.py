"""
What a process the test suite starts costs before it does any work: CPU
seconds (user + system) and wall seconds from exec until the daemon logs
C{rpcd listening on}, for C{twistd -n rpcd} with the embedded default
config and with a minimal one (and over the daemon's whole life, with the
wall time from SIGTERM to its exit), and for whole C{rpcd call} /
C{rpcd list} runs against it; beside the floor of a bare
C{import twisted.internet.reactor}.  Median and minimum of C{--runs} runs, the
kinds alternating so a load change on a shared machine touches them all
alike (on a loaded machine the minimum is the steadier figure)::

    python benchmarks/startup.py [--runs 7] [--checkout DIR]...

C{--checkout} measures that checkout's C{rpcd} (its directory is put first
on C{PYTHONPATH}, as C{tests/daemon.py} does; this one by default); given
twice, the two trees take turns in each round, so they compare in one run.
Where C{PYTHONDONTWRITEBYTECODE} is set the bytecode goes to a cache
directory (as in the tests), so the figures are of warm starts.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

LISTENING = re.compile(rb"rpcd listening on (\S+?):(\d+) \(")
TICK = os.sysconf("SC_CLK_TCK")

MINIMAL = """\
[server]
listen = ["tcp:0:interface=127.0.0.1"]

[services.Arith]
"""


def environment(checkout: Path) -> dict[str, str]:
    """
    @param checkout: the tree whose C{rpcd} runs.
    @return: the environment for the processes.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(checkout), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if env.pop("PYTHONDONTWRITEBYTECODE", None):
        prefix = Path(tempfile.gettempdir(), f"rpcd-startup-pycache-{os.getuid()}")
        env.setdefault("PYTHONPYCACHEPREFIX", str(prefix))
    return env


def proc_cpu(pid: int) -> float:
    """
    @return: a live process's CPU seconds so far (user + system).
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start_daemon(args: list[str], env: dict[str, str], cwd: str) -> tuple[subprocess.Popen[bytes], int, float, float]:
    """
    Start C{twistd -n rpcd} and wait for its first listening line.

    @return: the process, its port, CPU seconds and wall seconds to ready.
    """
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "rpcd", *args]
    began = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = b""
    while True:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        if not ready:
            process.kill()
            raise SystemExit(f"no listening line within 60 s:\n{output.decode()}")
        chunk = os.read(process.stdout.fileno(), 65536)
        if not chunk:
            raise SystemExit(f"the daemon exited:\n{output.decode()}")
        output += chunk
        found = LISTENING.search(output)
        if found:
            wall = time.perf_counter() - began
            return process, int(found.group(2)), proc_cpu(process.pid), wall


def stop(process: subprocess.Popen[bytes]) -> tuple[float, float]:
    """
    Stop a daemon with SIGTERM (it drains and exits).

    @return: its CPU seconds over its whole life and the wall seconds from
        the signal to its exit.
    """
    began = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    assert process.stdout is not None
    while os.read(process.stdout.fileno(), 65536):
        pass
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stdout.close()
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - began


def run_command(argv: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """
    Run a program to completion.

    @return: its CPU seconds (user + system, from its rusage) and wall seconds.
    """
    began = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{argv} exited {process.returncode}: "
                         f"{process.stderr.read().decode() if process.stderr else ''}")
    if process.stderr:
        process.stderr.close()
    return usage.ru_utime + usage.ru_stime, wall


def one_round(checkout: Path, cwd: str, record: Callable[[str, float, float], None]) -> None:
    """
    Measure each kind once for one checkout.
    """
    env = environment(checkout)
    rpcd = [sys.executable, "-c", "from rpcd.cli import main; main()"]
    cpu, wall = run_command([sys.executable, "-c", "import twisted.internet.reactor"], env, cwd)
    record("floor: import twisted.internet.reactor", cpu, wall)
    daemon, port, cpu, wall = start_daemon(["--listen", "tcp:0:interface=127.0.0.1"], env, cwd)
    record("daemon, default config", cpu, wall)
    try:
        endpoint = f"tcp:127.0.0.1:{port}"
        cpu, wall = run_command(rpcd + ["call", endpoint, "Arith.Multiply", '{"A": 6, "B": 7}'],
                                env, cwd)
        record("rpcd call", cpu, wall)
        cpu, wall = run_command(rpcd + ["list", endpoint], env, cwd)
        record("rpcd list", cpu, wall)
    finally:
        cpu, wall = stop(daemon)
    record("daemon, default config: whole life; exit", cpu, wall)
    daemon, port, cpu, wall = start_daemon(["--config", str(Path(cwd, "minimal.toml"))], env, cwd)
    record("daemon, minimal config", cpu, wall)
    cpu, wall = stop(daemon)
    record("daemon, minimal config: whole life; exit", cpu, wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--checkout", type=Path, action="append")
    options = parser.parse_args()
    checkouts = [c.resolve() for c in options.checkout or [Path(__file__).resolve().parent.parent]]
    cwd = tempfile.mkdtemp(prefix="rpcd-startup-")
    Path(cwd, "minimal.toml").write_text(MINIMAL)
    results: dict[Path, dict[str, list[tuple[float, float]]]] = {c: {} for c in checkouts}

    for counted in [False] + [True] * options.runs:  # a warm-up round (bytecode, dropin.cache)
        for checkout in checkouts:
            def record(name: str, cpu: float, wall: float, checkout: Path = checkout) -> None:
                if counted:
                    results[checkout].setdefault(name, []).append((cpu, wall))
            one_round(checkout, cwd, record)

    for checkout, kinds in results.items():
        print(f"{checkout}: {options.runs} runs, median (min); CPU = user + system seconds")
        for name, samples in kinds.items():
            cpus = [s[0] for s in samples]
            walls = [s[1] for s in samples]
            print(f"  {name:42s} CPU {statistics.median(cpus):6.3f} ({min(cpus):5.3f})"
                  f"   wall {statistics.median(walls):6.3f} ({min(walls):5.3f})")


if __name__ == "__main__":
    main()
