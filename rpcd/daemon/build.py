"""
Turning a checked L{rpcd.daemon.config.Config} into running services.

Kept apart from C{rpcd.daemon.tap} so that tests can build a daemon on a
C{MemoryReactor}; C{rpcd.daemon.tap} only adds twistd's options and the global
reactor.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from rpcd.core.twistedcompat import raise_synchronously, waiting_for_port
from rpcd.daemon.config import Config, ConfigError, ServiceConfig
from rpcd.daemon.drain import DaemonService
from rpcd.core.health import HealthState
from rpcd.server.fairness import TurnScheduler
from rpcd.server import RPCServer
from rpcd.core.service import ServiceRegistry, ServiceSpec
from rpcd.daemon.registry import (  # noqa: F401 (re-exported: this module's names of old)
    build_registry,
    make_importable,
    resolve_services,
    service_plugins,
    with_backlog,
)

log = Logger()


def make_server(config: Config, registry: ServiceRegistry, reactor: Any) -> RPCServer:
    """
    The shared state of a daemon's connections; with C{[http] metrics},
    its L{rpcd.server.metrics.Metrics}, kept by an interceptor put first in the
    registry's chain.

    @param config: the config.
    @param registry: the services.
    @param reactor: the reactor.
    @return: the server.
    """
    authenticator = None
    if config.auth.users:
        from rpcd.daemon.login import Authenticator
        authenticator = Authenticator(config.auth, reactor)
    server = RPCServer(registry, reactor, config.limits, authenticator)
    server.turns = TurnScheduler(reactor, config.limits.turn_slice, time.thread_time)
    server.http = config.http  # type: ignore[attr-defined]  # read by rpcd.server.httpserver
    if config.http.metrics:
        from rpcd.server.metrics import Metrics, MetricsInterceptor
        server.metrics = Metrics(server)
        # First in the chain: it times and counts what the others do too.
        registry.interceptors = (MetricsInterceptor(server.metrics), *registry.interceptors)
    return server


def make_service(config: Config, reactor: Any, only: Iterable[str] = (),
                 objects: list[tuple[ServiceSpec, ServiceConfig]]
                 | list[tuple[object, ServiceConfig]] | None = None, *,
                 listen_reactor: Any = None, wrap_services: Any = None) -> DaemonService:
    """
    Everything a daemon runs: the login hashing pool (when there are users),
    a listener per endpoint, a dialler per reverse connection, and its
    registration in etcd (started last, stopped first); it drains before it
    stops (L{rpcd.daemon.drain}).

    @param config: the checked config.
    @param reactor: the reactor to listen and dial with.
    @param only: restrict to these service names (C{--service}).
    @param objects: serve these (built instances or specs, each with its
        entry) instead of the config's C{[services]} (L{rpcd.daemon.embed}).
    @param listen_reactor: the reactor the listening endpoints are parsed
        with (a worker's adopts the supervisor's sockets: L{rpcd.daemon.worker});
        C{reactor} when None.
    @param wrap_services: a function from the resolved services to those
        registered (a worker's proxies the process-shared ones:
        L{rpcd.daemon.owner}), or None.
    @return: a service to start.
    @raise ConfigError: a service or endpoint is wrong.
    """
    resolved = resolve_services(config, only) if objects is None else objects
    if wrap_services is not None:
        resolved = wrap_services(resolved)
    registry = build_registry(resolved, config.source)
    if config.interceptors:
        from rpcd.core.interceptors import load_all
        try:
            registry.interceptors = load_all(config.interceptors, reactor)
        except ValueError as e:
            raise ConfigError(f"{config.source}: {e}") from None
    health = HealthState(registry)  # not ready until every listener listens
    registry.health = health  # type: ignore[attr-defined]
    server = make_server(config, registry, reactor)
    top = DaemonService(server, health, config.shutdown_grace)
    if server.authenticator is not None:
        # First in, so it runs before any listener accepts and is stopped
        # (its threads joined) after they have all stopped.
        server.authenticator.pool.setServiceParent(top)
    names = ", ".join(s.name for s in registry.services())
    from rpcd.daemon.reload import Reloader, connect_key
    reloader = Reloader(config, server, top, reactor, only)
    top.reloader = reloader  # type: ignore[attr-defined]
    listeners = []
    for item in config.listen:
        try:
            endpoint = serverFromString(listen_reactor or reactor,
                                        with_backlog(item.endpoint, item.backlog or config.backlog))
        except Exception as e:
            raise ConfigError(f"{config.source}: server.listen: bad endpoint {item.endpoint!r}: {e}") from None
        listener = reloader.add_listener(item, endpoint)
        raise_synchronously(listener)
        listener.setServiceParent(top)
        listeners.append(listener)
        top.listeners.append(listener)
        _announce(listener, item.endpoint, names)
    if config.connect:
        from rpcd.daemon.reverse import reverse_services
        for index, connect in enumerate(config.connect):
            try:
                services = reverse_services([connect], server, reactor)
            except ConfigError as e:  # it numbers its one entry [0]: name the file's
                raise ConfigError(f"{config.source}: "
                                  + str(e).replace("server.connect[0]", f"server.connect[{index}]", 1)) from None
            reloader.connects.setdefault(connect_key(connect), []).extend(services)
            for service in services:
                service.setServiceParent(top)
    if config.discovery is not None:
        from rpcd.cluster.discovery import registration
        top.discovery = registration(config.discovery, [s.name for s in registry.services()],
                                     listeners, reactor)
        top.discovery.setServiceParent(top)
    return top


#: The server endpoint types that take C{backlog=}: Twisted's and rpcd's TLS ones.
def _announce(listener: StreamServerEndpointService, endpoint: str, names: str) -> None:
    original = listener.privilegedStartService

    def start() -> None:
        try:
            original()
        except CannotListenError as e:
            # The OS's reason and the endpoint as the user wrote it, not a
            # traceback through twistd's internals.
            log.critical("rpcd cannot listen on {endpoint!r}: {reason}",
                         endpoint=endpoint, reason=e.socketError)
            raise SystemExit(1) from None
        waiting = waiting_for_port(listener)
        if waiting is not None:
            waiting.addCallback(log_listening, endpoint, names)

    listener.privilegedStartService = start  # type: ignore[method-assign]


def log_listening(port: Any, endpoint: str, names: str) -> Any:
    address = port.getHost()
    host, number = getattr(address, "host", None), getattr(address, "port", None)
    name = getattr(address, "name", address)
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    where = f"{host}:{number}" if number is not None else str(name)
    log.info("rpcd listening on {where} ({endpoint}) serving {services}",
             where=where, endpoint=endpoint, services=names)
    return port
