"""
Services every daemon serves: introspection and health.
"""

from __future__ import annotations

import dataclasses

from rpcd.service import ServiceRegistry, exposed


class Introspection:
    """Lists the daemon's methods (what C{rpcd list} prints)."""

    def __init__(self, registry: ServiceRegistry) -> None:
        """
        @param registry: the daemon's services.
        """
        self.registry = registry

    @exposed
    def List(self) -> list:
        """Return every Service.Method with its signature and first doc line."""
        return [dataclasses.asdict(info) for info in self.registry.listing()]


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
