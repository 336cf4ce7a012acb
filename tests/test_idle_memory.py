"""
What an idle native connection costs in Python objects (issue 14's memory
target), counted by tracemalloc over many connections on StringTransports.
"""

from __future__ import annotations

import gc
import tracemalloc

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from rpcd.core.service import ServiceRegistry
from rpcd.server.factory import RPCServer
from rpcd.server.limits import Limits

PREFACE = b"\x00RPCD\x01\x00\x00"

IDLE_BYTES = 3300
"""The most bytes one idle native connection may allocate (its transport
included); 3375 before the dispatcher's deadline set was made lazy."""


class IdleConnectionMemoryTests(SynchronousTestCase):
    """The Python memory each idle native connection holds."""

    def test_idle_native_connection_bytes(self) -> None:
        """An idle native connection (preface read, no calls) allocates at most IDLE_BYTES."""
        server = RPCServer(ServiceRegistry(), Clock(),
                           Limits(max_connections=100_000, max_connections_per_peer=100_000,
                                  idle_timeout=0, keepalive_interval=0))
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
        # Three batches, the cheapest counted: an allocation of the process's
        # own that happens to fall in one batch's window (a global table
        # growing, another test's leftovers collected) is not a connection's.
        count, batches = 500, 3
        held: list[tuple[object, StringTransport]] = []
        costs = []
        gc.collect()
        tracemalloc.start()
        try:
            for batch in range(batches):
                before = tracemalloc.get_traced_memory()[0]
                held.extend(connect(i) for i in range(batch * count, (batch + 1) * count))
                gc.collect()
                costs.append((tracemalloc.get_traced_memory()[0] - before) / count)
        finally:
            tracemalloc.stop()
        per_connection = min(costs)
        self.assertEqual(len(server.open_connections), len(warm) + len(held))
        self.assertLessEqual(per_connection, IDLE_BYTES, f"{costs} bytes per idle connection in each batch")
