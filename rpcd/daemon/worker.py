"""
One worker process of a daemon with C{server.workers} above 1
(C{python -m rpcd.daemon.worker}, started by L{rpcd.daemon.workers}).

A worker is the ordinary daemon (L{rpcd.daemon.make_service}: drain on
SIGTERM, reload on SIGHUP) with three differences:

 - it does not listen: the supervisor accepts and passes each connection
   over a Unix socket pair (L{ConnectionReceiver}), and L{PassingReactor}
   turns the endpoint's C{listenTCP}/C{listenUNIX}/C{listenSSL} into a
   L{PassedPort} holding the factory the endpoint built, so every endpoint
   string rpcd accepts (C{tcp:}, C{unix:}, C{ssl:}, C{rpcd-tls:},
   C{mtls:}) keeps its own wrapping (TLS) in every worker;
 - its log events go to the supervisor as JSON lines on standard output,
   and its C{sd_notify} messages (C{READY=1}) on file descriptor 3; when
   standard input ends (the supervisor is gone), it drains and exits;
 - its process-shared services are proxies to the supervisor (L{rpcd.daemon.owner}),
   and only worker 0 dials the reverse connections and registers in
   discovery.

It serves C{Worker.Info}: its index, pid and the number of workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import sys
from typing import Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IFileDescriptorReceiver, IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import FilteringLogObserver, Logger, globalLogBeginner, jsonFileLogObserver
from zope.interface import directlyProvides, implementer, providedBy

from rpcd.daemon.config import Config, ConfigError, load, with_listen
from rpcd.core.service import exposed

log = Logger()

#: The file descriptor a worker writes its C{sd_notify} messages to.
CONTROL_FD = 3
#: The file descriptor the supervisor passes connections on.
CONNECTIONS_FD = 4


@implementer(IListeningPort)
class PassedPort:
    """
    A listener of a worker: the supervisor accepts, and hands the
    connection over (L{ConnectionReceiver}); stopping it (a drain) closes
    any connection passed later.

    @ivar factory: the factory the endpoint listened with (TLS-wrapped for
        a TLS endpoint).
    """

    def __init__(self, factory: Any, address: Any, family: int) -> None:
        self.factory = factory
        self.address = address
        self.family = family
        self.accepting = False

    def startListening(self) -> None:
        if not self.accepting:
            self.accepting = True
            self.factory.doStart()

    def stopListening(self) -> None:
        if self.accepting:
            self.accepting = False
            self.factory.doStop()

    def getHost(self) -> Any:
        return self.address


def listener_address(item: list[Any]) -> tuple[Any, int]:
    """
    @param item: an address as L{rpcd.daemon.workers} passes it.
    @return: the Twisted address and the socket family.
    """
    if item[0] == "unix":
        return UNIXAddress(item[1].encode("utf-8", "surrogateescape")), socket.AF_UNIX
    if item[0] == "tcp6":
        return IPv6Address("TCP", item[1], item[2]), socket.AF_INET6
    return IPv4Address("TCP", item[1], item[2]), socket.AF_INET


class PassingReactor:
    """
    The reactor a worker parses its listening endpoints with: every
    attribute is the real reactor's, but C{listenTCP}, C{listenUNIX} and
    C{listenSSL} make a L{PassedPort} for the next listener, in the order
    of C{server.listen}, with the factory the endpoint built.

    @ivar ports: the ports made, by listener index.
    """

    def __init__(self, reactor: Any, addresses: list[list[Any]]) -> None:
        self._reactor = reactor
        self._addresses = [listener_address(item) for item in addresses]
        self.ports: list[PassedPort] = []
        directlyProvides(self, *providedBy(reactor))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _listen(self, factory: Any, what: str) -> PassedPort:
        index = len(self.ports)
        if index >= len(self._addresses):
            raise RuntimeError(f"the supervisor passed no address for {what} listener {index}")
        address, family = self._addresses[index]
        port = PassedPort(factory, address, family)
        port.startListening()
        self.ports.append(port)
        return port

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return self._listen(factory, "TCP")

    def listenUNIX(self, address: Any, factory: Any, backlog: int = 50, mode: int = 0o666,
                   wantPID: int = 0) -> Any:
        return self._listen(factory, "Unix")

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        from twisted.protocols.tls import TLSMemoryBIOFactory
        return self._listen(TLSMemoryBIOFactory(contextFactory, False, factory), "TLS")


@implementer(IFileDescriptorReceiver)
class ConnectionReceiver(Protocol):
    """
    Takes the connections the supervisor passes (a file descriptor and a
    byte naming the listener) and starts serving each with its listener's
    factory.
    """

    def __init__(self, reactor: Any, ports: list[PassedPort]) -> None:
        self.reactor = reactor
        self.ports = ports
        self.descriptors: list[int] = []

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self.descriptors.append(descriptor)

    def dataReceived(self, data: bytes) -> None:
        for listener in data:
            if not self.descriptors:
                log.error("rpcd worker: a connection was announced without its descriptor")
                return
            descriptor = self.descriptors.pop(0)
            try:
                port = self.ports[listener] if listener < len(self.ports) else None
                if port is not None and port.accepting:
                    self.reactor.adoptStreamConnection(descriptor, port.family, port.factory)
            except Exception:
                log.failure("rpcd worker: cannot serve a passed connection")
            finally:
                os.close(descriptor)  # adoptStreamConnection duplicated it

    def connectionLost(self, reason: Any = None) -> None:
        for descriptor in self.descriptors:
            os.close(descriptor)
        self.descriptors = []


class Worker:
    """Which worker process serves this connection."""

    def __init__(self, index: int, count: int) -> None:
        self.index = index
        self.count = count

    @exposed
    def Info(self) -> dict[str, int]:
        """Return this worker's index, process id and the number of workers."""
        return {"index": self.index, "pid": os.getpid(), "workers": self.count}


class _Control(Protocol):
    """
    The supervisor's end: standard input (its end means the supervisor is
    gone) and L{CONTROL_FD} (sd_notify messages for it).
    """

    def __init__(self, gone: Callable[[], None]) -> None:
        self.gone = gone

    def notify(self, message: str) -> None:
        if self.transport is not None:
            self.transport.write(message.encode("ascii") + b"\n")

    def connectionLost(self, reason: Any = None) -> None:
        self.gone()


def worker_config(loaded: Config, original: Config, index: int) -> Config:
    """
    What one worker serves of a config: the listeners it started with (the
    supervisor's sockets do not change on a reload), and the reverse
    connections and discovery only in worker 0.

    @param loaded: the config read.
    @param original: the config at start.
    @param index: the worker's index.
    @return: the worker's config.
    """
    changes: dict[str, Any] = {"listen": original.listen, "workers": original.workers}
    if index != 0:
        changes.update(connect=(), discovery=None)
    return dataclasses.replace(loaded, **changes)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """
    @param argv: the arguments after the program name.
    @return: the worker's options.
    """
    parser = argparse.ArgumentParser(prog="python -m rpcd.daemon.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--listen", action="append", default=[])
    parser.add_argument("--service", action="append", default=[])
    parser.add_argument("--listeners", default="[]", help="the listeners' addresses (JSON)")
    parser.add_argument("--owner", default=None, help="the owner's Unix socket (rpcd.daemon.owner)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """
    Run one worker until it is told to stop (SIGTERM: drain) or the
    supervisor goes away.

    @param argv: the arguments (C{sys.argv[1:]} when None).
    """
    from twisted.internet import reactor as global_reactor
    from twisted.internet.stdio import StandardIO

    from rpcd.core.mallocopts import pin_mmap_threshold
    from rpcd.core.quickexit import freeze_at_exit
    from rpcd.daemon import make_service
    from rpcd.daemon.reload import ReloadService
    from rpcd.daemon.tap import second_signal_stops

    freeze_at_exit()
    pin_mmap_threshold()
    reactor: Any = global_reactor
    options = parse_args(sys.argv[1:] if argv is None else argv)

    def read() -> Config:
        loaded = load(options.config)
        if options.listen:
            loaded = with_listen(loaded, options.listen)
        return loaded

    try:
        original = read()
    except ConfigError as e:
        raise SystemExit(f"rpcd worker {options.index}: {e}") from None
    config = worker_config(original, original, options.index)
    passing = PassingReactor(reactor, json.loads(options.listeners))
    wrap = None
    if options.owner is not None:
        from rpcd.daemon.owner import OwnerLink, wrap_for_worker
        link = OwnerLink(options.owner, reactor)
        wrap = wrap_for_worker(link)
        # Dialled at once, before connections come: not by the first call.
        reactor.callWhenRunning(lambda: link.client().addErrback(lambda f: None))
    top = make_service(config, reactor, options.service,
                       listen_reactor=passing, wrap_services=wrap)
    reloader = top.reloader
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(jsonFileLogObserver(sys.stdout, recordSeparator=""), [reloader.level])],
        redirectStandardIO=False)
    top.rpc_server.registry.add(Worker(options.index, options.count))

    stopping: list[bool] = []

    def gone() -> None:
        if not stopping and reactor.running:
            log.warn("rpcd worker {index}: the supervisor is gone; draining", index=options.index)
            reactor.stop()
    control = _Control(gone)
    StandardIO(control, stdin=0, stdout=CONTROL_FD)  # type: ignore[call-arg]  # POSIX's has them
    top._notify = control.notify
    receiver = Factory.forProtocol(lambda: ConnectionReceiver(reactor, passing.ports))
    reactor.adoptStreamConnection(CONNECTIONS_FD, socket.AF_UNIX, receiver)
    os.close(CONNECTIONS_FD)

    reload_service = ReloadService(reloader, lambda: worker_config(read(), original, options.index),
                                   reactor)
    reload_service.setServiceParent(top)
    top.services.remove(reload_service)
    top.services.insert(0, reload_service)
    top.on_drain = second_signal_stops(reactor)

    def stop() -> Any:
        stopping.append(True)
        return top.stopService()

    def ignore_interrupts() -> None:
        # Ctrl-C reaches the whole process group; the supervisor passes it
        # on as SIGTERM, which must be the first signal a worker sees (a
        # second one stops it at once).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    top.privilegedStartService()
    reactor.callWhenRunning(ignore_interrupts)
    reactor.callWhenRunning(top.startService)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    # A drain is a clean stop, whatever signal asked for it.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
