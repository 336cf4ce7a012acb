"""
In-process: rpcd's Twisted client (L{rpcd.client.Client} over a
L{rpcd.client.native.NativeClientProtocol} on a C{StringTransport}) with
C{--inflight} coroutines calling C{Arith.Multiply} over and over, answered by
a sans-IO server-side L{rpcd.wire.connection.NativeConnection}; no sockets,
no daemon, so the figure is the client's Python cost per call (plus the
small fake server's), steady on a loaded machine where the socket benchmarks
are not::

    python benchmarks/micro_client.py [--calls 40000] [--repeat 5] [--no-redial]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import Deferred, succeed  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from rpcd.client.client import Client  # noqa: E402
from rpcd.client.native import NativeClientProtocol  # noqa: E402
from rpcd.wire.connection import CALL, NativeConnection  # noqa: E402


def measure(calls: int, inflight: int, redial: bool) -> float:
    """
    @return: client+fake-server CPU seconds per call, for one round.
    """
    channel = NativeClientProtocol(Clock())
    transport = StringTransport()
    channel.makeConnection(transport)
    server = NativeConnection(client_side=False)
    server.initiate_connection()
    server.receive_data(transport.value())
    transport.clear()
    channel.dataReceived(server.data_to_send())
    client = Client(channel)
    if redial:  # as connect() makes it: calls the server did not run go elsewhere
        client.redial = lambda: succeed(channel)
    state = {"n": 0}

    async def worker() -> None:
        while state["n"] < calls:
            state["n"] += 1
            if await client.call("Arith.Multiply", {"A": 3, "B": 7}) != 21:
                raise AssertionError("wrong answer")

    t0 = time.process_time()
    workers = [Deferred.fromCoroutine(worker()) for _ in range(inflight)]
    while channel.pending:
        data = transport.value()
        transport.clear()
        for event in server.receive_data(data):
            if event[0] == CALL:
                server.send_result(event[1], 21)
        channel.dataReceived(server.data_to_send())
    spent = time.process_time() - t0
    for w in workers:
        w.cancel()
    return spent / calls


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=40_000)
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-redial", action="store_true", help="a Client without redial")
    args = p.parse_args()
    best = min(measure(args.calls, args.inflight, not args.no_redial) for _ in range(args.repeat))
    print(f"rpcd.client x{args.inflight}{'' if args.no_redial else ' (redial)'}: "
          f"{best * 1e6:.2f} us CPU per call (best of {args.repeat}, fake server included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
