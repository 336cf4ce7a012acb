"""
Services every daemon serves: introspection and health.
"""

from __future__ import annotations

import dataclasses
from typing import AsyncIterator

from rpcd.core.context import CallContext
from rpcd.core.health import health_of
from rpcd.core.service import ServiceRegistry, exposed, service
from rpcd.core.schema import registry_document


class Introspection:
    """
    Lists the daemon's methods (what C{rpcd list} prints): those the caller
    may call, so that a service that requires a login is listed once logged
    in, and one that requires a certificate identity to a client that has it.
    """

    def __init__(self, registry: ServiceRegistry) -> None:
        """
        @param registry: the daemon's services.
        """
        self.registry = registry

    @exposed
    def List(self, ctx: CallContext) -> list:
        """Return every Service.Method the caller may call, with signature and first doc line."""
        return [dataclasses.asdict(info) for info in self.registry.listing(ctx.session)]


@service("rpc")
class Discovery:
    """
    OpenRPC's service discovery, C{rpc.discover}: the OpenRPC document of
    the methods the caller may call (L{rpcd.core.schema}), as C{rpcd list}
    filters them.
    """

    def __init__(self, registry: ServiceRegistry) -> None:
        """
        @param registry: the daemon's services.
        """
        self.registry = registry

    @exposed
    def discover(self, ctx: CallContext) -> dict:
        """Return the OpenRPC document of every method the caller may call."""
        return registry_document(self.registry, ctx.session)


class Health:
    """
    Answers health checks, as load balancers and the client's checks ask,
    from the daemon's L{rpcd.core.health.HealthState} (which services set, and
    which says NOT_SERVING while the daemon drains).
    """

    def __init__(self, registry: ServiceRegistry) -> None:
        """
        @param registry: the daemon's services.
        """
        self.registry = registry

    @exposed
    def Check(self, service: str = "") -> str:
        """Return "SERVING", "NOT_SERVING", or "SERVICE_UNKNOWN" for a service not served here."""
        return health_of(self.registry).status(service)

    @exposed
    async def Watch(self, service: str = "") -> AsyncIterator[str]:
        """Send the status now and whenever it changes, until cancelled or the daemon drains."""
        health = health_of(self.registry)
        last = None
        while True:
            status = health.status(service)
            if status != last:
                yield status
                last = status
            if health.draining:
                return  # the last word was NOT_SERVING: a drain does not wait for watchers
            await health.changed()
