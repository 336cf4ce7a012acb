"""
The old, flat import paths of rpcd's modules, kept working for now.

rpcd's modules used to sit side by side in C{rpcd/}; they now live in packages
by role (see C{docs/architecture.md}).  Code written against the old paths
keeps working: C{import rpcd.balancer} returns the very module object
C{rpcd.cluster.balancer}, so attributes patched through either name are the
same attributes.  A module that moved is imported only when its old name is
imported.

The four old modules whose names became packages (C{rpcd.server},
C{rpcd.client}, C{rpcd.daemon}, C{rpcd.cli}) re-export the moved module's
names from the package with L{forward}.

New code imports the new paths; the linter's contracts only see those.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Callable, Sequence

#: Old module name -> the module it is now.
MOVED: dict[str, str] = {
    "rpcd.service": "rpcd.core.service",
    "rpcd.convert": "rpcd.core.convert",
    "rpcd.context": "rpcd.core.context",
    "rpcd.session": "rpcd.core.session",
    "rpcd.dispatch": "rpcd.core.dispatch",
    "rpcd.interfaces": "rpcd.core.interfaces",
    "rpcd.interceptors": "rpcd.core.interceptors",
    "rpcd.protos": "rpcd.core.protos",
    "rpcd.health": "rpcd.core.health",
    "rpcd.keepalive": "rpcd.core.keepalive",
    "rpcd.accesslog": "rpcd.middleware.accesslog",
    "rpcd.tracing": "rpcd.middleware.tracing",
    "rpcd.ratelimit": "rpcd.middleware.ratelimit",
    "rpcd.sniffer": "rpcd.server.sniffer",
    "rpcd.streams": "rpcd.server.streams",
    "rpcd.backpressure": "rpcd.server.backpressure",
    "rpcd.budget": "rpcd.server.budget",
    "rpcd.limits": "rpcd.server.limits",
    "rpcd.metrics": "rpcd.server.metrics",
    "rpcd.statuspage": "rpcd.server.statuspage",
    "rpcd.wire.native": "rpcd.server.native",
    "rpcd.wire.gobserver": "rpcd.server.gobserver",
    "rpcd.wire.jsonserver": "rpcd.server.jsonserver",
    "rpcd.wire.jsoncalls": "rpcd.server.jsoncalls",
    "rpcd.wire.httpserver": "rpcd.server.httpserver",
    "rpcd.wire.grpcserver": "rpcd.server.grpcserver",
    "rpcd.wire.grpccall": "rpcd.server.grpccall",
    "rpcd.client_streams": "rpcd.client.streams",
    "rpcd.wire.native_client": "rpcd.client.native",
    "rpcd.wire.channel": "rpcd.client.channel",
    "rpcd.wire.gobclient": "rpcd.client.gobclient",
    "rpcd.wire.jsonclient": "rpcd.client.jsonclient",
    "rpcd.grpc_client": "rpcd.client.grpc",
    "rpcd.grpc_client_protos": "rpcd.client.grpc_protos",
    "rpcd.grpc_client_streams": "rpcd.client.grpc_streams",
    "rpcd.balancer": "rpcd.cluster.balancer",
    "rpcd.backend": "rpcd.cluster.subchannel",
    "rpcd.pickers": "rpcd.cluster.pickers",
    "rpcd.breaker": "rpcd.cluster.breaker",
    "rpcd.retry": "rpcd.cluster.retry",
    "rpcd.retry_streams": "rpcd.cluster.retry_streams",
    "rpcd.hedging": "rpcd.cluster.hedging",
    "rpcd.resolver": "rpcd.cluster.resolver",
    "rpcd.discovery": "rpcd.cluster.discovery",
    "rpcd.etcd": "rpcd.cluster.etcd",
    "rpcd.config": "rpcd.daemon.config",
    "rpcd.tap": "rpcd.daemon.tap",
    "rpcd.plugins": "rpcd.daemon.plugins",
    "rpcd.reload": "rpcd.daemon.reload",
    "rpcd.sdnotify": "rpcd.daemon.sdnotify",
    "rpcd.drain": "rpcd.daemon.drain",
    "rpcd.reverse": "rpcd.daemon.reverse",
    "rpcd.auth": "rpcd.daemon.auth",
    "rpcd.login": "rpcd.daemon.login",
    "rpcd.hashpool": "rpcd.daemon.hashpool",
    "rpcd.builtin": "rpcd.daemon.builtin",
    "rpcd.grpcstd": "rpcd.daemon.grpcstd",
    "rpcd.tlsinfo": "rpcd.tls.tlsinfo",
    "rpcd.endpoints": "rpcd.tls.endpoints",
    "rpcd.certs": "rpcd.tls.certs",
    "rpcd.cli_stream": "rpcd.cli.stream",
}

#: Old module name that is now a package -> the module holding its old content.
BECAME_PACKAGE: dict[str, str] = {
    "rpcd.server": "rpcd.server.factory",
    "rpcd.client": "rpcd.client.client",
    "rpcd.daemon": "rpcd.daemon.build",
    "rpcd.cli": "rpcd.cli.main",
}


class _Alias(importlib.abc.Loader):
    """
    Load an old module name as the module it moved to.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: Any = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system set __spec__ (and only that) to the old name's spec.
        module.__spec__ = self.spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """
    Find the modules named in L{MOVED} under their old names.
    """

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """
    Make the old module names importable (once per interpreter).
    """
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())


def forward(package: str) -> Callable[[str], Any]:
    """
    A module C{__getattr__} for a package whose name was a module: names it
    does not define are looked up, on first use, in the module that holds
    the old module's content (L{BECAME_PACKAGE}).

    @param package: the package's name, e.g. C{"rpcd.client"}.
    @return: the C{__getattr__} function (PEP 562).
    """
    target = BECAME_PACKAGE[package]

    def __getattr__(name: str) -> Any:
        if name.startswith("__") or _is_submodule(package, name):
            # A submodule's name is the import system's to load: C{from
            # rpcd.daemon import auth} asks for it here first, and must not
            # import the old module's whole content (for rpcd.daemon, the
            # server) on the way.
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            return getattr(importlib.import_module(target), name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__


@functools.lru_cache(maxsize=None)
def _is_submodule(package: str, name: str) -> bool:
    """
    @param package: a package's name (imported).
    @param name: an attribute looked up on it.
    @return: whether the package has a submodule of that name.
    """
    path = getattr(sys.modules.get(package), "__path__", None)
    return path is not None and importlib.machinery.PathFinder.find_spec(
        f"{package}.{name}", path) is not None
