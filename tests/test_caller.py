"""
One interface for something you can call (L{rpcd.core.interfaces.ICaller})
and one way attribute access builds service proxies.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from rpcd.client.client import BlockingClient, Client, ServiceAttributes, ServiceProxy
from rpcd.cluster.balancer import Balancer
from rpcd.cluster.retry import RetryingClient, RetryPolicy
from rpcd.core.interfaces import ICaller
from rpcd.examples.arith import Arith
from rpcd.testing import MemoryConnection


class CallerTests(SynchronousTestCase):
    """
    The client, the balancer and the retrying client are all an L{ICaller}.
    """

    def test_client_and_balancer_provide_icaller(self) -> None:
        """Client, Balancer and RetryingClient implement every method of ICaller."""
        for cls in (Client, Balancer, RetryingClient):
            self.assertTrue(verifyClass(ICaller, cls))

    def test_retrying_client_calls_through_proxy(self) -> None:
        """A RetryingClient over an in-memory client is an ICaller whose service proxy calls the method."""
        conn = MemoryConnection([Arith()])
        retrying = RetryingClient(conn.client, RetryPolicy(), Clock())
        self.assertTrue(verifyObject(ICaller, retrying))
        d = retrying.Arith.Multiply(A=7, B=8)
        conn.flush()
        self.assertEqual(self.successResultOf(d), 56)

    def test_one_proxy(self) -> None:
        """Every caller, the blocking client too, builds its proxies with the one ServiceAttributes mixin."""
        for cls in (Client, BlockingClient, Balancer, RetryingClient):
            self.assertTrue(issubclass(cls, ServiceAttributes), cls)
            self.assertNotIn("__getattr__", vars(cls), cls)
        conn = MemoryConnection([Arith()])
        self.assertIsInstance(conn.client.Arith, ServiceProxy)
        self.assertRaises(AttributeError, getattr, conn.client, "_private")
