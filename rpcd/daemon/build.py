"""
Turning a checked L{rpcd.daemon.config.Config} into running services.

Kept apart from C{rpcd.daemon.tap} so that tests can build a daemon on a
C{MemoryReactor}; C{rpcd.daemon.tap} only adds twistd's options and the global
reactor.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any, Iterable

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.plugin import getPlugins

from rpcd.core.twistedcompat import raise_synchronously, waiting_for_port
from rpcd.daemon.builtin import Discovery, Health, Introspection
from rpcd.daemon.config import Config, ConfigError, ServiceConfig
from rpcd.daemon.drain import DaemonService
from rpcd.core.health import HealthState
from rpcd.core.interfaces import IRPCServiceProvider
from rpcd.daemon.plugins import load_object
from rpcd.server.fairness import TurnScheduler
from rpcd.server import RPCServer
from rpcd.core.service import ServiceRegistry, ServiceSpec, describe_service

log = Logger()


def service_plugins() -> dict[str, IRPCServiceProvider]:
    """
    @return: every service offered by a Twisted plugin on the path, by name.
    """
    import twisted.plugins
    return {p.name: p for p in getPlugins(IRPCServiceProvider, twisted.plugins)}


def resolve_services(config: Config, only: Iterable[str] = ()) -> list[tuple[ServiceSpec, ServiceConfig]]:
    """
    Find and describe the service classes a config asks for.

    @param config: the config.
    @param only: if given, serve exactly these names (from the config when it
        has them, with their options; else from plugins).
    @return: each service's spec with its config entry.
    @raise ConfigError: a service cannot be found or its class exposes
        nothing; the message names the service and the config file.
    """
    make_importable(config)
    wanted = list(config.services)
    if only:
        by_name = {s.name: s for s in config.services}
        wanted = [by_name.get(name, ServiceConfig(name)) for name in only]
    plugins: dict[str, IRPCServiceProvider] | None = None
    resolved = []
    for entry in wanted:
        try:
            if entry.class_path is not None:
                cls = load_object(entry.class_path)
            else:
                if plugins is None:
                    plugins = service_plugins()
                plugin = plugins.get(entry.name)
                if plugin is None:
                    raise ValueError(f"no plugin provides it and no 'class' is given "
                                     f"(plugins found: {', '.join(sorted(plugins)) or 'none'})")
                cls = plugin.load()
            if not isinstance(cls, type):
                raise ValueError(f"{entry.class_path!r} is not a class")
            spec = describe_service(cls, entry.name)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{config.source}: services.{entry.name}: {e}") from None
        resolved.append((spec, entry))
    return resolved


def make_importable(config: Config) -> None:
    """
    Put the directories a config's C{module:Class} paths are imported from
    first on C{sys.path}, as C{python -m} does: C{server.pythonpath}'s, in
    order, then the working directory (twistd, unlike C{python}, does not
    put it there).

    @param config: the config.
    """
    cwd = os.getcwd()
    wanted = [*config.pythonpath, cwd]
    present = {os.path.abspath(p or os.curdir) for p in sys.path}
    for path in reversed(wanted):
        if path not in present:
            sys.path.insert(0, path)
            present.add(path)


def build_registry(services: list[tuple[ServiceSpec, ServiceConfig]] | list[tuple[object, ServiceConfig]],
                   source: str | None = None) -> ServiceRegistry:
    """
    Instantiate the services.

    @param services: from L{resolve_services}; or, from L{rpcd.daemon.embed},
        already built instances in place of the specs.
    @param source: the config file, for messages.
    @return: a registry with them and the built-in services.
    @raise ConfigError: a constructor rejected its options (the message
        names the file, the service and the options), or a name is taken.
    """
    registry = ServiceRegistry()
    where = f"{source}: " if source else ""
    for spec, entry in services:
        try:
            registry.add(spec, dict(entry.options), name=entry.name, access=entry)
        except TypeError as e:
            raise ConfigError(f"{where}services.{entry.name}.options: {e}") from None
        except ValueError as e:
            raise ConfigError(f"{where}services.{entry.name}: {e}") from None
    from rpcd.daemon.grpcstd import STANDARD  # gRPC health and reflection
    for builtin in (Introspection, Health, *STANDARD):
        if registry.spec(builtin.__name__) is None:
            registry.add(builtin(registry))
    if registry.spec("rpc") is None:  # OpenRPC's rpc.discover
        registry.add(Discovery(registry))
    return registry


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
                 objects: list[tuple[object, ServiceConfig]] | None = None, *,
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
_TAKES_BACKLOG = frozenset({"tcp", "tcp6", "unix", "ssl", "rpcd-tls", "mtls"})


def with_backlog(endpoint: str, backlog: int) -> str:
    """
    Give a server endpoint string a listen queue length, unless it has one.

    @param endpoint: a Twisted server endpoint string.
    @param backlog: the length (C{server.backlog}).
    @return: C{endpoint}, with C{:backlog=N} added if its type takes one
        and it does not set it already.
    """
    fields = re.split(r"(?<!\\):", endpoint)
    if fields[0].strip().lower() not in _TAKES_BACKLOG:
        return endpoint
    if any(f.strip().startswith("backlog=") for f in fields[1:]):
        return endpoint
    return f"{endpoint}:backlog={backlog}"


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
