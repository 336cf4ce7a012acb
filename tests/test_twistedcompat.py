"""
Canaries for the Twisted private names rpcd relies on
(L{rpcd.core.twistedcompat}): each fails loudly when a Twisted release
changes one, so the fallback is noticed and the code revisited.
"""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool

from rpcd.core.twistedcompat import QuietHTTPConnectionPool, raise_synchronously, waiting_for_port


class _Refusing(MemoryReactor):
    def listenTCP(self, port: int, factory: object, backlog: int = 50, interface: str = "") -> None:  # type: ignore[override]
        raise CannotListenError(interface, port, OSError("address in use"))


def _listener(reactor: MemoryReactor) -> StreamServerEndpointService:
    return StreamServerEndpointService(TCP4ServerEndpoint(reactor, 0), Factory.forProtocol(Protocol))


class CanaryTests(SynchronousTestCase):
    """
    Twisted still has what rpcd reaches into.
    """

    def test_waiting_for_port(self) -> None:
        """A started StreamServerEndpointService keeps a Deferred of its port in _waitingForPort."""
        listener = _listener(MemoryReactor())
        self.assertIsNone(waiting_for_port(listener))
        listener.privilegedStartService()
        waiting = waiting_for_port(listener)
        self.assertIsInstance(waiting, Deferred)
        self.assertIsNotNone(self.successResultOf(waiting).getHost())

    def test_waiting_for_port_fallback(self) -> None:
        """Without the private attribute, waiting_for_port answers None."""
        self.assertIsNone(waiting_for_port(object()))

    def test_raise_synchronously(self) -> None:
        """With _raiseSynchronously set, a listener that cannot listen raises from privilegedStartService."""
        listener = _listener(_Refusing())
        raise_synchronously(listener)
        self.assertRaises(CannotListenError, listener.privilegedStartService)

    def test_quiet_pool(self) -> None:
        """HTTPConnectionPool still builds its connections with _factory, so the quiet pool's factory is used."""
        self.assertIsNot(QuietHTTPConnectionPool, HTTPConnectionPool,
                         "twisted.web.client changed: _HTTP11ClientFactory or HTTPConnectionPool._factory "
                         "is gone; rpcd falls back to the plain (noisy) pool")
        pool = QuietHTTPConnectionPool(MemoryReactor(), persistent=False)
        self.assertFalse(pool._factory.noisy)
