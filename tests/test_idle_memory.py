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
        count = 1000
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            held = [connect(i) for i in range(count)]
            gc.collect()
            per_connection = (tracemalloc.get_traced_memory()[0] - before) / count
        finally:
            tracemalloc.stop()
        self.assertEqual(len(server.open_connections), len(warm) + len(held))
        self.assertLessEqual(per_connection, IDLE_BYTES, f"{per_connection:.0f} bytes per idle connection")
