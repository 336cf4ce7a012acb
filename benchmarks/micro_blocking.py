"""
In-process: L{rpcd.client.blocking.Connection}, the blocking client's own
IO, over a fake socket that answers every CALL at once (its RESULT is there
for the next read); no daemon, no network, so the figure is the library's
Python cost per sequential call (the idle check, the frame, the write, the
wait, the reply's dispatch), steady on a loaded machine where the socket
benchmarks are not.  The fake socket's own cost (encoding the replies) is
measured apart and taken off::

    python benchmarks/micro_blocking.py [--calls 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack  # noqa: E402

from rpcd.client.blocking import Connection  # noqa: E402
from rpcd.wire.connection import RESULT, NativeConnection  # noqa: E402
from rpcd.wire.frames import PREFACE  # noqa: E402


class AnsweringSocket:
    """
    A socket whose every send is a CALL answered by the next read.  Its
    file number is a real socket's, with a byte always waiting, so that
    C{poll} finds it readable at once.
    """

    family = socket.AF_UNIX

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.theirs.send(b"x")
        self.reply: bytes | None = PREFACE
        self.call_id = 0

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return self.ours.fileno()

    def send(self, data: bytes) -> int:
        self.call_id += 1
        body = msgpack.packb([RESULT, self.call_id, 21])
        self.reply = struct.pack(">I", len(body)) + body
        return len(data)

    def recv_into(self, buffer: bytearray) -> int:
        reply = self.reply
        if reply is None:
            raise BlockingIOError()
        self.reply = None
        buffer[:len(reply)] = reply
        return len(reply)


def measure(calls: int) -> tuple[float, float]:
    """
    @return: CPU seconds per call of the calls (fake socket included), and
        of the fake socket's own work for as many calls.
    """
    sock = AnsweringSocket()
    connection = Connection(sock, NativeConnection(client_side=True), "the fake")  # type: ignore[arg-type]
    connection.handshake(None, "the fake", None)
    monotonic = time.monotonic
    t0 = time.process_time()
    for _ in range(calls):
        if connection.call("Arith.Multiply", {"A": 3, "B": 7}, 30.0, None,
                           monotonic() + 30.0) != 21:
            raise AssertionError("wrong answer")
    spent = time.process_time() - t0
    fake = AnsweringSocket()
    buffer = bytearray(64 * 1024)
    t0 = time.process_time()
    for _ in range(calls):
        fake.send(b"")
        fake.recv_into(buffer)
        try:
            fake.recv_into(buffer)  # the idle check's read, which finds nothing
        except BlockingIOError:
            pass
    own = time.process_time() - t0
    for s in (sock, fake):
        s.ours.close()
        s.theirs.close()
    return spent / calls, own / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    measure(1000)
    runs = [measure(args.calls) for _ in range(args.repeat)]
    spent, own = min(runs, key=lambda r: r[0] - r[1])
    print(f"BlockingClient's connection, 1 thread: {spent * 1e6:.2f} us CPU per call, of which "
          f"the fake socket's {own * 1e6:.2f}: the library's {(spent - own) * 1e6:.2f} "
          f"(best of {args.repeat})")


if __name__ == "__main__":
    main()
