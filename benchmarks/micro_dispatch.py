"""
In-process micro-benchmark of the native server's hot path: no sockets, no
reactor loop.

It builds the daemon's real registry (the embedded default config, as
C{twistd -n rpcd} serves it), connects one L{NativeServerProtocol} to a
L{StringTransport}, and feeds it the same prebuilt batch of CALL frames
(C{[0, id, "Arith.Multiply", {"A": a, "B": 7}]}) again and again through
C{dataReceived}, as a read of a pipelined client's burst would arrive.  It
prints the CPU per call in microseconds (best of several rounds), so a change
to framing, dispatch or conversion shows up in seconds::

    python benchmarks/micro_dispatch.py                  # 64 frames per read
    python benchmarks/micro_dispatch.py --batch 1        # one frame per read
    python benchmarks/micro_dispatch.py --profile        # cProfile, top functions
    python benchmarks/micro_dispatch.py --floor          # + a bare msgpack loop for reference
    python benchmarks/micro_dispatch.py --interceptor noop        # the interceptor chain's own cost
    python benchmarks/micro_dispatch.py --interceptor access_log  # a built-in (or module:factory)
    python benchmarks/micro_dispatch.py --observed       # nothing, a noop interceptor, [http] metrics
    python benchmarks/micro_dispatch.py --config c.toml  # the server of a config (its interceptors)
    python benchmarks/micro_dispatch.py --socket         # the daemon's whole connection stack

With C{--socket} the frames go the way a daemon's reads do: a client socket
on loopback TCP sends each batch, and the server side's Twisted transport
reads it (C{doRead}: C{recv}, the sniffer, the read throttle and turn
scheduler, the input guard, the native protocol, the direct C{send} of the
replies), then the client reads the replies back.  The reactor is a
L{MemoryReactorClock} that is never run, so the figure is the per-call CPU
of everything but C{epoll}, the client's C{send} and C{recv} included.

The socket benchmark (with the real daemon and the anchors beside it) is
C{benchmarks/bench_native.py}.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import os
import pstats
import socket
import struct
import sys
import time
from typing import Any

import msgpack

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import tcp  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import MemoryReactorClock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from rpcd import config as config_module  # noqa: E402
from rpcd.core.twistedcompat import queued_bytes  # noqa: E402
from rpcd.daemon import build_registry, make_server, resolve_services  # noqa: E402
from rpcd.interceptors import load, load_all  # noqa: E402
from rpcd.wire.frames import PREFACE  # noqa: E402
from rpcd.wire.native import NativeServerProtocol  # noqa: E402


def frames(batch: int, method: str = "Arith.Multiply") -> bytes:
    """
    @param batch: how many CALL frames.
    @param method: the method each calls.
    @return: the frames, concatenated, with ids 1..batch.
    """
    out = []
    for i in range(1, batch + 1):
        body = msgpack.packb([0, i, method, {"A": i % 1000, "B": 7}])
        out.append(struct.pack(">I", len(body)) + body)
    return b"".join(out)


class Noop:
    """An interceptor that only passes the call on (the chain's own cost)."""

    def intercept(self, call: object, proceed: Any) -> Any:
        return proceed(call)


def connect(interceptors: list[str] = [], path: str | None = None,
            metrics: bool = False) -> tuple[NativeServerProtocol, StringTransport]:
    """
    @param interceptors: names of interceptors to add after the config's.
    @param path: a config file (None: the embedded default).
    @param metrics: turn C{[http] metrics} on.
    @return: a server protocol past the preface, on a fresh transport.
    """
    loaded = config_module.load(path)
    if metrics:
        loaded = dataclasses.replace(loaded, http=dataclasses.replace(loaded.http, metrics=True))
    registry = build_registry(resolve_services(loaded))
    clock = Clock()
    registry.interceptors = load_all(loaded.interceptors, clock) + tuple(
        Noop() if name == "noop" else load(name, clock=clock) for name in interceptors)
    server = make_server(loaded, registry, clock)
    protocol = NativeServerProtocol(server)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(PREFACE)
    transport.clear()
    return protocol, transport


class BenchReactor(MemoryReactorClock):
    """
    A memory reactor that notes when a call is due at once, so that the
    benchmark runs the reactor's timers only when a real reactor's next
    iteration would have some to run.
    """

    due = False

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:
        if delay <= 0:
            self.due = True
        return super().callLater(delay, callable, *args, **kw)


class SocketFeed:
    """
    The daemon's connection stack for one accepted loopback TCP connection,
    driven by hand: C{dataReceived(data)} sends C{data} from the client
    socket, lets the server transport read it (C{doRead}) and reads back
    every reply; C{value()} and C{clear()} give them, as a
    L{StringTransport}'s would.
    """

    def __init__(self, interceptors: list[str] = [], path: str | None = None,
                 metrics: bool = False) -> None:
        loaded = config_module.load(path)
        if metrics:
            loaded = dataclasses.replace(loaded, http=dataclasses.replace(loaded.http, metrics=True))
        registry = build_registry(resolve_services(loaded))
        self.reactor = reactor = BenchReactor()
        registry.interceptors = load_all(loaded.interceptors, reactor) + tuple(
            Noop() if name == "noop" else load(name, clock=reactor) for name in interceptors)
        server = make_server(loaded, registry, reactor)
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            self.client = socket.create_connection(listener.getsockname())
            accepted, addr = listener.accept()
        accepted.setblocking(False)
        for sock in (self.client, accepted):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        protocol = server.factory().buildProtocol(IPv4Address("TCP", *addr))
        self.transport = tcp.Server(accepted, protocol, addr, None, 1, reactor)  # type: ignore[arg-type]
        protocol.makeConnection(self.transport)
        self.expect = len(PREFACE)  # the bytes of replies each read brings
        self._replies: list[bytes] = []
        self.dataReceived(PREFACE)
        self.clear()

    def dataReceived(self, data: bytes) -> None:
        self.client.sendall(data)
        transport = self.transport
        transport.doRead()
        reactor = self.reactor
        if reactor.due:  # the next reactor iteration's timers (turns)
            reactor.due = False
            reactor.advance(0)
        if queued_bytes(transport):  # written with transport.write: the reactor would send it
            transport.doWrite()
        got = 0
        recv = self.client.recv
        while got < self.expect:
            chunk = recv(1 << 20)
            if not chunk:
                sys.exit("the server closed the connection")
            got += len(chunk)
            self._replies.append(chunk)

    def value(self) -> bytes:
        return b"".join(self._replies)

    def clear(self) -> None:
        self._replies = []


def check(protocol: Any, transport: Any, data: bytes, batch: int) -> int:
    """
    Feed one batch and check every reply, so the benchmark measures a
    working path.

    @return: the bytes of the replies.
    """
    protocol.dataReceived(data)
    out = transport.value()
    transport.clear()
    unpacker = msgpack.Unpacker()
    offset = 0
    replies = []
    while offset < len(out):
        (size,) = struct.unpack_from(">I", out, offset)
        replies.append(msgpack.unpackb(out[offset + 4:offset + 4 + size]))
        offset += 4 + size
    del unpacker
    want = [[1, i, (i % 1000) * 7] for i in range(1, batch + 1)]
    if replies != want:
        sys.exit(f"wrong replies: {replies[:3]}... (want {want[:3]}...)")
    return len(out)


def measure(protocol: NativeServerProtocol, transport: StringTransport, data: bytes,
            batch: int, calls: int, rounds: int) -> float:
    """
    @return: the best round's CPU microseconds per call.
    """
    feed = protocol.dataReceived
    clear = transport.clear
    reads = max(1, calls // batch)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(reads):
            feed(data)
            clear()
        best = min(best, (time.process_time() - t0) / (reads * batch) * 1e6)
    return best


def floor(data: bytes, batch: int, calls: int, rounds: int) -> float:
    """
    The bare minimum in Python for the same work: split frames, unpack, call
    a function, pack replies, join.

    @return: the best round's CPU microseconds per call.
    """
    unpackb = msgpack.unpackb
    packb = msgpack.Packer(autoreset=True).pack
    length = struct.Struct(">I")
    unpack_length, pack_length = length.unpack_from, length.pack

    def multiply(args: dict) -> int:
        return args["A"] * args["B"]

    def handle(buf: bytes) -> bytes:
        out = []
        offset, end_of_data = 0, len(buf)
        view = memoryview(buf)
        while offset < end_of_data:
            (size,) = unpack_length(buf, offset)
            end = offset + 4 + size
            frame = unpackb(view[offset + 4:end])
            offset = end
            body = packb([1, frame[1], multiply(frame[3])])
            out.append(pack_length(len(body)))
            out.append(body)
        return b"".join(out)

    reads = max(1, calls // batch)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(reads):
            handle(data)
        best = min(best, (time.process_time() - t0) / (reads * batch) * 1e6)
    return best


def breakdown(protocol: NativeServerProtocol, transport: StringTransport, data: bytes,
              batch: int, calls: int, rounds: int) -> list[tuple[str, float]]:
    """
    Time the hot path's pieces one by one on the same inputs, innermost
    first; each row includes the rows below it that it calls.

    @return: C{(piece, us per call)} rows.
    """
    import timeit

    from rpcd.examples.arith import Args
    from rpcd.wire.frames import FrameReader, pack_length
    packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack

    dispatcher = protocol.dispatcher
    method = dispatcher._methods.get("Arith.Multiply") or dispatcher._lookup("Arith.Multiply")
    convert = method.spec.params[0].convert
    value = {"A": 7, "B": 8}
    args = Args(7, 8)
    reader = FrameReader()
    split = reader.split
    env = dict(method=method, convert=convert, value=value, args=args, Args=Args, split=split,
               data=data, packb=packb, pack_length=pack_length, dispatcher=dispatcher,
               one=frames(1), feed=protocol.dataReceived,
               clear=transport.clear, function=method.function, unpackb=msgpack.unpackb,
               body=frames(1)[4:], batch=batch)
    pieces = [
        ("Arith.Multiply itself (bound method)", "function(args)", 1),
        ("Args(A, B) (dataclass __init__)", "Args(7, 8)", 1),
        ("argument converter (dict -> Args)", "convert(value)", 1),
        ("invoker: convert + call", "method.invoke(value, None)", 1),
        ("Dispatcher.call (lookup, count, checks, invoke)",
         "dispatcher.call('Arith.Multiply', value, None)", 1),
        ("msgpack.unpackb of one CALL body", "unpackb(body)", 1),
        ("FrameReader.split, per frame", "split(data)", batch),
        ("reply: packb + length prefix", "b = packb([1, 5, 56]); pack_length(len(b)) + b", 1),
        ("dataReceived of 1 frame (everything, per read)", "feed(one); clear()", 1),
        (f"dataReceived of {batch} frames, per frame (everything)", "feed(data); clear()", batch),
    ]
    # Round-robin over the pieces, best of each: on a shared machine every
    # piece then sees the same spells of noise.
    timers = [(timeit.Timer(stmt, timer=time.process_time, globals=env),
               max(1, calls // per // 10), per) for _, stmt, per in pieces]
    best = [float("inf")] * len(pieces)
    for _ in range(rounds * 3):
        for i, (timer, n, per) in enumerate(timers):
            best[i] = min(best[i], timer.timeit(n) / (n * per) * 1e6)
    return [(label, us) for (label, _, _), us in zip(pieces, best)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64, help="CALL frames per dataReceived (64)")
    p.add_argument("--calls", type=int, default=200_000, help="calls per round (200000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the best is shown (5)")
    p.add_argument("--method", default="Arith.Multiply")
    p.add_argument("--profile", action="store_true", help="run one round under cProfile")
    p.add_argument("--floor", action="store_true", help="also time a bare msgpack loop")
    p.add_argument("--config", default=None, help="serve with this config file's settings")
    p.add_argument("--observed", action="store_true",
                   help="measure with nothing, a noop interceptor and [http] metrics, "
                        "rounds alternating")
    p.add_argument("--breakdown", action="store_true",
                   help="time the hot path's pieces one by one (timeit)")
    p.add_argument("--interceptor", action="append", default=[],
                   help="run calls through this interceptor (a built-in's name, "
                        "module:factory, or noop); repeat for a chain")
    p.add_argument("--socket", action="store_true",
                   help="through the daemon's whole connection stack on loopback TCP")
    args = p.parse_args()
    data = frames(args.batch, args.method)

    def build(interceptors: list[str], metrics: bool = False) -> tuple[Any, Any]:
        if not args.socket:
            pair: tuple[Any, Any] = connect(interceptors, args.config, metrics)
            check(*pair, data, args.batch)
            return pair
        feed = SocketFeed(interceptors, args.config, metrics)
        feed.expect = check(feed, feed, data, args.batch)
        return feed, feed

    protocol, transport = build(args.interceptor)
    if args.observed:
        rows = [("nothing configured", protocol, transport),
                ("a noop interceptor", *build([*args.interceptor, "noop"])),
                ("[http] metrics", *build(args.interceptor, metrics=True)),
                ("[http] metrics + access_log", *build([*args.interceptor, "access_log"],
                                                       metrics=True))]
        best = [float("inf")] * len(rows)
        for _ in range(args.rounds):  # alternate, so all see the same noise
            for i, (_, proto, trans) in enumerate(rows):
                best[i] = min(best[i], measure(proto, trans, data, args.batch, args.calls, 1))
        print(f"native {'socket' if args.socket else 'dataReceived'}, {args.batch} frames "
              "per read, us/call:")
        for (label, _, _), us in zip(rows, best):
            print(f"  {us:6.2f}  {label} (+{us - best[0]:.2f})")
        return 0
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        measure(protocol, transport, data, args.batch, args.calls, 1)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(int(os.environ.get("TOP", 15)))
        return 0
    if args.breakdown:
        for label, piece in breakdown(protocol, transport, data, args.batch, args.calls, args.rounds):
            print(f"{piece:6.2f} us  {label}")
        return 0
    us = measure(protocol, transport, data, args.batch, args.calls, args.rounds)
    chain = f" (interceptors: {', '.join(args.interceptor)})" if args.interceptor else ""
    print(f"native {'socket' if args.socket else 'dataReceived'}, {args.batch} frames per read: "
          f"{us:.2f} us/call{chain}")
    if args.floor:
        bare = floor(data, args.batch, args.calls, args.rounds)
        print(f"bare msgpack loop (unpack, call, pack, join):  {bare:.2f} us/call "
              f"(rpcd = {us / bare:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
