"""
What an idle native connection costs in Python objects (issue 14's memory
target), counted by tracemalloc over many connections on StringTransports.
"""

from __future__ import annotations

import bisect
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from rpcd.core.service import ServiceRegistry
from rpcd.server.factory import RPCServer
from rpcd.server.limits import Limits

PREFACE = b"\x00RPCD\x01\x00\x00"
ROOT = Path(__file__).resolve().parent.parent

IDLE_BYTES = 2300
"""The most bytes one idle native connection may allocate (its transport
included), without timers (C{benchmarks/idle_memory.py}'s daemon): 2,155
measured; 3,167 before the per-connection objects were slimmed (slots,
shared empty tables, state made on first need), 3,375 before the
dispatcher's deadline set was made lazy."""

TIMED_IDLE_BYTES = 4100
"""The same with the default idle timeout and keepalive (their timers on a
test Clock): 3,824 measured; 5,240 before."""


class _InsertingClock(Clock):
    """
    A test clock that inserts each call in order instead of sorting all of
    them: L{Clock.callLater} sorts its whole list by a Python key per call,
    which made 2,000 idle timers take 4 s of CPU.  The calls it makes are
    the same objects, so the bytes measured are the same.
    """

    def callLater(self, delay: float, callable: Any, *args: object, **kw: object) -> DelayedCall:
        """
        Schedule C{callable} as L{Clock.callLater} does, inserted in order.
        """
        call = DelayedCall(self.seconds() + delay, callable, args, kw, self.calls.remove,
                           lambda c: None, self.seconds)
        bisect.insort(self.calls, call, key=DelayedCall.getTime)
        return call


def measure(count: int = 1000, timers: bool = False) -> tuple[float, int]:
    """
    Open C{count} idle native connections on StringTransports and count what
    they allocate.

    @param timers: keep the default idle timeout and keepalive (else both 0).
    @return: bytes per connection, and how many connections the server has
        open at the end.
    """
    off = {} if timers else {"idle_timeout": 0, "keepalive_interval": 0}
    server = RPCServer(ServiceRegistry(), _InsertingClock(),
                       Limits(max_connections=100_000, max_connections_per_peer=100_000, **off))
    factory = server.factory()

    def connect(i: int) -> tuple[object, StringTransport]:
        address = IPv4Address("TCP", "127.0.0.1", 10_000 + i)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        protocol.dataReceived(PREFACE)
        transport.clear()
        return protocol, transport

    warm = [connect(i) for i in range(20)]  # caches and first-use tables
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [connect(i) for i in range(count)]
        gc.collect()
        per_connection = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert len(warm) + len(held) == count + 20
    return per_connection, len(server.open_connections)


class IdleConnectionMemoryTests(SynchronousTestCase):
    """The Python memory each idle native connection holds."""

    def _measure(self, timers: bool) -> float:
        # Measured in a fresh interpreter: in a test process that has run
        # other tests, state they leave behind (observers, caches) adds
        # allocations per connection that are not rpcd's (up to ~190 bytes
        # each, seen in full -j2 runs only).
        script = ("import json, tests.test_idle_memory as m; "
                  f"print(json.dumps(m.measure(timers={timers})))")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr)
        per_connection, open_connections = json.loads(done.stdout.strip().splitlines()[-1])
        self.assertEqual(open_connections, 1020)
        return float(per_connection)

    def test_idle_native_connection_bytes(self) -> None:
        """An idle native connection (preface read, no calls) allocates at most IDLE_BYTES."""
        per_connection = self._measure(timers=False)
        self.assertLessEqual(per_connection, IDLE_BYTES, f"{per_connection:.0f} bytes per idle connection")

    def test_idle_native_connection_with_timers_bytes(self) -> None:
        """With the default idle timeout and keepalive, an idle native connection allocates at most TIMED_IDLE_BYTES."""
        per_connection = self._measure(timers=True)
        self.assertLessEqual(per_connection, TIMED_IDLE_BYTES,
                             f"{per_connection:.0f} bytes per idle connection with timers")
