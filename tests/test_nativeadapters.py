"""
The Twisted protocols of the native protocol as adapters over
L{rpcd.wire.connection.NativeConnection}: what they add (IO batching) and
that the frame rules they apply are the connection's.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from rpcd.wire.connection import NativeConnection
from rpcd.wire.frames import PREFACE, encode_frame
from rpcd.client.native import NativeClientProtocol


class CountingTransport(StringTransport):
    """A StringTransport that counts its writes."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class ClientAdapterTests(SynchronousTestCase):
    """NativeClientProtocol over its NativeConnection."""

    def connected(self) -> tuple[NativeClientProtocol, CountingTransport]:
        protocol = NativeClientProtocol(Clock())
        transport = CountingTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(PREFACE)
        return protocol, transport

    def test_calls_from_callbacks_batched(self) -> None:
        """Calls made by the callbacks of one read are written once, at the read's end, in order."""
        protocol, transport = self.connected()
        results: list[Any] = []
        first = [protocol.call("A.B", n) for n in range(3)]
        for d in first:
            d.addCallback(lambda v: results.append(protocol.call("A.Next", v)))
        transport.clear()
        transport.writes = 0
        protocol.dataReceived(b"".join(encode_frame([1, i, i * 10]) for i in (1, 2, 3)))
        self.assertEqual(transport.writes, 1)
        server = NativeConnection(client_side=False)
        events = server.receive_data(PREFACE + transport.value())
        self.assertEqual([list(e[1:]) for e in events[1:]],
                         [[4, "A.Next", 10], [5, "A.Next", 20], [6, "A.Next", 30]])

    def test_call_outside_a_read_written_at_once(self) -> None:
        """A call made outside a read is written at once."""
        protocol, transport = self.connected()
        transport.clear()
        protocol.call("A.B", 1)
        self.assertEqual(transport.value(), encode_frame([0, 1, "A.B", 1]))

    def test_pong_answered_through_the_connection(self) -> None:
        """A PING from the server is answered with a PONG in the same read."""
        protocol, transport = self.connected()
        transport.clear()
        protocol.dataReceived(encode_frame([7, b"x"]))
        self.assertEqual(transport.value(), encode_frame([8, b"x"]))
