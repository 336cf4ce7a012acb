"""
Tests for L{rpcd.sniffer.SniffingProtocol} beyond the limits (which
C{tests.test_limits} covers).
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
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
