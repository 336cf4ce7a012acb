"""
Service discovery through etcd: daemons register what they serve
(L{Registration}), clients find them (L{EtcdResolver}).

The layout in etcd, one key per service a daemon serves::

    {prefix}{Service}/{endpoint}  ->  {"endpoint": "tcp:10.0.0.5:1234", "service": "Arith",
                                       "services": ["Arith", "Health", ...],
                                       "hostname": "web-3", "pid": 4242}

C{endpoint} is the client endpoint string other machines dial (the
C{[discovery] advertise} setting).  Every key of a daemon hangs on one lease
of C{ttl} seconds that the daemon renews every C{ttl/3} seconds: a daemon
that dies without a word leaves etcd after at most C{ttl} seconds, one that
stops cleanly revokes its lease, and its keys vanish at once.

A client balances over every daemon serving C{Arith}::

    resolver = EtcdResolver("http://127.0.0.1:2379", "Arith", reactor=reactor)
    balancer = await connect_balanced(resolver, reactor=reactor)   # watches etcd
"""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any, Callable, Sequence

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.core.twistedcompat import waiting_for_port
from rpcd.cluster.etcd import EtcdClient, EtcdError, LeaseNotFound, event_key
from rpcd.cluster.resolver import IWatchingResolver, ResolverError

log = Logger()

DEFAULT_PREFIX = "/rpcd/services/"
PORT_PLACEHOLDER = "{port}"


def service_key(prefix: str, service: str, endpoint: str) -> str:
    """
    @param prefix: the registry's key prefix.
    @param service: a service name.
    @param endpoint: a daemon's advertised client endpoint string.
    @return: the key that says this daemon serves this service.
    """
    return f"{prefix}{service}/{endpoint}"


def service_value(endpoint: str, service: str, services: Sequence[str], *,
                  hostname: str | None = None, pid: int | None = None) -> bytes:
    """
    @param endpoint: the advertised client endpoint string.
    @param service: the service this key is for.
    @param services: every service the daemon serves.
    @param hostname: the machine's name (this one's by default).
    @param pid: the daemon's process id (this one's by default).
    @return: the JSON value of the service's key.
    """
    return json.dumps({
        "endpoint": endpoint, "service": service, "services": list(services),
        "hostname": socket.gethostname() if hostname is None else hostname,
        "pid": os.getpid() if pid is None else pid,
    }, sort_keys=True).encode("utf-8")


class Registration(Service):
    """
    Keeps a daemon's services registered in etcd while it runs.

    On start it grants a lease, puts one key per service on it and renews
    the lease every third of its TTL.  When the lease is found gone (it
    expired while etcd was unreachable, or etcd lost its data) it registers
    again with a new lease.  Errors talking to etcd are logged in one line
    and retried with backoff; the daemon keeps serving meanwhile.  On stop
    it revokes the lease, so that clients see the daemon leave at once.

    @ivar lease: the lease the keys are on now, or None.
    @ivar endpoint: the advertised endpoint, once known.
    """

    def __init__(self, client: EtcdClient, services: Sequence[str],
                 advertise: str | Callable[[], Deferred[str]], *, prefix: str = DEFAULT_PREFIX,
                 ttl: int = 10, backoff: Callable[[int], float] | None = None) -> None:
        """
        @param client: the etcd client (its reactor is the clock used here).
        @param services: the names of the services to register.
        @param advertise: the client endpoint string others should dial, or
            a function returning a Deferred that fires with it (once the
            daemon listens and knows its port).
        @param prefix: the registry's key prefix.
        @param ttl: the lease's seconds.
        @param backoff: failures in a row (1 for the first) to seconds
            before retrying (1.5 s growing by 1.5 to 10 s, plus up to 1 s
            of jitter, by default).
        """
        self.client = client
        self.clock = client.clock
        self.services = list(services)
        self.advertise = advertise
        self.prefix = prefix
        self.ttl = ttl
        self.backoff = backoff or backoffPolicy(initialDelay=1.0, maxDelay=10.0, factor=1.5)
        self.lease: int | None = None
        self.endpoint: str | None = None
        self._loop: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(self._ended)

    def _ended(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            log.failure("service registration in etcd {url} stopped", failure, url=self.client.url)

    def stopService(self) -> Deferred[None]:
        """
        Stop renewing and revoke the lease.

        @return: a Deferred firing once the lease is revoked, or the attempt
            failed (logged) or took longer than the client's timeout.
        """
        super().stopService()
        if self._loop is not None:
            loop, self._loop = self._loop, None
            loop.cancel()
        lease, self.lease = self.lease, None
        if lease is None:
            return succeed(None)

        def revoked(_: Any) -> None:
            log.info("removed {services} from etcd {url} (lease {lease} revoked)",
                     services=", ".join(self.services), url=self.client.url, lease=lease)

        def failed(failure: Failure) -> None:
            log.warn("could not revoke lease {lease} in etcd: {error}; the keys leave "
                     "when it expires", lease=lease, error=failure.getErrorMessage())
        return self.client.revoke(lease).addCallbacks(revoked, failed)

    def _keys(self, endpoint: str) -> dict[str, bytes]:
        return {service_key(self.prefix, name, endpoint): service_value(endpoint, name, self.services)
                for name in self.services}

    async def _run(self) -> None:
        advertise = self.advertise
        self.endpoint = endpoint = advertise if isinstance(advertise, str) else await advertise()
        keys = self._keys(endpoint)
        url = self.client.url
        failures = 0
        registered = False
        while True:
            try:
                if self.lease is None:
                    self.lease, self.ttl = await self.client.grant(self.ttl)
                    registered = False
                elif not await self.client.keepalive(self.lease):
                    log.warn("lease {lease} in etcd {url} has expired; registering again",
                             lease=self.lease, url=url)
                    self.lease = None
                    continue
                if not registered:
                    for key, value in keys.items():
                        await self.client.put(key, value, self.lease)
                    registered = True
                    log.info("registered {services} as {endpoint} in etcd {url} "
                             "(lease {lease}, {ttl} s)", services=", ".join(self.services),
                             endpoint=endpoint, url=url, lease=self.lease, ttl=self.ttl)
                failures = 0
                delay = max(self.ttl / 3, 0.1)
            except CancelledError:
                raise
            except Exception as e:
                if isinstance(e, LeaseNotFound):
                    self.lease = None
                failures += 1
                registered = False
                delay = self.backoff(failures)
                if isinstance(e, EtcdError):
                    log.warn("service registration: {error}; retrying in {delay:.1f} s "
                             "(rpcd keeps serving)", error=str(e), delay=delay)
                else:
                    log.failure("service registration in etcd {url} failed; retrying in "
                                "{delay:.1f} s", url=url, delay=delay)
            await deferLater(self.clock, delay)


def listener_port(listener: Any) -> Deferred[int]:
    """
    @param listener: a started
        L{twisted.application.internet.StreamServerEndpointService}.
    @return: a Deferred firing with the TCP port it listens on, once it
        does; failing with C{ValueError} if it has no port (a Unix socket),
        or as the listener failed.
    """
    waiting = waiting_for_port(listener)
    if waiting is None:
        raise ValueError("the listener has not started")
    d: Deferred[int] = Deferred()

    def listening(port: Any) -> Any:
        number = getattr(port.getHost(), "port", None)
        if number is None:
            d.errback(ValueError(f"{PORT_PLACEHOLDER} in advertise needs the first "
                                 f"listener to be TCP, not {port.getHost()}"))
        else:
            d.callback(number)
        return port

    def failed(failure: Failure) -> Failure:
        d.errback(failure)
        return failure
    waiting.addCallbacks(listening, failed)
    return d


def registration(config: Any, services: Sequence[str], listeners: Sequence[Any],
                 reactor: Any) -> Registration:
    """
    The registration a daemon's C{[discovery]} config asks for.

    @param config: the L{rpcd.daemon.config.DiscoveryConfig}.
    @param services: the names of the services the daemon serves.
    @param listeners: the daemon's listening services, in config order
        (the first one's port fills C{{port}} in C{advertise}).
    @param reactor: the reactor.
    @return: the service to start after the listeners.
    """
    client = EtcdClient(config.etcd, reactor=reactor)
    advertise: str | Callable[[], Deferred[str]] = config.advertise

    def with_port() -> Deferred[str]:
        if not listeners:
            raise ValueError(f"{PORT_PLACEHOLDER} in advertise needs a listener")
        return listener_port(listeners[0]).addCallback(
            lambda port: config.advertise.replace(PORT_PLACEHOLDER, str(port)))
    if PORT_PLACEHOLDER in config.advertise:
        advertise = with_port
    return Registration(client, services, advertise, prefix=config.prefix, ttl=config.ttl)


@implementer(IWatchingResolver)
class EtcdResolver:
    """
    Finds the daemons that serve a service in etcd, as registered by
    L{Registration}: an L{IWatchingResolver} for
    L{rpcd.cluster.balancer.connect_balanced}.

    L{watch} (what a balancer uses) reads the keys once, then follows etcd's
    watch stream from the revision it read, so a daemon that registers or
    leaves is seen as soon as etcd knows.  When the stream breaks it watches
    again, after a backoff, from the last revision it saw: no change is
    missed (if that revision was compacted away, it reads the keys again).
    While etcd is unreachable the last known endpoints stay: L{resolve}
    answers them (logging a warning), and a watch reports nothing new.
    """

    def __init__(self, etcd: str | EtcdClient, service: str, *, prefix: str = DEFAULT_PREFIX,
                 reactor: Any = None, timeout: float = 5.0,
                 backoff: Callable[[int], float] | None = None) -> None:
        """
        @param etcd: the URL of etcd's client endpoint (its JSON gateway),
            e.g. C{http://127.0.0.1:2379}, or an L{EtcdClient}.
        @param service: the service name, as in C{Service.Method}.
        @param prefix: the registry's key prefix, as the daemons' config has it.
        @param reactor: the reactor (the global one by default).
        @param timeout: seconds a lookup (or a watch's first answer) may take.
        @param backoff: failures in a row (1 for the first) to seconds before
            watching again (0.5 s growing by 1.5 to 10 s, plus up to 1 s of
            jitter, by default).
        """
        self.client = etcd if isinstance(etcd, EtcdClient) else EtcdClient(
            etcd, reactor=reactor, timeout=timeout)
        self.service = service
        self.prefix = prefix
        self.backoff = backoff or backoffPolicy(initialDelay=0.5, maxDelay=10.0, factor=1.5)
        self.known: list[str] | None = None

    @property
    def _keys(self) -> str:
        return f"{self.prefix}{self.service}/"

    def _endpoint(self, key: str, value: bytes) -> str | None:
        try:
            endpoint = json.loads(value)["endpoint"]
            if not isinstance(endpoint, str):
                raise TypeError(endpoint)
        except (ValueError, KeyError, TypeError):
            log.warn("etcd key {key}: not a service registration: {value!r}",
                     key=key, value=value[:200])
            return None
        return endpoint

    def _found(self, by_key: dict[str, str]) -> list[str]:
        self.known = list(dict.fromkeys(by_key[key] for key in sorted(by_key)))
        return list(self.known)

    def _read(self, found: list[tuple[str, bytes]]) -> dict[str, str]:
        by_key = {}
        for key, value in found:
            endpoint = self._endpoint(key, value)
            if endpoint is not None:
                by_key[key] = endpoint
        return by_key

    def resolve(self) -> Deferred[list[str]]:
        """
        @return: a Deferred firing with the advertised endpoint strings of
            the daemons registered for the service now (possibly none), in
            key order; when etcd cannot be asked, with the last endpoints
            known (a warning says so), or failing with L{ResolverError} when
            none are known yet.
        """
        def failed(failure: Failure) -> Any:
            failure.trap(EtcdError)
            if self.known is not None:
                log.warn("finding {service} in etcd: {error}; keeping the last {count} "
                         "known endpoints", service=self.service, error=failure.getErrorMessage(),
                         count=len(self.known))
                return list(self.known)
            return Failure(ResolverError(f"finding {self.service} in etcd: {failure.getErrorMessage()}"))
        return self.client.get_prefix(self._keys).addCallback(self._read).addCallbacks(
            self._found, failed)

    def watch(self, on_change: Callable[[list[Any]], None]) -> Deferred[None]:
        """
        Report the endpoints now and after each change in etcd, until
        cancelled; see the class docstring.

        @param on_change: called with the endpoint strings.
        @return: a Deferred to cancel to stop watching.
        """
        return Deferred.fromCoroutine(self._watch(on_change))

    async def _watch(self, on_change: Callable[[list[Any]], None]) -> None:
        revision: int | None = None
        by_key: dict[str, str] = {}
        failures = 0
        while True:
            heard = compacted = went_back = False
            watching: Deferred[None] | None = None

            def message(result: dict[str, Any]) -> None:
                nonlocal revision, heard, compacted, went_back
                heard = True
                if result.get("compact_revision") and result.get("canceled"):
                    compacted = True
                    return
                now = int(result.get("header", {}).get("revision", 0) or 0)
                if result.get("created") and revision is not None and 0 < now < revision:
                    # A new etcd (its data lost): revisions started again.
                    went_back = True
                    if watching is not None:
                        watching.cancel()
                    return
                events = result.get("events") or []
                for event in events:
                    key = event_key(event)
                    kv = event.get("kv", {})
                    endpoint = None if event.get("type") == "DELETE" else self._endpoint(
                        key, base64.b64decode(kv.get("value", "")))
                    if endpoint is None:
                        by_key.pop(key, None)
                    else:
                        by_key[key] = endpoint
                    revision = max(revision or 0, int(kv.get("mod_revision", 0)))
                if events:
                    on_change(self._found(by_key))
            try:
                if revision is None:
                    found, revision = await self.client.get_prefix_at(self._keys)
                    by_key = self._read(found)
                    on_change(self._found(by_key))
                watching = self.client.watch_prefix(self._keys, revision + 1, message)
                if went_back:
                    watching.cancel()
                await watching
                why = "etcd ended the watch"
            except CancelledError:
                if not went_back:
                    raise
                why = f"etcd is back at revision {revision} or below (its data was lost)"
            except EtcdError as e:
                why = str(e)
            if compacted or went_back:
                log.info("watching {service} in etcd: revision {revision} is gone; "
                         "reading the keys again", service=self.service, revision=revision)
                revision = None
            failures = 1 if heard else failures + 1
            delay = self.backoff(failures)
            if revision is None:
                log.warn("watching {service} in etcd: {why}; trying again in {delay:.1f} s",
                         service=self.service, why=why, delay=delay)
            else:
                log.warn("watching {service} in etcd: {why}; watching again in {delay:.1f} s "
                         "from revision {revision}, keeping {count} known endpoints",
                         service=self.service, why=why, delay=delay, revision=revision + 1,
                         count=len(self.known or ()))
            await deferLater(self.client.clock, delay)
