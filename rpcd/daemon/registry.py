"""
From the config to the services a daemon serves: service plugins,
C{module:Class} services and their options, the import path they need,
the registry with the built-in services, and listen-queue lengths on
endpoint strings.  Used by L{rpcd.daemon.build} when the daemon starts and
by L{rpcd.daemon.reload} when a SIGHUP adds services.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Iterable

from twisted.logger import Logger
from twisted.plugin import getPlugins

from rpcd.core.interfaces import IRPCServiceProvider
from rpcd.core.service import ServiceRegistry, ServiceSpec, describe_service
from rpcd.daemon.builtin import Discovery, Health, Introspection
from rpcd.daemon.config import Config, ConfigError, ServiceConfig
from rpcd.daemon.plugins import load_object

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


__all__ = ["build_registry", "make_importable", "resolve_services", "service_plugins", "with_backlog"]
