"""
Serving objects without twistd or a config file: C{rpcd.serve} for a
script, L{service_for} for an existing Twisted application, and L{start}
for tests.

    import rpcd
    rpcd.serve([Arith(), Users()], listen=["tcp:9000:interface=127.0.0.1"],
               limits={"max_frame_bytes": 1 << 20})

The keywords are the config file's keys: C{[server]}'s (C{listen},
C{connect}, C{backlog}, C{log_level}, C{shutdown_grace}, C{pythonpath}) and
the tables C{limits}, C{auth}, C{http}, C{discovery} and C{interceptors}.
They are checked by L{rpcd.daemon.config.check}, as the file is, and the daemon
is built by L{rpcd.daemon.make_service}, as C{twistd rpcd} builds it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Iterable, Mapping

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from rpcd.core.twistedcompat import waiting_for_port
from rpcd.daemon.config import Config, ConfigError, ServiceConfig, check
from rpcd.daemon.drain import DaemonService

log = Logger()

#: What messages about C{serve()}'s keywords name in place of a file.
SOURCE = "rpcd.serve()"

#: Where C{serve()} listens when not told: loopback, port 9000.
DEFAULT_LISTEN = ("tcp:9000:interface=127.0.0.1",)

_SERVER_KEYS = frozenset({"connect", "backlog", "log_level", "shutdown_grace", "pythonpath"})
_TABLES = frozenset({"limits", "auth", "http", "discovery", "interceptors"})


def config_for(listen: Iterable[str] = DEFAULT_LISTEN, **options: Any) -> Config:
    """
    Check C{serve()}'s keywords as the config file's keys.

    @param listen: server endpoint strings (C{server.listen}).
    @param options: the other keys (see the module docstring); a table is a
        dict (C{limits} may also be an L{rpcd.server.limits.Limits}).
    @return: the config, with no C{[services]}.
    @raise ConfigError: a keyword is unknown or a value is wrong; the
        message names C{rpcd.serve()} and the key as the config's would.
    """
    if isinstance(listen, str):
        listen = [listen]
    server: dict[str, Any] = {"listen": _toml(list(listen))}
    data: dict[str, Any] = {"server": server}
    for key, value in options.items():
        if key in _SERVER_KEYS:
            server[key] = _toml(value)
        elif key in _TABLES:
            data[key] = _toml(value)
        else:
            known = ", ".join(sorted({"listen", *_SERVER_KEYS, *_TABLES}))
            raise ConfigError(f"{SOURCE}: unknown keyword {key!r} (known keywords: {known})")
    config = check(data, SOURCE, base=os.getcwd())
    if not config.listen and not config.connect:
        raise ConfigError(f"{SOURCE}: nothing to do: no listen and no connect")
    return config


def _toml(value: Any) -> Any:
    """
    Python values as TOML's parser would give them (lists, dicts), so that
    the config's checks apply unchanged.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _toml(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_toml(v) for v in value]
    return value


def _entries(services: Iterable[object] | Mapping[str, object]) -> list[tuple[object, ServiceConfig]]:
    """
    Name each object to serve as the registry would.

    @param services: instances (shared by every connection) or classes
        (built with no arguments, or per connection when marked so), or a
        mapping of service name to either.
    @return: (object, entry) pairs for L{rpcd.daemon.make_service}.
    @raise ConfigError: an object exposes nothing or two share a name.
    """
    from rpcd.core.service import describe_service
    named = services.items() if isinstance(services, Mapping) else ((None, s) for s in services)
    entries: list[tuple[object, ServiceConfig]] = []
    seen: set[str] = set()
    for name, obj in named:
        cls = obj if isinstance(obj, type) else type(obj)
        try:
            spec = describe_service(cls, name, per_connection=None if isinstance(obj, type) else False)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{SOURCE}: services.{name or cls.__name__}: {e}") from None
        if spec.name in seen:
            raise ConfigError(f"{SOURCE}: services.{spec.name}: two services have this name "
                              "(pass a dict of name to object to rename one)")
        seen.add(spec.name)
        entries.append((spec if isinstance(obj, type) else obj, ServiceConfig(spec.name)))
    return entries


def service_for(services: Iterable[object] | Mapping[str, object],
                listen: Iterable[str] = DEFAULT_LISTEN, *, reactor: Any = None,
                **options: Any) -> DaemonService:
    """
    The daemon as an C{IService}, to add to an existing Twisted application
    (C{service_for([...]).setServiceParent(application)}).  It listens when
    started and drains when stopped, as C{twistd rpcd} does.

    @param services: see L{serve}.
    @param listen: server endpoint strings.
    @param reactor: the reactor; the global one if None.
    @param options: the config's keys (see the module docstring).
    @return: the service, not started.
    @raise ConfigError: an option or service is wrong.
    """
    if reactor is None:
        from twisted.internet import reactor
    from rpcd.daemon.build import make_service
    return make_service(config_for(listen, **options), reactor, objects=_entries(services))


@dataclasses.dataclass
class Running:
    """
    A started daemon (L{start}).

    @ivar service: its L{DaemonService}.
    @ivar ports: its listening ports, in C{listen}'s order.
    """

    service: DaemonService
    ports: list[Any]

    @property
    def port(self) -> int:
        """
        The first listener's port number (for C{tcp:0}).
        """
        return int(self.ports[0].getHost().port)

    @property
    def endpoint(self) -> str:
        """
        A client endpoint string for the first listener (C{tcp:HOST:PORT} or
        C{unix:PATH}).
        """
        address = self.ports[0].getHost()
        if hasattr(address, "port"):
            return f"tcp:{address.host}:{address.port}"
        name = address.name.decode() if isinstance(address.name, bytes) else address.name
        return f"unix:{name}"

    def stop(self) -> Deferred[None]:
        """
        Drain and stop.

        @return: a Deferred firing with None once stopped.
        """
        return self.service.stopService()


def start(services: Iterable[object] | Mapping[str, object],
          listen: Iterable[str] = ("tcp:0:interface=127.0.0.1",), *, reactor: Any = None,
          **options: Any) -> Deferred[Running]:
    """
    Start serving in a running reactor, for tests: on a free loopback port
    unless told otherwise.

        running = await rpcd.daemon.embed.start([Arith()])
        self.addCleanup(running.stop)
        client = await connect(running.endpoint)

    @param services: see L{serve}.
    @param listen: server endpoint strings.
    @param reactor: the reactor; the global one if None.
    @param options: the config's keys.
    @return: a Deferred firing with a L{Running} once every listener
        listens; failing with L{CannotListenError}.
    @raise ConfigError: an option or service is wrong.
    """
    top = service_for(services, listen, reactor=reactor, **options)

    async def listening() -> Running:
        _start(top)
        waiting = [w for w in (waiting_for_port(s) for s in top.listeners)
                   if w is not None]
        results = await DeferredList(waiting, fireOnOneErrback=True, consumeErrors=True)
        return Running(top, [port for _, port in results])
    return Deferred.fromCoroutine(listening())


def _start(top: DaemonService) -> None:
    """
    Start a daemon; a listener that cannot listen raises its
    L{CannotListenError}, not the C{SystemExit} twistd's side wants.
    """
    try:
        top.privilegedStartService()
        top.startService()
    except SystemExit as e:
        if isinstance(e.__context__, CannotListenError):
            raise e.__context__ from None
        raise


def serve(services: Iterable[object] | Mapping[str, object],
          listen: Iterable[str] = DEFAULT_LISTEN, *, reactor: Any = None,
          log_to: Any = "stderr", **options: Any) -> None:
    """
    Serve objects until Ctrl-C or SIGTERM, which drain as the daemon does
    (a second one stops at once); then return.  Runs the reactor, so once
    per process: in a notebook or an application that runs its own
    reactor, use L{service_for} or L{start}.

    @param services: instances (shared by every connection) or classes
        (built with no arguments, or per connection when marked
        C{@service(per_connection=True)}), or a dict of service name to
        either.
    @param listen: server endpoint strings (default: loopback port 9000).
    @param reactor: the reactor; the global one if None.
    @param log_to: a text file the log goes to (at C{log_level}):
        C{sys.stderr} as it is when called by default; None to leave
        logging as it is.
    @param options: the config's keys (see the module docstring), checked
        as the config file's are.
    @raise ConfigError: an option or service is wrong; nothing was started.
    @raise CannotListenError: an endpoint cannot listen.
    """
    if reactor is None:
        from twisted.internet import reactor
    top = service_for(services, listen, reactor=reactor, **options)
    if log_to is not None:
        _log_to(sys.stderr if log_to == "stderr" else log_to, top.reloader.level)  # type: ignore[attr-defined]
    from rpcd.daemon.tap import second_signal_stops
    top.on_drain = second_signal_stops(reactor)
    _start(top)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()


def _log_to(out: Any, level: Any) -> None:
    from twisted.logger import (
        FilteringLogObserver,
        globalLogBeginner,
        textFileLogObserver,
    )
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(out), [level])],
                                     redirectStandardIO=False)


__all__ = ["serve", "service_for", "start", "config_for", "Running"]
