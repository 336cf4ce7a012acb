#!/usr/bin/env python3
"""
Attack a real rpcd daemon as a hostile client would, and print one table.

Each attack of issue 8's table runs against a fresh daemon (C{twistd -n
--pidfile= rpcd} with a config written to a temporary directory, listening on
127.0.0.1 port 0; the port is read from its C{rpcd listening on HOST:PORT (}
log line) over raw sockets on loopback, so that it measures the daemon and
not rpcd's client.  While it runs, a sampler reads the daemon's VmRSS from
C{/proc/PID/status} and kills the daemon if it grows past C{--rss-limit-mb}
(the row then says KILLED), and a probe (a process of its own) calls
C{Arith.Multiply} on a connection of its own every 0.1 s and keeps the
worst latency (with the daemon CPU seconds spent while that call waited, a
figure a busy machine does not inflate).  Afterwards the daemon's output is
scanned for C{Traceback} and C{Unhandled}.

    python benchmarks/abuse.py                    # every attack at --scale 0.05 (a few minutes)
    python benchmarks/abuse.py --scale 0.2        # bigger (the unfixed daemon may hit the RSS cap)
    python benchmarks/abuse.py --only 'slow|login'
    python benchmarks/abuse.py --list

Every loop is bounded in count and in time; the script stops by itself and
kills any daemon it started.  C{--scale 1} is the issue's full size (50
connections x 2,000 calls of a 3 MB value): do not run it on a daemon
without the memory fixes unless C{--rss-limit-mb} is low.

Only the standard library and msgpack.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgpack

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"
LISTENING = re.compile(r"rpcd listening on (\S+?):(\d+) \(")
BIG = 3 * 1024 * 1024
MB = 1024 * 1024

# The native protocol (docs/protocol.md).
PREFACE = b"\x00RPCD\x01\x00\x00"
CALL, RESULT, ERROR, CANCEL, MESSAGE, END, CREDIT, PING, PONG, GOAWAY = range(10)
RESOURCE_EXHAUSTED, UNAUTHENTICATED = 8, 16

# Go net/rpc over gob: the stream's first message defines rpc.Request
# (ServiceMethod string, Seq uint64); every request after it is a Request
# value (type id 65) and the argument value (here a string, type id 6).
GOB_REQUEST_TYPE = bytes.fromhex(
    "2fff81030101075265717565737401ff82000102010d536572766963654d6574686f64"
    "010c0001035365710106000000")


def frame(body: list[Any]) -> bytes:
    """@return: one native frame: a u32be length and a msgpack array."""
    data = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


def gob_uint(n: int) -> bytes:
    """@return: gob's encoding of an unsigned integer."""
    if n < 128:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([256 - len(raw)]) + raw


def gob_string_message(text: str) -> bytes:
    data = text.encode()
    body = b"\x0c\x00" + gob_uint(len(data)) + data
    return gob_uint(len(body)) + body


def gob_request(seq: int, method: str, argument: str) -> bytes:
    """@return: one net/rpc request with a string argument (after GOB_REQUEST_TYPE)."""
    name = method.encode()
    header = b"\xff\x82\x01" + gob_uint(len(name)) + name + b"\x01" + gob_uint(seq) + b"\x00"
    return gob_uint(len(header)) + header + gob_string_message(argument)


def jsonrpc_request(seq: int, method: str, params: Any) -> bytes:
    """@return: one Go net/rpc/jsonrpc request line."""
    return json.dumps({"method": method, "params": [params], "id": seq}).encode() + b"\n"


def jsonrpc2(seq: int, method: str, params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": [params], "id": seq}


def http_post(port: int, body: bytes, host: str | None = None, extra: str = "") -> bytes:
    """@return: one HTTP/1.1 POST /rpc request."""
    return (f"POST /rpc HTTP/1.1\r\nHost: {host or f'{HOST}:{port}'}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


class FrameReader:
    """Native frames from a blocking socket with a timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.preface = True

    def next(self, deadline: float) -> list[Any] | None:
        """@return: the next frame body, or None at EOF (raises TimeoutError at the deadline)."""
        while True:
            if self.preface and len(self.buffer) >= len(PREFACE):
                self.buffer = self.buffer[len(PREFACE):]
                self.preface = False
            if not self.preface and len(self.buffer) >= 4:
                (length,) = struct.unpack_from(">I", self.buffer)
                if len(self.buffer) >= 4 + length:
                    body = self.buffer[4:4 + length]
                    self.buffer = self.buffer[4 + length:]
                    return msgpack.unpackb(body, raw=False, strict_map_key=False)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                raise TimeoutError("no frame in time") from None
            except OSError:
                return None
            if not chunk:
                return None
            self.buffer += chunk


def native(port: int, timeout: float = 10.0) -> tuple[socket.socket, FrameReader]:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.sendall(PREFACE)
    return sock, FrameReader(sock)


def native_call(port: int, method: str, value: Any, timeout: float = 30.0) -> list[Any] | None:
    """One call on a new connection; @return: the reply frame (or None)."""
    sock, reader = native(port, timeout)
    try:
        sock.sendall(frame([CALL, 1, method, value]))
        deadline = time.monotonic() + timeout
        while (reply := reader.next(deadline)) is not None:
            if reply[0] in (RESULT, ERROR) and reply[1] == 1:
                return reply
        return None
    finally:
        sock.close()


def read_until_eof(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """@return: what came, and whether the peer closed (else the time ran out)."""
    data = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, False
        except OSError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


# The daemon ------------------------------------------------------------

def config_text(tls: tuple[str, str] | None) -> str:
    """The shipped default config, on port 0, with a login-only service."""
    text = (REPO / "rpcd" / "default.toml").read_text()
    listen = [f"tcp:0:interface={HOST}"]
    if tls:
        listen.append(f"rpcd-tls:0:interface={HOST}:certKey={tls[0]}:privateKey={tls[1]}")
    text, n = re.subn(r"(?m)^listen = .*$", "listen = " + json.dumps(listen), text, count=1)
    assert n == 1, "no listen line in rpcd/default.toml"
    return text + ('\n[services.Secret]\nclass = "rpcd.examples.arith:Arith"\n'
                   "require_login = true\n")


class Daemon:
    """A C{twistd -n rpcd} subprocess, its output read by a thread."""

    def __init__(self, workdir: Path, tls: tuple[str, str] | None = None) -> None:
        path = workdir / "rpcd.toml"
        path.write_text(config_text(tls))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "rpcd", "--config", str(path)],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        self.output: list[str] = []
        self.lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.ports = self._wait_listening(2 if tls else 1)
        self.port = self.ports[0]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.lock:
                self.output.append(line.decode("utf-8", "replace"))
                self.lock.notify_all()
        with self.lock:
            self.lock.notify_all()

    def _wait_listening(self, count: int) -> list[int]:
        deadline = time.monotonic() + 60
        with self.lock:
            while True:
                ports = [int(m.group(2)) for line in self.output for m in [LISTENING.search(line)] if m]
                if len(ports) >= count:
                    return ports[:count]
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the daemon did not start:\n" + "".join(self.output[-40:]))
                self.lock.wait(0.5)

    @property
    def text(self) -> str:
        with self.lock:
            return "".join(self.output)

    def rss_kib(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def tracebacks(self) -> int:
        return len(re.findall(r"Traceback|Unhandled", self.text))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Sampler(threading.Thread):
    """Samples the daemon's RSS; kills it above the limit."""

    def __init__(self, daemon: Daemon, limit_kib: int) -> None:
        super().__init__(daemon=True)
        self.daemon_ = daemon
        self.limit_kib = limit_kib
        self.peak = daemon.rss_kib() or 0
        self.killed = False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            rss = self.daemon_.rss_kib()
            if rss is None:
                return
            self.peak = max(self.peak, rss)
            if rss > self.limit_kib and not self.killed:
                self.killed = True
                self.daemon_.process.kill()


def cpu_seconds(pid: int) -> float:
    """@return: a process's user + system CPU seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Probe:
    """
    Calls Arith.Multiply every 0.1 s on its own connection, in a process of
    its own (a thread would share the GIL with the attack's sending loop,
    and on a busy machine wait for it, not for the daemon); keeps the worst
    latency, and the daemon's CPU seconds during that call (what the probe
    waited behind, which a busy machine does not inflate).
    """

    def __init__(self, port: int, call_timeout: float = 5.0, pid: int | None = None) -> None:
        import multiprocessing
        context = multiprocessing.get_context("fork")
        self.port = port
        self.call_timeout = call_timeout
        self.pid = pid
        self._worst = context.Value("d", 0.0)
        self._worst_cpu = context.Value("d", 0.0)
        self._failures = context.Value("i", 0)
        self._calls = context.Value("i", 0)
        self.done = context.Event()
        self._process = context.Process(target=self.run, daemon=True)

    worst = property(lambda self: self._worst.value)
    worst_cpu = property(lambda self: self._worst_cpu.value)
    failures = property(lambda self: self._failures.value)
    calls = property(lambda self: self._calls.value)

    def start(self) -> None:
        self._process.start()

    def join(self) -> None:
        self._process.join()

    def run(self) -> None:
        sock: socket.socket | None = None
        reader: FrameReader | None = None
        seq = 0
        while not self.done.is_set():
            started = time.monotonic()
            cpu = cpu_seconds(self.pid) if self.pid is not None else 0.0
            try:
                if sock is None:
                    sock, reader = native(self.port, self.call_timeout)
                assert reader is not None
                seq += 1
                sock.sendall(frame([CALL, seq, "Arith.Multiply", {"A": 6, "B": 7}]))
                deadline = started + self.call_timeout
                while True:
                    reply = reader.next(deadline)
                    if reply is None:
                        raise ConnectionError("closed")
                    if reply[0] == RESULT and reply[1] == seq:
                        break
                self._calls.value += 1
            except (OSError, TimeoutError, ConnectionError):
                self._failures.value += 1
                if sock is not None:
                    sock.close()
                sock = reader = None
            took = time.monotonic() - started
            if took > self._worst.value:
                self._worst.value = took
                if self.pid is not None:
                    self._worst_cpu.value = cpu_seconds(self.pid) - cpu
            self.done.wait(0.1)
        if sock is not None:
            sock.close()


# The attacks -----------------------------------------------------------

@dataclasses.dataclass
class Attack:
    name: str
    protocol: str
    run: Callable[[Daemon, argparse.Namespace], str]
    budget: Callable[[argparse.Namespace], int] = lambda args: 0
    """Bytes the configured limits allow the attack to cost (on top of 64 MB)."""
    big_value: bool = False
    tls: bool = False


def pump(socks: list[socket.socket], payloads: list[bytes], seconds: float) -> int:
    """
    Send each payload on its socket as far as the peer takes it, for at most
    C{seconds}, never reading.  @return: bytes sent in all.
    """
    pending = {s: memoryview(p) for s, p in zip(socks, payloads)}
    for s in socks:
        s.setblocking(False)
    sent = 0
    deadline = time.monotonic() + seconds
    while pending and (left := deadline - time.monotonic()) > 0:
        _, writable, _ = select.select([], list(pending), [], min(left, 0.2))
        for s in writable:
            try:
                n = s.send(pending[s][:1 << 20])
            except BlockingIOError:
                continue
            except OSError:
                del pending[s]
                continue
            sent += n
            pending[s] = pending[s][n:]
            if not pending[s]:
                del pending[s]
    # Hold the connections (not reading) until the time is up.
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))
    return sent


def connections(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection((HOST, port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        socks.append(s)
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        s.close()


def sizes(args: argparse.Namespace) -> tuple[int, int]:
    """@return: (connections, calls per connection) of the non-reading attacks."""
    return max(2, round(50 * args.scale)), max(20, round(2000 * args.scale))


def non_reading(kind: str) -> Callable[[Daemon, argparse.Namespace], str]:
    def attack(daemon: Daemon, args: argparse.Namespace) -> str:
        conns, calls = sizes(args)
        port = daemon.port
        if kind == "native":
            one = PREFACE + b"".join(frame([CALL, i, "KVStoreService.Get", "big"]) for i in range(1, calls + 1))
        elif kind == "gob":
            one = GOB_REQUEST_TYPE + b"".join(gob_request(i, "KVStoreService.Get", "big")
                                              for i in range(1, calls + 1))
        elif kind == "jsonrpc":
            one = b"".join(jsonrpc_request(i, "KVStoreService.Get", "big") for i in range(1, calls + 1))
        elif kind == "batch":
            per = 10
            one = b"".join(json.dumps([jsonrpc2(b * per + i, "KVStoreService.Get", "big")
                                       for i in range(per)]).encode() + b"\n"
                           for b in range(math.ceil(calls / per)))
        elif kind == "http":
            body = json.dumps(jsonrpc2(1, "KVStoreService.Get", "big")).encode()
            one = http_post(port, body) * calls
        else:
            raise ValueError(kind)
        socks = connections(port, conns)
        try:
            sent = pump(socks, [one] * conns, args.seconds)
        finally:
            close_all(socks)
        return (f"{conns} conns x {calls} Get of 3 MB, not reading: "
                f"sent {sent * 100 // (len(one) * conns)}% of the requests")
    return attack


def non_reading_budget(args: argparse.Namespace) -> int:
    conns, _ = sizes(args)
    return conns * (args.limits["write_buffer_bytes"] + BIG)


def batch_budget(args: argparse.Namespace) -> int:
    # A batch's reply is held whole until all its calls end, up to
    # max_frame_bytes (docs/config.md), on top of the write cap.
    conns, _ = sizes(args)
    return non_reading_budget(args) + conns * args.limits["max_frame_bytes"]


def http_behind_watch(daemon: Daemon, args: argparse.Namespace) -> str:
    """Tiny pipelined requests behind one long call: a response slot each."""
    count = max(2000, round(200_000 * args.scale))
    port = daemon.port
    watch = http_post(port, json.dumps(jsonrpc2(0, "KVStoreService.Watch", 30)).encode())
    tiny = http_post(port, json.dumps(jsonrpc2(1, "Arith.Multiply", {"A": 1, "B": 2})).encode())
    socks = connections(port, 1)
    try:
        sent = pump(socks, [watch + tiny * count], args.seconds)
    finally:
        close_all(socks)
    return f"1 Watch + {count} pipelined Multiply: sent {sent * 100 // len(watch + tiny * count)}%"


def trickle_count(args: argparse.Namespace) -> int:
    return max(3, round(150 * args.scale))


def unfinished_frames(kind: str) -> Callable[[Daemon, argparse.Namespace], str]:
    def attack(daemon: Daemon, args: argparse.Namespace) -> str:
        count = trickle_count(args)
        size = args.limits["max_frame_bytes"]
        if kind == "native":
            # A frame of the largest size allowed, all but its last 64 bytes sent.
            head = PREFACE + struct.pack(">I", size)
            body = head + b"x" * (size - 64)
        else:  # a JSON string that never ends
            head = b'{"method": "Arith.Multiply", "id": 1, "params": ["'
            body = head + b"x" * (size - len(head) - 64)
        socks = connections(daemon.port, count)
        closed = 0
        try:
            pump(socks, [body] * count, min(args.seconds, 10))
            open_socks = set(socks)
            deadline = time.monotonic() + args.slow_seconds
            while open_socks and time.monotonic() < deadline:
                for s in list(open_socks):
                    try:
                        s.send(b"x")
                    except BlockingIOError:
                        pass
                    except OSError:
                        open_socks.discard(s)
                readable, _, _ = select.select(list(open_socks), [], [], 2.0)
                for s in readable:
                    try:
                        if not s.recv(65536):
                            open_socks.discard(s)
                    except BlockingIOError:
                        pass
                    except OSError:
                        open_socks.discard(s)
            closed = count - len(open_socks)
        finally:
            close_all(socks)
        return (f"{count} conns x unfinished {size // MB} MB, a byte every 2 s: "
                f"{closed}/{count} closed by the daemon within {args.slow_seconds:g} s")
    return attack


def trickle_budget(args: argparse.Namespace) -> int:
    # Without a daemon-wide input budget the bound is every connection's frame.
    limits = args.limits
    per_daemon = [v for k, v in limits.items() if "input" in k and k.endswith("bytes")]
    return min(per_daemon) if per_daemon else trickle_count(args) * limits["max_frame_bytes"]


def slowloris(kind: str) -> Callable[[Daemon, argparse.Namespace], str]:
    def attack(daemon: Daemon, args: argparse.Namespace) -> str:
        if kind == "gob":
            data = GOB_REQUEST_TYPE + gob_request(1, "Arith.Multiply", "x")
        else:
            data = jsonrpc_request(1, "Arith.Multiply", {"A": 1, "B": 2})
        sock = socket.create_connection((HOST, daemon.port), timeout=10)
        started = time.monotonic()
        try:
            for i in range(len(data) - 1):  # never the last byte
                if time.monotonic() - started > args.slow_seconds:
                    break
                try:
                    sock.send(data[i:i + 1])
                except OSError:
                    return f"one byte a second: closed by the daemon after {time.monotonic() - started:.0f} s"
                _, closed = read_until_eof(sock, 1.0)
                if closed:
                    return f"one byte a second: closed by the daemon after {time.monotonic() - started:.0f} s"
        finally:
            sock.close()
        return f"one byte a second: still open after {time.monotonic() - started:.0f} s"
    return attack


def login_codes(replies: list[list[Any]]) -> str:
    limited = sum(1 for r in replies if r[0] == ERROR and r[2] == RESOURCE_EXHAUSTED)
    failed = sum(1 for r in replies if r[0] == ERROR and r[2] == UNAUTHENTICATED)
    ok = sum(1 for r in replies if r[0] == RESULT)
    return f"{failed} failed, {limited} rate-limited, {ok} ok, {len(replies) - failed - limited - ok} other"


def concurrent_logins(daemon: Daemon, args: argparse.Namespace) -> str:
    count = max(40, round(400 * args.scale))
    sock, reader = native(daemon.port)
    replies = []
    try:
        sock.sendall(b"".join(frame([CALL, i, "HelloService.Login", f"user:wrong{i}"])
                              for i in range(1, count + 1)))
        deadline = time.monotonic() + max(30, args.seconds)
        while len(replies) < count:
            reply = reader.next(deadline)
            if reply is None:
                break
            if reply[0] in (RESULT, ERROR):
                replies.append(reply)
    except TimeoutError:
        pass
    finally:
        sock.close()
    allowed = args.limits_auth.get("max_failed_logins", 5)
    return (f"{count} concurrent wrong logins on one conn: {login_codes(replies)} "
            f"(want >= {count - allowed} rate-limited)")


def login_reset(daemon: Daemon, args: argparse.Namespace) -> str:
    rounds = 8
    replies = []
    deadline = time.monotonic() + max(60, args.seconds)
    for r in range(rounds):
        for i in range(4):
            if time.monotonic() > deadline:
                break
            reply = native_call(daemon.port, "HelloService.Login", f"user:wrong{r}{i}")
            if reply is not None:
                replies.append(reply)
        native_call(daemon.port, "HelloService.Login", "user:password")
    allowed = args.limits_auth.get("max_failed_logins", 5)
    return (f"{rounds} x (4 wrong + 1 right): wrong ones {login_codes(replies)} "
            f"(want >= {len(replies) - allowed} rate-limited)")


def bad_frames(kind: str) -> Callable[[Daemon, argparse.Namespace], str]:
    def attack(daemon: Daemon, args: argparse.Namespace) -> str:
        if kind == "call":
            # A method that answers later, so that the deadline is armed.
            variants = {f"timeout {t!r}": frame([CALL, 2, "KVStoreService.Watch", 1, {"timeout": t}])
                        for t in (-1.0, float("nan"), "x")}
        else:
            variants = {"CANCEL": frame([CANCEL, [1]]), "MESSAGE": frame([MESSAGE, [1], "x"]),
                        "END": frame([END, [1]]), "CREDIT": frame([CREDIT, [1], 1])}
        results = []
        for label, bad in variants.items():
            sock, reader = native(daemon.port)
            try:
                # A call in flight (a Watch), the bad frame, then another call.
                sock.sendall(frame([CALL, 1, "KVStoreService.Watch", 30]) + bad
                             + frame([CALL, 3, "Arith.Multiply", {"A": 6, "B": 7}]))
                deadline = time.monotonic() + 5
                outcome = "no answer in 5 s"
                try:
                    while (reply := reader.next(deadline)) is not None:
                        if reply[0] == GOAWAY:
                            outcome = "GOAWAY"
                        if reply[0] == RESULT and reply[1] == 3:
                            outcome = "others served"
                            break
                    else:
                        outcome = "conn lost" if outcome != "GOAWAY" else "GOAWAY, conn closed"
                except TimeoutError:
                    pass
            finally:
                sock.close()
            results.append(f"{label}: {outcome}")
        return "; ".join(results)
    return attack


def half_close(kind: str) -> Callable[[Daemon, argparse.Namespace], str]:
    def attack(daemon: Daemon, args: argparse.Namespace) -> str:
        if kind == "native":
            data = PREFACE + frame([CALL, 1, "Arith.Multiply", {"A": 6, "B": 7}])
        elif kind == "gob":
            # Cal.Square(12): an int argument.
            name = b"Cal.Square"
            header = b"\xff\x82\x01" + gob_uint(len(name)) + name + b"\x01\x01\x00"
            arg = b"\x04\x00\x18"  # int 12 (type id 2 -> 0x04, singleton 0, zigzag 24)
            data = GOB_REQUEST_TYPE + gob_uint(len(header)) + header + gob_uint(len(arg)) + arg
        else:
            data = jsonrpc_request(1, "Arith.Multiply", {"A": 6, "B": 7})
        sock = socket.create_connection((HOST, daemon.port), timeout=10)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            received, closed = read_until_eof(sock, 5.0)
        finally:
            sock.close()
        answered = len(received) > (len(PREFACE) if kind == "native" else 0)
        return (f"request, then FIN: {'answered' if answered else 'NOT answered'}, "
                f"{'then closed' if closed else 'still open after 5 s'}")
    return attack


def open_fds(pid: int) -> int:
    """@return: how many file descriptors the process has open."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def watch_and_leave(daemon: Daemon, args: argparse.Namespace) -> str:
    """
    Callers that start a long poll and close their socket (a plain close, a
    FIN, as a program that exits): the daemon must not hold their
    connections and Watch calls until the 10-minute polls end.
    """
    count = max(100, round(2000 * args.scale))
    before = open_fds(daemon.pid)
    socks = connections(daemon.port, count)
    for s in socks:
        s.sendall(PREFACE + frame([CALL, 1, "KVStoreService.Watch", 600]))
    deadline = time.monotonic() + 30
    while open_fds(daemon.pid) < before + count and time.monotonic() < deadline:
        time.sleep(0.05)
    held = open_fds(daemon.pid) - before
    for s in socks:  # read what the daemon sent (its preface): a close then is a FIN, not a reset
        s.settimeout(10)
        received = b""
        while len(received) < len(PREFACE):
            received += s.recv(len(PREFACE) - len(received)) or b"?" * len(PREFACE)
    started = time.monotonic()
    for s in socks:
        s.close()
    while open_fds(daemon.pid) > before + 2 and time.monotonic() - started < 30:
        time.sleep(0.1)
    left = open_fds(daemon.pid) - before
    took = time.monotonic() - started
    return (f"{count} conns x Watch(600), then close: {held} held, {max(left, 0)} left "
            f"{took:.1f} s after the close" + ("" if left <= 2 else " (NOT released)"))


def http_exchange(port: int, request: bytes) -> tuple[int, bytes]:
    sock = socket.create_connection((HOST, port), timeout=10)
    try:
        sock.sendall(request)
        data, _ = read_until_eof(sock, 3.0)
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        return int(head.split()[1]), body
    except (IndexError, ValueError):
        return 0, data


def host_checks(daemon: Daemon, args: argparse.Namespace) -> str:
    port = daemon.port
    body = json.dumps(jsonrpc2(1, "Arith.Multiply", {"A": 6, "B": 7})).encode()
    evil, _ = http_exchange(port, http_post(port, body, host="evil.example", extra="Connection: close\r\n"))
    page = f"GET /debug/rpc HTTP/1.1\r\nHost: {{}}\r\nConnection: close\r\n\r\n"
    status, listing = http_exchange(port, page.format(f"{HOST}:{port}").encode())
    evil_page, _ = http_exchange(port, page.format("evil.example").encode())
    shows_secret = b"Secret" in listing
    return (f"POST Host: evil.example -> {evil}; GET /debug/rpc -> {status}"
            f"{' listing the login-only service' if shows_secret else ''}; "
            f"with Host: evil.example -> {evil_page}")


def alpn(daemon: Daemon, args: argparse.Namespace) -> str:
    port = daemon.ports[1]
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    body = json.dumps(jsonrpc2(1, "Arith.Multiply", {"A": 6, "B": 7})).encode()
    try:
        with socket.create_connection((HOST, port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                chosen = tls.selected_alpn_protocol()
                tls.sendall(http_post(port, body, extra="Connection: close\r\n"))
                data, _ = read_until_eof(tls, 5.0)
        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "no reply"
        result = f"python ssl, ALPN h2+http/1.1: {status} (ALPN {chosen})"
    except (OSError, ssl.SSLError) as e:
        result = f"python ssl, ALPN h2+http/1.1: {e.__class__.__name__}: {e}"
    curl = shutil.which("curl")
    if curl:
        done = subprocess.run([curl, "-sk", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                               "-H", "Content-Type: application/json", "--data", body.decode(),
                               f"https://localhost:{port}/rpc"], capture_output=True, text=True)
        result += f"; curl: {done.stdout or 'exit ' + str(done.returncode)}"
    return result


ATTACKS = [
    Attack("non-reading pipelined Get 3 MB", "native", non_reading("native"), non_reading_budget, True),
    Attack("non-reading pipelined Get 3 MB", "gob", non_reading("gob"), non_reading_budget, True),
    Attack("non-reading pipelined Get 3 MB", "jsonrpc", non_reading("jsonrpc"), non_reading_budget, True),
    Attack("non-reading pipelined Get 3 MB", "jsonrpc2 batch", non_reading("batch"), batch_budget, True),
    Attack("non-reading pipelined Get 3 MB", "http", non_reading("http"), non_reading_budget, True),
    Attack("pipelined behind one Watch", "http", http_behind_watch),
    Attack("unfinished 4 MB frames trickled", "native", unfinished_frames("native"), trickle_budget),
    Attack("unfinished 4 MB value trickled", "jsonrpc", unfinished_frames("json"), trickle_budget),
    Attack("slowloris", "gob", slowloris("gob")),
    Attack("slowloris", "jsonrpc", slowloris("json")),
    Attack("concurrent wrong logins", "native", concurrent_logins),
    Attack("wrong logins, a right one every 4", "native", login_reset),
    Attack("bad CALL timeout", "native", bad_frames("call")),
    Attack("CANCEL/MESSAGE/END/CREDIT list id", "native", bad_frames("ids")),
    Attack("half-close", "native", half_close("native")),
    Attack("half-close", "gob", half_close("gob")),
    Attack("half-close", "jsonrpc", half_close("json")),
    Attack("Watch, then close", "native", watch_and_leave),
    Attack("Host: evil.example, /debug/rpc", "http", host_checks),
    Attack("ALPN over TLS", "https", alpn, tls=True),
]


@dataclasses.dataclass
class Row:
    attack: Attack
    before: int = 0
    peak: int = 0
    after: int = 0
    probe: float = 0.0
    probe_failures: int = 0
    probe_cpu: float = 0.0
    tracebacks: int = 0
    killed: bool = False
    note: str = ""
    budget: int = 0


def run_one(attack: Attack, args: argparse.Namespace, workdir: Path) -> Row:
    tls = None
    if attack.tls:
        pki = workdir / "pki"
        if not pki.exists():
            subprocess.run([sys.executable, "-c", "from rpcd.cli import main; main()", "certs", str(pki)],
                           check=True, capture_output=True, cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
        tls = (str(pki / "server.pem"), str(pki / "server.key"))
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    daemon = Daemon(run_dir, tls)
    row = Row(attack, budget=attack.budget(args))
    try:
        if attack.big_value:
            reply = native_call(daemon.port, "KVStoreService.Set", ["big", "x" * BIG])
            assert reply is not None and reply[0] == RESULT, reply
        native_call(daemon.port, "Arith.Multiply", {"A": 1, "B": 1})
        row.before = daemon.rss_kib() or 0
        sampler = Sampler(daemon, args.rss_limit_mb * 1024)
        probe = Probe(daemon.port, pid=daemon.pid)
        sampler.start()
        probe.start()
        try:
            row.note = attack.run(daemon, args)
        except Exception as e:  # the attack's own trouble is a result too
            row.note = f"attack stopped: {e.__class__.__name__}: {e}"
        time.sleep(args.settle)
        probe.done.set()
        probe.join()
        sampler.done.set()
        sampler.join()
        row.peak, row.killed = sampler.peak, sampler.killed
        row.probe, row.probe_failures, row.probe_cpu = probe.worst, probe.failures, probe.worst_cpu
        row.after = daemon.rss_kib() or 0
    finally:
        daemon.stop()
        row.tracebacks = daemon.tracebacks()
        if args.keep_logs:
            (run_dir / "daemon.log").write_text(daemon.text)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return row


def load_limits() -> tuple[dict[str, Any], dict[str, Any]]:
    """The daemon's effective [limits] and [auth] numbers (the shipped config's)."""
    sys.path.insert(0, str(REPO))
    from rpcd import config
    loaded = config.load(None)
    auth = {k: v for k, v in dataclasses.asdict(loaded.auth).items() if isinstance(v, (int, float))}
    return dataclasses.asdict(loaded.limits), auth


def mb(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    header = ("attack", "protocol", "RSS MB before/peak/after", "growth (target)",
              "probe worst (daemon CPU)", "tracebacks", "result")
    lines = []
    for r in rows:
        growth = (r.peak - r.before) // 1024
        target = (r.budget // MB) + 64
        grow_ok = "ok" if growth <= target and not r.killed else "FAIL"
        probe_ok = "ok" if r.probe <= 1.0 and not r.probe_failures else "FAIL"
        probe = f"{r.probe:.2f} s ({r.probe_cpu:.2f}) {probe_ok}" + (
            f" ({r.probe_failures} failed)" if r.probe_failures else "")
        rss = f"{mb(r.before)}/{mb(r.peak)}/{'KILLED' if r.killed else mb(r.after)}"
        lines.append((r.attack.name, r.attack.protocol, rss, f"+{growth} (<= {target}) {grow_ok}", probe,
                      f"{r.tracebacks} {'ok' if not r.tracebacks else 'FAIL'}", r.note))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header[:-1])]
    def fmt(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths + [0])) + " |"
    print(fmt(header))
    print("|" + "|".join("-" * (w + 2) for w in widths + [8]) + "|")
    for line in lines:
        print(fmt(line))
    print(f"\nscale {args.scale:g}; targets: RSS growth <= the configured budgets + 64 MB, "
          f"probe (Arith.Multiply on its own connection) <= 1 s, 0 tracebacks; "
          f"a daemon above {args.rss_limit_mb} MB RSS is killed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.05,
                        help="attack size as a fraction of the issue's (1 = 50 conns x 2000 calls)")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="how long each flood sends and holds its connections")
    parser.add_argument("--slow-seconds", type=float, default=None,
                        help="how long the trickle and slowloris attacks go on (default: the "
                             "config's limits.message_timeout + 5 s, or 15 s without one)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds after an attack before RSS 'after' is read")
    parser.add_argument("--rss-limit-mb", type=int, default=2048,
                        help="kill the daemon above this RSS (reported as KILLED)")
    parser.add_argument("--only", help="run the attacks whose 'name protocol' matches this regex")
    parser.add_argument("--list", action="store_true", help="list the attacks and exit")
    parser.add_argument("--keep-logs", action="store_true", help="keep each daemon's log in the work dir")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    selected = [a for a in ATTACKS if not args.only or re.search(args.only, f"{a.name} {a.protocol}")]
    if args.list:
        for a in ATTACKS:
            print(f"{a.name} ({a.protocol})")
        return
    args.limits, args.limits_auth = load_limits()
    if args.slow_seconds is None:
        timeout = args.limits.get("message_timeout") or 10.0
        args.slow_seconds = timeout + 5.0
    workdir = Path(tempfile.mkdtemp(prefix="rpcd-abuse-"))
    rows = []
    try:
        for attack in selected:
            print(f"... {attack.name} ({attack.protocol})", file=sys.stderr, flush=True)
            rows.append(run_one(attack, args, workdir))
    finally:
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs in {workdir}", file=sys.stderr)
    print_table(rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps([
            {"attack": r.attack.name, "protocol": r.attack.protocol, "rss_kib": [r.before, r.peak, r.after],
             "killed": r.killed, "budget_bytes": r.budget, "probe_worst_s": r.probe,
             "probe_failures": r.probe_failures, "probe_cpu_seconds": r.probe_cpu, "tracebacks": r.tracebacks, "result": r.note}
            for r in rows], indent=2))


if __name__ == "__main__":
    main()
