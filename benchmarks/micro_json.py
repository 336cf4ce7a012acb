"""
In-process micro-benchmark of the JSON paths: no sockets, no reactor loop.

It builds the daemon's real registry (the embedded default config), connects
one server protocol to a L{StringTransport}, and feeds it the same prebuilt
read again and again through C{dataReceived}:

  - C{go}: Go's net/rpc/jsonrpc requests
    (C{{"method":"Arith.Multiply","params":[{"A":a,"B":7}],"id":N}}), on the
    C{json} protocol, as C{jsonrpc.Dial} pipelines them;
  - C{jsonrpc2}: JSON-RPC 2.0 requests with named params, on the C{json}
    protocol;
  - C{batch}: one JSON-RPC 2.0 batch array of that many requests;
  - C{http}: pipelined C{POST /rpc} requests, one JSON-RPC 2.0 call each.

It prints the CPU per call in microseconds (best of several rounds)::

    python benchmarks/micro_json.py                 # every mode, 64 calls per read
    python benchmarks/micro_json.py --batch 1       # one call per read
    python benchmarks/micro_json.py --mode go --profile
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from rpcd import config as config_module  # noqa: E402
from rpcd.daemon import build_registry, resolve_services  # noqa: E402
from rpcd.server import RPCServer  # noqa: E402
from rpcd.wire.httpserver import HTTPServerProtocol  # noqa: E402
from rpcd.wire.jsonserver import JSONServerProtocol  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from micro_dispatch import measure  # noqa: E402  (the same timing loop)

MODES = ("go", "jsonrpc2", "batch", "http")


def requests(mode: str, batch: int) -> bytes:
    """
    @param mode: one of L{MODES}.
    @param batch: how many calls in the read.
    @return: the bytes of one read.
    """
    if mode == "go":
        return b"".join(b'{"method":"Arith.Multiply","params":[{"A":%d,"B":7}],"id":%d}\n'
                        % (i % 1000, i) for i in range(1, batch + 1))
    calls = [b'{"jsonrpc":"2.0","method":"Arith.Multiply","params":{"A":%d,"B":7},"id":%d}'
             % (i % 1000, i) for i in range(1, batch + 1)]
    if mode == "jsonrpc2":
        return b"\n".join(calls) + b"\n"
    if mode == "batch":
        return b"[" + b",".join(calls) + b"]"
    return b"".join(b"POST /rpc HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body) for body in calls)


def connect(mode: str) -> tuple[Any, StringTransport]:
    """
    @return: a server protocol for the mode, on a fresh transport.
    """
    loaded = config_module.load(None)
    registry = build_registry(resolve_services(loaded))
    server = RPCServer(registry, Clock(), loaded.limits)
    protocol = HTTPServerProtocol(server) if mode == "http" else JSONServerProtocol(server)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def results(mode: str, out: bytes) -> list[Any]:
    """
    @return: the results in the bytes a server wrote, in order.
    """
    if mode == "http":
        bodies = []
        while out:
            head, _, rest = out.partition(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            bodies.append(json.loads(rest[:length]))
            out = rest[length:]
        return [b["result"] for b in bodies]
    values = [json.loads(line) for line in out.splitlines() if line]
    if mode == "batch":
        values = values[0]
    return [v["result"] for v in values]


def check(mode: str, protocol: Any, transport: StringTransport, data: bytes, batch: int) -> None:
    """
    Feed one read and check every reply, so the benchmark measures a working
    path.
    """
    protocol.dataReceived(data)
    got = results(mode, transport.value())
    transport.clear()
    want = [(i % 1000) * 7 for i in range(1, batch + 1)]
    if got != want:
        sys.exit(f"{mode}: wrong results {got[:3]}... (want {want[:3]}...)")




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, action="append",
                        help="what to measure (repeatable; default: all)")
    parser.add_argument("--batch", type=int, default=64, help="calls per read (default 64)")
    parser.add_argument("--calls", type=int, default=50_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is shown")
    parser.add_argument("--profile", action="store_true", help="cProfile one round")
    args = parser.parse_args()
    for mode in args.mode or MODES:
        protocol, transport = connect(mode)
        data = requests(mode, args.batch)
        check(mode, protocol, transport, data, args.batch)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            measure(protocol, transport, data, args.batch, args.calls, 1)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)
        us = measure(protocol, transport, data, args.batch, args.calls, args.rounds)
        print(f"{mode:9} {args.batch:4} calls/read  {us:7.2f} us/call  "
              f"({1e6 / us:,.0f} calls/s on one core)")


if __name__ == "__main__":
    main()
