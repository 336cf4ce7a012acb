"""
Reloading a running daemon's config on SIGHUP, without dropping connections.

Three steps, each its own piece:
  - L{diff}: a pure function from the old and the new L{Config} to the
    L{Change}s between them, one per service, limit, user, setting,
    listener or reverse connection; no reactor.
  - L{Reloader.prepare}: everything that can fail is done before anything
    changes: the new file is read and checked (L{rpcd.daemon.config.load}), new
    services are found and built once, new endpoint strings are parsed and
    the TLS certificate files are read again.  A failure raises
    L{ConfigError} naming the file and the key; the old config keeps
    serving.
  - L{Reloader.apply}: the changes are applied in place: services are added
    to and removed from the registry, the limits, users and C{[http]}
    settings swapped (new connections get the new limits, existing ones the
    timeouts), new TLS handshakes use the re-read certificates, removed
    listeners stop accepting (their connections go on until they close), and
    reverse connections are started and stopped.  Each change is logged on
    one line.

L{ReloadService} installs the SIGHUP handler.  SIGHUP also reopens the log
files (L{reopen_log_files}), for C{logrotate}.
"""

from __future__ import annotations

import dataclasses
import signal
from typing import Any, Callable, Iterable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogPublisher,
)
from twisted.python.logfile import BaseLogFile

from rpcd.core.twistedcompat import filtered_observer, log_observers, observer_file, waiting_for_port
from rpcd.daemon.logtext import faster_text_logs
from rpcd.daemon.config import Config, ConfigError, ConnectConfig, ListenConfig
from rpcd.daemon.registry import build_registry, resolve_services, with_backlog

log = Logger()

#: What a reload cannot change in a running daemon; a change is logged as
#: needing a restart.
RESTART_ONLY = ("discovery", "auth.login_threads", "auth.login_queue")


@dataclasses.dataclass(frozen=True)
class Change:
    """
    One difference between two configs.

    @ivar kind: C{service}, C{limit}, C{user}, C{auth}, C{http}, C{listen},
        C{connect}, C{log_level}, C{backlog} or C{restart}.
    @ivar action: C{added}, C{removed} or C{changed}.
    @ivar key: what changed, as the config names it.
    @ivar old: the old value (text), or None.
    @ivar new: the new value (text), or None.
    """

    kind: str
    action: str
    key: str
    old: str | None = None
    new: str | None = None

    def describe(self) -> str:
        """
        @return: the change in one line, for the log.
        """
        if self.kind == "restart":
            return f"{self.key} changed: needs a restart to take effect"
        if self.action == "changed" and self.old is not None:
            return f"{self.key} changed: {self.old} -> {self.new}"
        return f"{self.key} {self.action}"


def _by(items: Iterable[Any], key: Callable[[Any], Any]) -> dict[Any, Any]:
    return {key(item): item for item in items}


def _fields(kind: str, prefix: str, old: Any, new: Any, skip: tuple[str, ...] = ()) -> list[Change]:
    changes = []
    for field in dataclasses.fields(old):
        if field.name in skip:
            continue
        a, b = getattr(old, field.name), getattr(new, field.name)
        if a != b:
            key = f"{prefix}.{field.name}"
            if key in RESTART_ONLY:
                changes.append(Change("restart", "changed", key))
            else:
                changes.append(Change(kind, "changed", key, repr(a), repr(b)))
    return changes


def _keyed(kind: str, old: dict[Any, Any], new: dict[Any, Any],
           name: Callable[[Any], str]) -> list[Change]:
    changes = []
    for key in old:
        if key not in new:
            changes.append(Change(kind, "removed", name(key)))
    for key in new:
        if key not in old:
            changes.append(Change(kind, "added", name(key)))
        elif old[key] != new[key]:
            changes.append(Change(kind, "changed", name(key)))
    return changes


def connect_key(item: ConnectConfig) -> tuple[str, str | None, int]:
    return (item.endpoint, item.protocol, item.connections)


def diff(old: Config, new: Config) -> list[Change]:
    """
    The differences between two configs, in the order they are applied.

    Users are named, never their hashes.  A listener whose endpoint string
    is the same but whose protocols or backlog changed is C{changed}; a
    reverse connection is keyed by endpoint, protocol and count, so any
    change to one is a removal and an addition.

    @param old: the config serving now.
    @param new: the config read again.
    @return: the changes; empty when nothing changed.
    """
    changes = _keyed("service", _by(old.services, lambda s: s.name),
                     _by(new.services, lambda s: s.name), lambda n: f"services.{n}")
    changes += _fields("limit", "limits", old.limits, new.limits)
    changes += _keyed("user", dict(old.auth.users), dict(new.auth.users), lambda n: f"auth.users.{n}")
    changes += _fields("auth", "auth", old.auth, new.auth, skip=("users",))
    changes += _fields("http", "http", old.http, new.http)
    if old.log_level != new.log_level:
        changes.append(Change("log_level", "changed", "server.log_level", old.log_level, new.log_level))
    if old.backlog != new.backlog:
        changes.append(Change("backlog", "changed", "server.backlog", str(old.backlog), str(new.backlog)))
    changes += _keyed("listen", _by(old.listen, lambda item: item.endpoint),
                      _by(new.listen, lambda item: item.endpoint), lambda e: f"server.listen {e}")
    changes += _keyed("connect", _by(old.connect, connect_key), _by(new.connect, connect_key),
                      lambda k: f"server.connect {k[0]} ({k[1] or 'sniffed'} x{k[2]})")
    if old.discovery != new.discovery:
        changes.append(Change("restart", "changed", "discovery"))
    return changes


@dataclasses.dataclass
class Prepared:
    """
    A checked new config and what was built from it, ready to apply.

    @ivar config: the new config.
    @ivar changes: L{diff} of the old and the new config.
    @ivar services: the resolved specs of the services to add, by name.
    @ivar endpoints: the parsed endpoints of the listeners to add, by
        endpoint string.
    @ivar tls: each staying TLS listener's endpoint string, its policy and
        the options read again from its files.
    """

    config: Config
    changes: list[Change]
    services: dict[str, Any]
    endpoints: dict[str, Any]
    tls: list[tuple[str, Any, Any]]


class Reloader:
    """
    The running parts of a daemon that a reload changes, and the reload.

    @ivar config: the config serving now.
    @ivar server: the L{rpcd.server.RPCServer}.
    @ivar top: the daemon's top service (listeners and diallers are its
        children).
    @ivar listeners: each listener's service, by endpoint string.
    @ivar connects: each reverse connection entry's services, by
        (endpoint, protocol, count).
    """

    def __init__(self, config: Config, server: Any, top: MultiService, reactor: Any,
                 only: Iterable[str] = ()) -> None:
        self.config = config
        self.server = server
        self.top = top
        self.reactor = reactor
        self.only = tuple(only)
        self.listeners: dict[str, StreamServerEndpointService] = {}
        self.connects: dict[tuple[str, str | None, int], list[IService]] = {}
        self.level = LogLevelFilterPredicate(LogLevel.levelWithName(config.log_level))

    def prepare(self, new: Config) -> Prepared:
        """
        Check a new config and build what it needs, changing nothing.

        @param new: the config read again.
        @return: what L{apply} takes.
        @raise ConfigError: a service, endpoint or certificate is wrong; the
            message names the file and the key.
        """
        changes = diff(self.config, new)
        wanted = {c.key.partition(".")[2] for c in changes
                  if c.kind == "service" and c.action != "removed"}
        services: dict[str, Any] = {}
        if wanted and not self.only:
            resolved = [(spec, entry) for spec, entry in resolve_services(new) if entry.name in wanted]
            try:
                build_registry(resolved)  # the constructors accept their options
            except ConfigError as e:
                raise ConfigError(f"{new.source}: {e}") from None
            services = {entry.name: (spec, entry) for spec, entry in resolved}
        endpoints: dict[str, Any] = {}
        for item in new.listen:
            if item.endpoint in self.listeners:
                continue
            try:
                endpoints[item.endpoint] = serverFromString(
                    self.reactor, with_backlog(item.endpoint, item.backlog or new.backlog))
            except Exception as e:
                raise ConfigError(f"{new.source}: server.listen: bad endpoint "
                                  f"{item.endpoint!r}: {e}") from None
        for change in changes:
            if change.kind == "connect" and change.action == "added":
                from rpcd.client.client import client_from_string
                endpoint = change.key.split(" ")[1]
                try:
                    client_from_string(self.reactor, endpoint)
                except Exception as e:
                    raise ConfigError(f"{new.source}: server.connect: bad client endpoint "
                                      f"{endpoint!r}: {e}") from None
        tls = []
        for endpoint, policy in self._tls_policies(new):
            try:
                options = policy.prepare()
            except (OSError, ValueError) as e:
                raise ConfigError(f"{new.source}: server.listen {endpoint}: cannot read the "
                                  f"TLS certificate files again: {e}") from None
            if options is not None:
                tls.append((endpoint, policy, options))
        return Prepared(new, changes, services, endpoints, tls)

    def _tls_policies(self, new: Config) -> list[tuple[str, Any]]:
        """
        @return: the endpoint strings and TLS policies of the listeners that
            stay (new ones read their files as they are built).
        """
        from rpcd.tls.endpoints import tls_policy
        staying = {item.endpoint for item in new.listen}
        policies = []
        for endpoint, listener in self.listeners.items():
            policy = tls_policy(listener.endpoint)
            if endpoint in staying and policy is not None:
                policies.append((endpoint, policy))
        return policies

    def apply(self, prepared: Prepared) -> list[str]:
        """
        Apply a prepared config and log each change on one line.

        @param prepared: from L{prepare}.
        @return: the lines logged.
        """
        new = prepared.config
        lines = []
        for change in prepared.changes:
            try:
                self._apply(change, prepared)
            except Exception as e:
                line = f"rpcd reload: {change.describe()}: not applied: {e}"
                log.error("{line}", line=line)
            else:
                line = f"rpcd reload: {change.describe()}"
                log.info("{line}", line=line)
            lines.append(line)
        for endpoint, policy, options in prepared.tls:
            old_serial = policy.serial
            policy.swap(options)
            if policy.serial != old_serial:
                line = (f"rpcd reload: server.listen {endpoint}: TLS certificate changed: "
                        f"serial {old_serial:x} -> {policy.serial:x}")
                log.info("{line}", line=line)
                lines.append(line)
        self.config = new
        if not lines:
            log.info("rpcd reload: {source}: nothing changed", source=new.source)
        return lines

    def _apply(self, change: Change, prepared: Prepared) -> None:
        new = prepared.config
        server = self.server
        if change.kind == "service":
            name = change.key.partition(".")[2]
            if self.only:
                raise ValueError("the daemon serves only its --service names")
            if change.action in ("removed", "changed"):
                server.registry.remove(name)
            if change.action in ("added", "changed"):
                spec, entry = prepared.services[name]
                server.registry.add(spec, dict(entry.options), access=entry)
        elif change.kind == "limit":
            set_limits(server, new.limits)
        elif change.kind in ("user", "auth"):
            set_auth(server, new.auth, self.top, self.reactor)
        elif change.kind == "http":
            server.http = new.http
        elif change.kind == "log_level":
            self.level.setLogLevelForNamespace("", LogLevel.levelWithName(new.log_level))
        elif change.kind == "listen":
            self._listen(change, prepared)
        elif change.kind == "connect":
            self._connect(change, new)

    def _listen(self, change: Change, prepared: Prepared) -> None:
        endpoint = change.key.split(" ", 1)[1]
        item = _by(prepared.config.listen, lambda i: i.endpoint).get(endpoint)
        if change.action == "removed":
            # Stops accepting; the connections it accepted go on until they close.
            listener = self.listeners.pop(endpoint)
            listener.disownServiceParent()
            draining = getattr(self.top, "listeners", None)
            if draining is not None and listener in draining:
                draining.remove(listener)
        elif change.action == "added":
            assert item is not None
            self.add_listener(item, prepared.endpoints[endpoint])
        else:
            assert item is not None
            listener = self.listeners[endpoint]
            listener.factory.protocols = frozenset(item.protocols)
            old = _by(self.config.listen, lambda i: i.endpoint)[endpoint]
            if old.backlog != item.backlog:
                raise ValueError("a listener's backlog changes only with a restart")

    def add_listener(self, item: ListenConfig, endpoint: Any) -> StreamServerEndpointService:
        """
        Listen on one more endpoint (at start or on reload).

        @param item: its config.
        @param endpoint: the parsed server endpoint.
        @return: the listener's service, a child of L{top}.
        """
        listener = StreamServerEndpointService(endpoint, self.server.factory(item.protocols))
        self.listeners[item.endpoint] = listener
        if self.top.running:
            listener.setServiceParent(self.top)
            draining = getattr(self.top, "listeners", None)
            if draining is not None:
                draining.append(listener)  # a drain stops it too
            waiting = waiting_for_port(listener)
            if waiting is not None:
                waiting.addCallbacks(
                    lambda port: _log_listening(port, item.endpoint),
                    lambda f: log.error("rpcd reload: cannot listen on {endpoint!r}: {reason}",
                                        endpoint=item.endpoint, reason=f.getErrorMessage()))
        return listener

    def _connect(self, change: Change, new: Config) -> None:
        key = next(k for k in (connect_key(c) for c in (*self.config.connect, *new.connect))
                   if change.key == f"server.connect {k[0]} ({k[1] or 'sniffed'} x{k[2]})")
        if change.action == "removed":
            for service in self.connects.pop(key, []):
                service.disownServiceParent()
            return
        from rpcd.daemon.reverse import reverse_services
        services = reverse_services([ConnectConfig(key[0], key[2], key[1])], self.server, self.reactor)
        self.connects[key] = services
        for service in services:
            service.setServiceParent(self.top)

    def reload(self, read: Callable[[], Config]) -> list[str] | None:
        """
        Read the config again and apply it, or log why not.

        @param read: reads and checks the config (L{rpcd.daemon.config.load}).
        @return: the lines logged for the changes, or None if the new config
            was refused (the old one keeps serving).
        """
        try:
            prepared = self.prepare(read())
        except ConfigError as e:
            log.error("rpcd reload refused, the old config keeps serving: {error}", error=str(e))
            return None
        return self.apply(prepared)


def set_limits(server: Any, limits: Any) -> None:
    """
    Swap a server's L{rpcd.server.limits.Limits}: connections made later get all of
    them; existing connections follow the timeouts read as they run (the
    idle timeout), the connection caps and the input budget; the per-frame
    sizes they were built with stay.

    @param server: the L{rpcd.server.RPCServer}.
    @param limits: the new limits.
    """
    server.limits = limits
    server.caps.limits = limits
    server.input_budget.limit = limits.input_budget_bytes
    server.turns.slice_seconds = limits.turn_slice


def set_auth(server: Any, auth: Any, top: MultiService, reactor: Any) -> None:
    """
    Swap the users and login throttling: the sessions share the
    authenticator, so logins on existing connections check the new users
    too.

    @param server: the L{rpcd.server.RPCServer}.
    @param auth: the new L{rpcd.daemon.config.AuthConfig}.
    @param top: the daemon's top service (a new hashing pool joins it).
    @param reactor: the reactor.
    """
    from rpcd.daemon.login import Authenticator, LoginThrottle, UserStore
    current = server.authenticator
    if current is None:
        if not auth.users:
            return
        current = Authenticator(auth, reactor)
        current.pool.setServiceParent(top)
        server.authenticator = current
        return
    current.users = UserStore(auth.users, reactor, run=current.pool.submit)
    current.throttle = LoginThrottle(reactor, auth.max_failed_logins,
                                     auth.max_failed_logins_per_user, auth.failed_login_window)


def _log_listening(port: Any, endpoint: str) -> Any:
    address = port.getHost()
    log.info("rpcd reload: listening on {host}:{port} ({endpoint})",
             host=getattr(address, "host", address), port=getattr(address, "port", ""),
             endpoint=endpoint)
    return port


def reopen_log_files(publisher: Any = globalLogPublisher) -> int:
    """
    Reopen the log files twistd writes (C{--logfile}), so that a file
    C{logrotate} moved away is created again.

    @param publisher: the log publisher whose observers write the files.
    @return: how many files were reopened.
    """
    reopened = 0
    for observer in list(log_observers(publisher) or ()):
        out = observer_file(filtered_observer(observer))
        if isinstance(out, BaseLogFile):
            out.reopen()
            reopened += 1
    return reopened


def filter_levels(predicate: LogLevelFilterPredicate, publisher: Any = globalLogPublisher) -> None:
    """
    Put every observer of a publisher behind a level filter, so that
    C{server.log_level} applies to what twistd writes and a reload can change
    it.

    @param predicate: the filter; changing its level takes effect at once.
    @param publisher: the publisher (twistd's global one).
    """
    observers = log_observers(publisher)
    if observers is None:
        return
    for index, observer in enumerate(list(observers)):
        if not isinstance(observer, FilteringLogObserver):
            observers[index] = FilteringLogObserver(observer, [predicate])


class ReloadService(Service):
    """
    Reloads the config on SIGHUP (and reopens the log files).

    @ivar reloader: the L{Reloader}.
    @ivar read: reads and checks the config again.
    """

    def __init__(self, reloader: Reloader, read: Callable[[], Config], reactor: Any) -> None:
        self.reloader = reloader
        self.read = read
        self.reactor = reactor
        self._previous: Any = None

    def privilegedStartService(self) -> None:
        # Before the listeners listen (this service is its parent's first
        # child), so that a HUP sent once the daemon says it listens never
        # meets the default action, which kills the process.
        super().privilegedStartService()
        self._previous = signal.signal(signal.SIGHUP, self._signalled)

    def startService(self) -> None:
        super().startService()
        # twistd's text lines made faster, before the level filters wrap them.
        faster_text_logs(reactor=self.reactor)
        filter_levels(self.reloader.level)

    def stopService(self) -> Any:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return super().stopService()

    def _signalled(self, number: int, frame: Any) -> None:
        self.reactor.callFromThread(self.hangup)

    def hangup(self) -> None:
        """
        What SIGHUP does: reopen the log files, then reload the config.
        """
        reopened = reopen_log_files()
        log.info("rpcd: SIGHUP: reloading {source} (log files reopened: {count})",
                 source=self.reloader.config.source, count=reopened)
        self.reloader.reload(self.read)


__all__ = ["Change", "Reloader", "ReloadService", "diff", "reopen_log_files", "set_limits"]

connect_key = connect_key  # the old name, for code written before it was public
