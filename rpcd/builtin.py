"""
Services every daemon serves: introspection and health.
"""

from __future__ import annotations

import dataclasses

from rpcd.context import CallContext
from rpcd.service import ServiceRegistry, exposed


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


class Health:
    """Answers health checks, as load balancers and the client's checks ask."""

    def __init__(self, registry: ServiceRegistry) -> None:
        """
        @param registry: the daemon's services.
        """
        self.registry = registry

    @exposed
    def Check(self, service: str = "") -> str:
        """Return "SERVING", or "SERVICE_UNKNOWN" for a service not served here."""
        if service and self.registry.spec(service) is None:
            return "SERVICE_UNKNOWN"
        return "SERVING"
