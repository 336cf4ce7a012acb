"""
What an idle native connection and a pending C{KVStoreService.Watch} cost
in Python objects (issue 14's memory targets), counted by tracemalloc over
many connections or calls on StringTransports.
"""

from __future__ import annotations

import bisect
import gc
import json
import os
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack

from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from rpcd.core.service import ServiceRegistry
from rpcd.examples.kvstore import KVStoreService
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

WATCH_BYTES = 1300
"""The most bytes one pending C{KVStoreService.Watch} may allocate (the
call's Deferred, its tracking and reply callbacks, its place among the
store's watchers and timeouts): 908 measured; 2,974 when each Watch had
three closures, a callback and a reactor timer of its own, and the
dispatcher tracked it with a closure."""


def connect(factory: Any, i: int) -> tuple[Any, StringTransport]:
    """
    @param factory: a server's factory.
    @param i: the connection's number (its peer port is 10,000 + i).
    @return: a native connection past the preface, and its transport
        (cleared).
    """
    address = IPv4Address("TCP", "127.0.0.1", 10_000 + i)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    protocol.dataReceived(PREFACE)
    transport.clear()
    return protocol, transport


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

    warm = [connect(factory, i) for i in range(20)]  # caches and first-use tables
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [connect(factory, i) for i in range(count)]
        gc.collect()
        per_connection = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert len(warm) + len(held) == count + 20
    return per_connection, len(server.open_connections)


def measure_watches(connections: int = 20, per_connection: int = 500) -> tuple[float, int, int]:
    """
    Send C{KVStoreService.Watch(3600)} calls over native connections on
    StringTransports and count what the pending calls allocate.

    @return: bytes per pending Watch, the watchers the store holds at the
        end, and the bytes the servers wrote after the prefaces (none: no
        call was answered).
    """
    store = KVStoreService()
    registry = ServiceRegistry()
    registry.add(store)
    clock = Clock()
    server = RPCServer(registry, clock, Limits(idle_timeout=0, keepalive_interval=0))
    factory = server.factory()

    def watches(first: int, count: int) -> bytes:
        frames = []
        for call_id in range(first, first + count):
            body = msgpack.packb([0, call_id, "KVStoreService.Watch", 3600])
            frames.append(struct.pack(">I", len(body)) + body)
        return b"".join(frames)

    opened = [connect(factory, i) for i in range(connections)]
    for protocol, _ in opened:  # caches, first-use tables, the store's timer
        protocol.dataReceived(watches(1, 5))
        clock.advance(0)
    reads = [watches(first, 50) for first in range(100, 100 + per_connection, 50)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for protocol, _ in opened:
            for data in reads:
                protocol.dataReceived(data)
                clock.advance(0)  # the read's turn (rpcd.server.fairness)
        del data
        gc.collect()
        per_watch = (tracemalloc.get_traced_memory()[0] - before) / (connections * per_connection)
    finally:
        tracemalloc.stop()
    return per_watch, len(store.watchers), sum(len(transport.value()) for _, transport in opened)


def in_fresh_interpreter(test: SynchronousTestCase, call: str) -> object:
    """
    Run a measure of this module in a fresh interpreter: in a test process
    that has run other tests, state they leave behind (observers, caches)
    adds allocations that are not rpcd's (up to ~190 bytes a connection,
    seen in full -j2 runs only).

    @param call: the call, e.g. C{measure(timers=True)}.
    @return: what it returned, through JSON.
    """
    script = f"import json, tests.test_idle_memory as m; print(json.dumps(m.{call}))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    test.assertEqual(done.returncode, 0, done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


class IdleConnectionMemoryTests(SynchronousTestCase):
    """The Python memory each idle native connection holds."""

    def _measure(self, timers: bool) -> float:
        per_connection, open_connections = in_fresh_interpreter(  # type: ignore[misc]
            self, f"measure(timers={timers})")
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


class PendingWatchMemoryTests(SynchronousTestCase):
    """The Python memory each pending long-poll holds."""

    def test_pending_watch_bytes(self) -> None:
        """A pending KVStoreService.Watch allocates at most WATCH_BYTES, and every one is held, none answered."""
        per_watch, watchers, written = in_fresh_interpreter(  # type: ignore[misc]
            self, "measure_watches()")
        self.assertEqual((watchers, written), (20 * 505, 0))
        self.assertLessEqual(per_watch, WATCH_BYTES, f"{per_watch:.0f} bytes per pending Watch")
