"""
In-process: rpcd's Twisted client (L{rpcd.client.Client} over a
L{rpcd.client.native.NativeClientProtocol} on a C{StringTransport}), or with
C{--aio} the asyncio client (L{rpcd.client.aio.Client} on a fake transport in
C{asyncio.run}), with C{--inflight} coroutines calling C{Arith.Multiply} over
and over, answered by a sans-IO server-side
L{rpcd.wire.connection.NativeConnection}; no sockets, no daemon, so the figure
is the client's Python cost per call, steady on a loaded machine where the
socket benchmarks are not.  The fake server's own cost (decoding the calls,
encoding the results) is measured apart and printed beside it::

    python benchmarks/micro_client.py [--calls 40000] [--repeat 5] [--no-redial] [--aio]
    python benchmarks/micro_client.py --aio --load-loop   # + the socket benchmark's bookkeeping
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import Deferred, succeed  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from rpcd.client import aio  # noqa: E402
from rpcd.client.client import Client  # noqa: E402
from rpcd.client.native import NativeClientProtocol  # noqa: E402
from rpcd.wire.connection import CALL, NativeConnection  # noqa: E402
from rpcd.wire.frames import PREFACE  # noqa: E402


async def caller(client: Any, state: dict[str, int], calls: int) -> None:
    """
    One of the callers, for either client: call until C{calls} are made in all.
    """
    while state["n"] < calls:
        state["n"] += 1
        if await client.call("Arith.Multiply", {"A": 3, "B": 7}) != 21:
            raise AssertionError("wrong answer")


async def load_caller(client: Any, state: dict[str, int], calls: int) -> None:
    """
    The same calls with the bookkeeping of C{py_native_client.py}'s callers
    around each (its flags and counters, an argument that varies, a
    latency taken and kept): with C{--load-loop}, the difference to
    L{caller} is what the socket benchmark's load loop adds to the client's
    CPU per call, over the library's own.
    """
    flags = {"measuring": True, "stopping": False, "started": 0, "errors": 0}
    lats: list[int] = []
    perf = time.perf_counter_ns
    i = 0
    while state["n"] < calls and not flags["stopping"]:
        state["n"] += 1
        measured = flags["measuring"]
        if measured:
            flags["started"] += 1
            if flags["started"] > 10_000_000:
                flags["stopping"] = True
                return
        a = (17 + i) % 1000  # the load's varying argument (the fake server answers 21)
        i += 1
        t0 = perf()
        result = await client.call("Arith.Multiply", {"A": 3, "B": 7 + a - a})
        if result != 21:
            flags["errors"] += 1
        elif measured:
            lats.append(perf() - t0)


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

    t0 = time.process_time()
    workers = [Deferred.fromCoroutine(caller(client, state, calls)) for _ in range(inflight)]
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


class _AnsweringTransport(asyncio.Transport):
    """
    The asyncio client's transport: each write is answered by a sans-IO
    server, its reply delivered on the next turn of the loop (as a socket
    read would be).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.server = NativeConnection(client_side=False)
        self.server.initiate_connection()

    def write(self, data: Any) -> None:
        server = self.server
        for event in server.receive_data(data):
            if event[0] == CALL:
                server.send_result(event[1], 21)
        reply = server.data_to_send()
        if reply:
            self.loop.call_soon(self.protocol.data_received, reply)

    def close(self) -> None:
        pass


async def measure_aio(calls: int, inflight: int, loop_of: Any = None) -> float:
    """
    @return: the asyncio client's CPU seconds per call (fake server included),
        for one round.
    """
    loop = asyncio.get_running_loop()
    client = aio.Client("tcp:127.0.0.1:1")
    connection = aio._Connection(client.endpoint, loop)
    connection.connection_made(_AnsweringTransport(loop, connection))
    await connection.ready
    client._current = connection
    state = {"n": 0}

    t0 = time.process_time()
    await asyncio.gather(*[(loop_of or caller)(client, state, calls) for _ in range(inflight)])
    return (time.process_time() - t0) / calls


def server_share(inflight: int, rounds: int = 2000) -> float:
    """
    @return: the fake server's CPU seconds per call: decoding a batch of
        C{inflight} calls and encoding their results.
    """
    client = NativeConnection(client_side=True)
    for call_id in range(1, inflight + 1):
        client.send_call(call_id, "Arith.Multiply", {"A": 3, "B": 7})
    batch = client.data_to_send()
    server = NativeConnection(client_side=False)
    server.receive_data(PREFACE)
    t0 = time.process_time()
    for _ in range(rounds):
        for event in server.receive_data(batch):
            server.send_result(event[1], 21)
        server.data_to_send()
    return (time.process_time() - t0) / (rounds * inflight)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=40_000)
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-redial", action="store_true", help="a Client without redial")
    p.add_argument("--aio", action="store_true", help="the asyncio client (rpcd.client.aio)")
    p.add_argument("--load-loop", action="store_true",
                   help="with --aio: each caller also does py_native_client.py's bookkeeping")
    args = p.parse_args()
    if args.aio:
        name = f"rpcd.client.aio x{args.inflight}" + (" (load loop)" if args.load_loop else "")
        loop_of = load_caller if args.load_loop else None
        best = min(asyncio.run(measure_aio(args.calls, args.inflight, loop_of))
                   for _ in range(args.repeat))
    else:
        name = f"rpcd.client x{args.inflight}{'' if args.no_redial else ' (redial)'}"
        best = min(measure(args.calls, args.inflight, not args.no_redial)
                   for _ in range(args.repeat))
    server = min(server_share(args.inflight) for _ in range(args.repeat))
    print(f"{name}: {best * 1e6:.2f} us CPU per call, of which the fake server's "
          f"{server * 1e6:.2f}: the client's {(best - server) * 1e6:.2f} "
          f"(best of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
