"""
Tests for L{rpcd.sniffer.SniffingProtocol} beyond the limits (which
C{tests.test_limits} covers).
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from rpcd.server import RPCServer
from rpcd.service import ServiceRegistry
from rpcd.sniffer import SniffingProtocol


class WhenReadyTests(SynchronousTestCase):
    """L{SniffingProtocol.when_ready} always fires."""

    def test_after_loss_before_hand_over(self) -> None:
        """Asked after the connection was lost before any hand-over, it fails with the loss's reason."""
        server = RPCServer(ServiceRegistry(), Clock())
        protocol = server.factory().buildProtocol(IPv4Address("TCP", "10.0.0.1", 40000))
        assert isinstance(protocol, SniffingProtocol)
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(ConnectionLost("gone")))
        self.failureResultOf(protocol.when_ready(), ConnectionLost)

    def test_before_loss(self) -> None:
        """Asked before the connection was lost, it fails once it is lost."""
        server = RPCServer(ServiceRegistry(), Clock())
        protocol = server.factory().buildProtocol(IPv4Address("TCP", "10.0.0.1", 40000))
        assert isinstance(protocol, SniffingProtocol)
        protocol.makeConnection(StringTransport())
        d = protocol.when_ready()
        self.assertNoResult(d)
        protocol.connectionLost(Failure(ConnectionLost("gone")))
        self.failureResultOf(d, ConnectionLost)


def _sniffer(server: RPCServer) -> tuple[SniffingProtocol, StringTransport]:
    protocol = server.factory().buildProtocol(IPv4Address("TCP", "10.0.0.1", 40000))
    assert isinstance(protocol, SniffingProtocol)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class ClosingTests(SynchronousTestCase):
    """A connection being closed by the sniffer stays closed, quietly."""

    def test_bytes_after_refusal_are_dropped(self) -> None:
        """Bytes arriving after a refusal are neither sniffed again nor logged again."""
        server = RPCServer(ServiceRegistry(), Clock())
        protocol = server.factory(frozenset({"native", "gob"})).buildProtocol(
            IPv4Address("TCP", "10.0.0.1", 40000))
        assert isinstance(protocol, SniffingProtocol)
        protocol.makeConnection(StringTransport())
        with capturedLogs() as events:
            protocol.dataReceived(b'{"method": "A.B"}')
            protocol.dataReceived(b'{"method": "A.B"}')
        closing = [e for e in events if "closing" in e.get("log_format", "")]
        self.assertEqual(len(closing), 1)
        self.assertIsNone(protocol.inner)

    def test_protocol_that_cannot_start(self) -> None:
        """A wire protocol whose constructor fails closes the connection with a logged reason."""
        import rpcd.server.protocols

        def broken(server: object) -> None:
            raise RuntimeError("no memory for you")

        original = rpcd.server.protocols.protocol_class
        self.patch(rpcd.server.protocols, "protocol_class", lambda name: broken if name == "native" else original(name))
        protocol, transport = _sniffer(RPCServer(ServiceRegistry(), Clock()))
        with capturedLogs() as events:
            protocol.dataReceived(b"\x00RPCD\x01\x00\x00")
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertTrue(any("could not start its native protocol" in str(e.get("why")) for e in events))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_protocol_that_cannot_load(self) -> None:
        """A wire protocol whose module cannot be imported closes the connection as not available."""
        import rpcd.server.protocols

        protocols = dict(rpcd.server.protocols.SERVER_PROTOCOLS, native="no.such.module:Protocol")
        self.patch(rpcd.server.protocols, "SERVER_PROTOCOLS", protocols)
        protocol, transport = _sniffer(RPCServer(ServiceRegistry(), Clock()))
        with capturedLogs() as events:
            protocol.dataReceived(b"\x00RPCD\x01\x00\x00")
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertTrue(any("not available in this build" in str(e.get("why")) for e in events))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
