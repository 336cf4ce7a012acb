"""
The health of a daemon and of each of its services: the one source that the
built-in C{Health} service, gRPC's C{grpc.health.v1.Health}, and the HTTP
probes C{GET /healthz} and C{GET /readyz} all read.

A service sets its own status through the registry's health object, e.g.
from a handler::

    @exposed
    def Pause(self, ctx: CallContext) -> None:
        ctx.session.registry.health.set_status("Arith", False)

The daemon as a whole (service name C{""}) is ready only between the moment
it listens and the moment it starts draining (L{rpcd.daemon.drain}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from rpcd.core.service import ServiceRegistry

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
SERVICE_UNKNOWN = "SERVICE_UNKNOWN"

# Watchers at once, across all services: each is a running stream, already
# bounded by max_calls_per_connection and max_connections; this bounds the
# list itself.
MAX_WATCHERS = 100_000


class HealthState:
    """
    Serving statuses: the daemon's readiness and per-service overrides.

    @ivar ready: whether the daemon takes new work (False while starting and
        while draining).
    @ivar draining: whether the daemon is shutting down.
    """

    def __init__(self, registry: ServiceRegistry | None = None) -> None:
        """
        @param registry: the daemon's services (to know which names exist);
            None: every name exists.
        """
        self.registry = registry
        self.ready = False
        self.draining = False
        self._overrides: dict[str, bool] = {}
        self._watchers: list[Deferred[None]] = []
        self._listeners: list[Callable[[], None]] = []

    def known(self, service: str) -> bool:
        """
        @param service: an rpcd service name, or C{""} for the daemon.
        @return: whether it is served here (or was given a status).
        """
        if service == "" or service in self._overrides or self.registry is None:
            return True
        return self.registry.spec(service) is not None

    def serving(self, service: str = "") -> bool | None:
        """
        @param service: an rpcd service name, or C{""} for the daemon.
        @return: whether it is serving, or None when it is unknown.  A
            service is not serving while the daemon is not ready.
        """
        if not self.known(service):
            return None
        if not self.ready:
            return False
        return self._overrides.get(service, True)

    def status(self, service: str = "") -> str:
        """
        @param service: an rpcd service name, or C{""} for the daemon.
        @return: C{"SERVING"}, C{"NOT_SERVING"} or C{"SERVICE_UNKNOWN"}.
        """
        serving = self.serving(service)
        if serving is None:
            return SERVICE_UNKNOWN
        return SERVING if serving else NOT_SERVING

    def set_status(self, service: str, serving: bool) -> None:
        """
        Set what a service (or, with C{""}, the daemon) reports; watchers
        are told at once.  The daemon's own readiness still applies: while
        it starts or drains, everything is NOT_SERVING.

        @param service: an rpcd service name, or C{""}.
        @param serving: SERVING or NOT_SERVING.
        """
        self._overrides[service] = bool(serving)
        self._changed()

    def set_ready(self, ready: bool) -> None:
        """
        The daemon listens (True) or starts draining (False).

        @param ready: whether it takes new work.
        """
        if ready == self.ready:
            return
        self.ready = ready
        self._changed()

    def on_change(self, listener: Callable[[], None]) -> None:
        """
        Call C{listener()} on every change (gRPC's health service uses it).

        @param listener: called with no arguments.
        """
        self._listeners.append(listener)

    def changed(self) -> Deferred[None]:
        """
        @return: a Deferred firing with None at the next change; cancelling
            it forgets it.
        @raise RuntimeError: over L{MAX_WATCHERS} are waiting.
        """
        if len(self._watchers) >= MAX_WATCHERS:
            raise RuntimeError(f"over {MAX_WATCHERS} health watchers")
        d: Deferred[None] = Deferred(self._forget)
        self._watchers.append(d)
        return d

    def _forget(self, d: Deferred[None]) -> None:
        if d in self._watchers:
            self._watchers.remove(d)

    def _changed(self) -> None:
        watchers, self._watchers = self._watchers, []
        for d in watchers:
            d.callback(None)
        for listener in list(self._listeners):
            listener()


def health_of(registry: ServiceRegistry) -> HealthState:
    """
    The registry's health state, made on first use.

    @param registry: a daemon's services.
    @return: its L{HealthState}.
    """
    state = getattr(registry, "health", None)
    if state is None:
        state = HealthState(registry)
        state.ready = True  # a registry outside a daemon (tests) is ready
        registry.health = state  # type: ignore[attr-defined]
    return state


__all__ = ["HealthState", "NOT_SERVING", "SERVING", "SERVICE_UNKNOWN", "health_of"]
