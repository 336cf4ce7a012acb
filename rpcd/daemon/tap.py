"""
C{twistd rpcd}: the command-line options and the service twistd runs.

The only module that touches the global reactor.
"""

from __future__ import annotations


import signal
import sys
from typing import Any, Callable, NoReturn

from twisted.application.service import IService
from twisted.python import usage

from rpcd.daemon import config as config_module
from rpcd.daemon.config import ConfigError


class Options(usage.Options):
    """
    C{twistd rpcd} options.  Command-line options override the config file.
    """

    synopsis = "[--config PATH] [--listen ENDPOINT]... [--service NAME]..."
    longdesc = ("Run the rpcd RPC daemon. Without --config it runs on an embedded "
                "default: the seed demo services on tcp:1234:interface=127.0.0.1. "
                "Every listening endpoint speaks rpcd's native protocol, Go's net/rpc "
                "(gob, HTTP CONNECT, jsonrpc) and JSON-RPC 2.0 over HTTP.")
    optParameters = [
        ["config", "c", None, "The TOML config file (default: the embedded default, "
                              "the same as etc/rpcd.toml)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["service"] = []

    def opt_listen(self, endpoint: str) -> None:
        """
        A Twisted server endpoint string to listen on, e.g.
        tcp:1234:interface=127.0.0.1 (repeatable; replaces the config's list).
        """
        self["listen"].append(endpoint)

    def opt_service(self, name: str) -> None:
        """
        Serve this service (repeatable; replaces the config's list; a name
        the config does not have is looked up among the plugins).
        """
        self["service"].append(name)

    opt_l = opt_listen

    def postOptions(self) -> None:
        try:
            loaded = config_module.load(self["config"])
            if self["listen"]:
                loaded = config_module.with_listen(loaded, self["listen"])
            if not loaded.listen and not loaded.connect:
                raise ConfigError(f"{loaded.source}: nothing to do: no server.listen "
                                  "and no server.connect (or give --listen)")
            from rpcd.daemon.build import resolve_services
            self.services = resolve_services(loaded, self["service"])
        except ConfigError as e:
            # One line, not twistd's whole usage text first (it prints that
            # for a UsageError).
            config_exit(e)
        self.loaded = loaded


#: The daemon's exit status for a config error (the file, --listen,
#: --service, a service's options): command-line usage, as the rpcd
#: command's 2.  0 is a clean stop (drained), 1 a start that failed
#: otherwise (an endpoint that cannot listen, twistd's own usage errors).
EXIT_CONFIG = 2


def config_exit(error: ConfigError, stderr: Any = None) -> NoReturn:
    """
    Stop twistd for a config error: one line on standard error naming the
    file and the key, exit status L{EXIT_CONFIG}.

    @param error: the error.
    @param stderr: where the line goes (C{sys.stderr} if None).
    @raise SystemExit: always.
    """
    out = sys.stderr if stderr is None else stderr
    out.write(f"rpcd: {error}\n")
    out.flush()
    raise SystemExit(EXIT_CONFIG)


for _option in (Options.opt_listen, Options.opt_service):
    # twistd joins a docstring's lines keeping their indentation, which
    # then shows in --help's wrapped text.
    _option.__doc__ = " ".join((_option.__doc__ or "").split())


def makeService(options: Options) -> IService:
    """
    Build the daemon from checked options.

    @param options: parsed L{Options}.
    @return: the service twistd runs.
    """
    from twisted.internet import reactor

    from rpcd.core.quickexit import freeze_at_exit
    freeze_at_exit()
    from rpcd.core.mallocopts import pin_mmap_threshold
    pin_mmap_threshold()
    if options.loaded.workers > 1:
        from rpcd.daemon.workers import make_supervisor
        return make_supervisor(options, reactor, read_config)
    from rpcd.daemon.build import make_service
    from rpcd.daemon.reload import ReloadService
    try:
        # The services postOptions resolved (the plugin scan and the
        # classes' description are not done twice).
        top = make_service(options.loaded, reactor, options["service"],
                           objects=options.services)
    except ConfigError as e:
        config_exit(e)
    reloader = top.reloader  # type: ignore[attr-defined]
    reload_service = ReloadService(reloader, lambda: read_config(options), reactor)
    reload_service.setServiceParent(top)
    top.services.remove(reload_service)  # first: its SIGHUP handler is in before anything listens
    top.services.insert(0, reload_service)
    top.on_drain = second_signal_stops(reactor)
    return top


def read_config(options: Options) -> config_module.Config:
    """
    Read the config file again, as the options say (C{--listen} still
    replaces its listeners), for a reload.

    @param options: the daemon's parsed L{Options}.
    @return: the checked config.
    @raise ConfigError: the file is wrong.
    """
    loaded = config_module.load(options["config"])
    if options["listen"]:
        loaded = config_module.with_listen(loaded, options["listen"])
    return loaded


def second_signal_stops(reactor: Any) -> Callable[[Any], None]:
    """
    Once a drain has begun (the first SIGTERM or SIGINT), the next one
    stops at once instead of reaching twistd's handler (which cannot stop a
    reactor that is already stopping); the daemon exits 0.
    """
    def install(daemon: Any) -> None:
        # A drain is a clean stop: exit 0, not by the signal (which twistd
        # re-raises after the reactor stops).
        if getattr(reactor, "_exitSignal", None) is not None:
            reactor._exitSignal = None

        def stop(signum: int, frame: Any) -> None:
            reactor.callFromThread(daemon.stop_now)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)
    return install


__all__ = ["Options", "makeService", "EXIT_CONFIG"]
