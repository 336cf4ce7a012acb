"""
Service discovery for L{rpcd.cluster.balancer}: a resolver names the endpoints a
balancer spreads calls over.

A static list (L{StaticResolver}) and etcd (L{rpcd.cluster.discovery.EtcdResolver})
ship.  A resolver backed by DNS (SRV records) implements L{IResolver} the
same way; the balancer asks it again every C{resolve_interval} seconds and
connects to endpoints that appear and drops those that went away::

    balancer = await connect_balanced(MyDNSResolver("_rpcd._tcp.example.com"),
                                      resolve_interval=30, reactor=reactor)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer


class ResolverError(Exception):
    """
    A resolver could not find the endpoints for a reason it can say in
    words (its source is unreachable); the balancer logs it in one line,
    without a traceback.
    """


class IResolver(Interface):
    """
    Finds the endpoints of a service.
    """

    def resolve() -> Deferred[list[Any]]:
        """
        @return: a Deferred firing with the endpoints now: Twisted client
            endpoint strings (C{tcp:10.0.0.5:1234}) or endpoint objects.  It
            may fail (a DNS error, etcd is down: L{ResolverError} for a
            failure it can put in words); the balancer then keeps the
            endpoints it had and logs the failure, as it does for an empty
            list.
        """


class IWatchingResolver(IResolver):
    """
    A resolver that also tells of changes as they happen: a balancer given
    one watches it instead of resolving once (and still asks it every
    C{resolve_interval} seconds if that is given).
    """

    def watch(on_change: Callable[[list[Any]], None]) -> Deferred[None]:
        """
        Report the endpoints now and on every change, until cancelled.

        @param on_change: called with the whole list of endpoints, first as
            soon as they are known, then after each change.
        @return: a Deferred that runs the watch: it fires only when the
            watch ends; cancel it to stop watching.  The resolver deals with
            its source's failures itself (it reports nothing new meanwhile).
        """


@implementer(IResolver)
class StaticResolver:
    """
    A fixed list of endpoints.
    """

    def __init__(self, endpoints: Sequence[Any]) -> None:
        """
        @param endpoints: endpoint strings or endpoint objects.
        @raise ValueError: the list is empty.
        """
        if isinstance(endpoints, str):
            raise ValueError("give a list of endpoint strings, not one string")
        if not endpoints:
            raise ValueError("no endpoints to balance over")
        self.endpoints = list(endpoints)

    def resolve(self) -> Deferred[list[Any]]:
        """
        @return: a Deferred that has fired with the list.
        """
        return succeed(list(self.endpoints))
