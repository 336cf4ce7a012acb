"""
Tests for the phases of L{rpcd.server.sniffer.SniffingProtocol}
(L{rpcd.server.sniffer.Phase}, L{rpcd.server.sniffer.NEXT_PHASES}).
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcd.core.service import ServiceRegistry
from rpcd.server import RPCServer
from rpcd.server.sniffer import NEXT_PHASES, Phase, SniffingProtocol


def _sniffer(protocols: frozenset[str]) -> tuple[SniffingProtocol, StringTransport]:
    server = RPCServer(ServiceRegistry(), Clock())
    protocol = server.factory(protocols).buildProtocol(IPv4Address("TCP", "10.0.0.1", 40000))
    assert isinstance(protocol, SniffingProtocol)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class PhaseTests(SynchronousTestCase):
    """
    A connection goes through named phases, along one table.
    """

    def test_table(self) -> None:
        """Every phase is in the table, and nothing leaves LOST."""
        self.assertEqual(set(NEXT_PHASES), set(Phase))
        self.assertEqual(NEXT_PHASES[Phase.LOST], frozenset())

    def test_sniffed_then_drained(self) -> None:
        """A sniffed connection is handed over, drains, then is lost."""
        protocol, _ = _sniffer(frozenset({"native", "json"}))
        self.assertIs(protocol.phase, Phase.SNIFFING)
        protocol.dataReceived(b'{"method": "A.B", "params": [], "id": 1}\n')
        self.assertIs(protocol.phase, Phase.HANDED_OVER)
        protocol.drain("going away")
        self.assertIs(protocol.phase, Phase.DRAINING)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIs(protocol.phase, Phase.LOST)

    def test_refused(self) -> None:
        """A protocol the endpoint does not serve closes the connection, saying why; later bytes change nothing."""
        protocol, transport = _sniffer(frozenset({"native", "gob"}))
        protocol.dataReceived(b'{"method": "A.B"}')
        self.assertIs(protocol.phase, Phase.CLOSING)
        self.assertIn("is not served on this endpoint", protocol.closing_why or "")
        protocol.dataReceived(b"\x00RPCD\x01\x00\x00")
        self.assertIs(protocol.phase, Phase.CLOSING)
        self.assertIsNone(protocol.inner)

    def test_lost_stays_lost(self) -> None:
        """Once lost, closing it again changes nothing."""
        protocol, _ = _sniffer(frozenset({"native", "gob"}))
        protocol.connectionLost(Failure(ConnectionDone()))
        protocol.stop_now("late")
        self.assertIs(protocol.phase, Phase.LOST)
        self.assertIsNone(protocol.closing_why)
