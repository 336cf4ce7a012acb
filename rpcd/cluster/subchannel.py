"""
One endpoint of a L{rpcd.cluster.balancer.Balancer}: its connection, kept up by
reconnecting with backoff; its periodic health checks; its circuit breaker.

An endpoint is I{usable} when it is connected, its last health check
answered C{"SERVING"} (the first check runs as soon as it connects), and
its breaker lets calls through.  L{Backend.state} says which of these is
missing, for logs and error messages.  A new connection ends an open
circuit's cool-down: its first call is the breaker's trial.

Why not C{ClientService}: rpcd connections are ready only after a handshake
(the server's preface, TLS), and C{ClientService}'s C{prepareConnection}
cannot lose its connection during that step (Twisted 26.10 raises
C{NoTransition}); it also forgets its failure count as soon as TCP connects,
so a server that accepts and then hangs up would be retried without backing
off.  The loop here uses Twisted's L{backoffPolicy} for its delays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from rpcd.cluster.breaker import OPEN, BreakerPolicy, CircuitBreaker
from rpcd.errors import NotRun, Unavailable, Unimplemented

log = Logger()

SERVING = "SERVING"
CONNECTING, READY, UNHEALTHY, CIRCUIT_OPEN, STOPPED = (
    "connecting", "ready", "unhealthy", "circuit open", "stopped")


@dataclasses.dataclass(frozen=True)
class HealthCheck:
    """
    Periodic C{Health.Check} calls on each endpoint's connection.

    @ivar interval: seconds between checks.
    @ivar timeout: seconds a check may take before it counts as failed.
    @ivar service: the service name to ask about (C{""}: the server as a
        whole).
    """

    interval: float = 5.0
    timeout: float = 2.0
    service: str = ""


def default_reconnect_policy() -> Callable[[int], float]:
    """
    @return: the default wait before reconnecting: Twisted's
        L{backoffPolicy}, 1 s growing by 1.5 to at most 30 s, plus up to
        1 s of jitter.
    """
    return backoffPolicy(initialDelay=1.0, maxDelay=30.0, factor=1.5)


class ParsedEndpoints:
    """
    Endpoint strings parsed once each, for a balancer's reconnects: a C{tls:}
    string reads its certificate, key and trust files once, in a thread
    (not in the reactor thread), and every later connection reuses the
    endpoint, its TLS options and so the TLS context they build.  A parse
    that fails (a file not there yet) is tried again on the next attempt.
    Files changed later (a renewed certificate) are read by a new balancer.
    """

    def __init__(self, reactor: Any,
                 in_thread: Callable[..., Deferred[Any]] | None = None) -> None:
        """
        @param reactor: given to the endpoint parser.
        @param in_thread: runs a function in a thread and returns a Deferred
            of its result (C{deferToThread} by default).
        """
        self.reactor = reactor
        self._in_thread = in_thread
        self.parsed: dict[str, Any] = {}

    def get(self, endpoint: Any) -> Deferred[Any]:
        """
        @param endpoint: an endpoint string or object.
        @return: a Deferred firing with the endpoint object (at once when
            known or not C{tls:}); failing with C{ValueError} or C{OSError}
            as the parser does.
        """
        from rpcd.client.client import client_from_string, parse_endpoint
        if not isinstance(endpoint, str):
            return succeed(endpoint)
        known = self.parsed.get(endpoint)
        if known is not None:
            return succeed(known)
        if endpoint.startswith("tls:"):
            run = self._in_thread
            if run is None:
                from twisted.internet.threads import deferToThread
                run = deferToThread
            d = run(parse_endpoint, endpoint, client_from_string, self.reactor)
        else:
            d = maybeDeferred(parse_endpoint, endpoint, client_from_string, self.reactor)

        def parsed(result: Any) -> Any:
            self.parsed[endpoint] = result
            return result
        return d.addCallback(parsed)

    def forget(self, endpoint: Any) -> None:
        """
        Drop what was parsed for an endpoint no longer used.

        @param endpoint: the endpoint string (or object: nothing to drop).
        """
        if isinstance(endpoint, str):
            self.parsed.pop(endpoint, None)


class Backend:
    """
    One endpoint's connection, health and breaker.

    @ivar key: the endpoint as the user gave it.
    @ivar name: how logs and errors name it.
    @ivar client: the connected L{rpcd.client.Client}, or None.
    @ivar healthy: whether the last health check passed on this connection.
    @ivar breaker: the L{CircuitBreaker}, or None.
    @ivar last_error: why it is not usable, in words, or None.
    @ivar failed_once: whether a connection attempt or health check has
        failed since it started.
    """

    def __init__(self, key: Any, connect: Callable[[Any], Deferred[Any]], clock: IReactorTime, *,
                 reconnect: Callable[[int], float] | None = None,
                 health: HealthCheck | None = HealthCheck(),
                 breaker: BreakerPolicy | None = BreakerPolicy(),
                 on_change: Callable[[Backend], None] = lambda backend: None) -> None:
        """
        @param key: the endpoint (a string or an endpoint object).
        @param connect: makes one connection attempt to C{key}; returns a
            Deferred firing with a L{rpcd.client.Client} once it is ready.
        @param clock: for reconnect delays and health checks.
        @param reconnect: attempt number (1 for the first retry) to seconds
            to wait (L{default_reconnect_policy} when None).
        @param health: the health checks, or None to use an endpoint as soon
            as it is connected.
        @param breaker: the circuit breaker's thresholds, or None for none.
        @param on_change: called with this backend when it may have become
            usable or unusable.
        """
        self.key = key
        self.name = key if isinstance(key, str) else repr(key)
        self._connect = connect
        self.clock = clock
        self.reconnect = reconnect or default_reconnect_policy()
        self.health = health
        self.breaker = CircuitBreaker(breaker, clock) if breaker is not None else None
        self.on_change = on_change
        self.client: Any = None
        self.healthy = False
        self.last_error: str | None = None
        self.failed_once = False
        self._running = False
        self._attempt: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._failures = 0
        self._checks: LoopingCall | None = None
        self._checking: Deferred[Any] | None = None
        self._cooling: IDelayedCall | None = None
        self._check_failed_here = False

    # -- state

    @property
    def state(self) -> str:
        """
        @return: L{READY}, L{CONNECTING}, L{UNHEALTHY}, L{CIRCUIT_OPEN} or
            L{STOPPED}.
        """
        if not self._running:
            return STOPPED
        if self.client is None:
            return CONNECTING
        if not self.healthy:
            return UNHEALTHY
        if self.breaker is not None and not self.breaker.allows():
            return CIRCUIT_OPEN
        return READY

    @property
    def usable(self) -> bool:
        """
        @return: whether a call can be sent to it now.
        """
        return self.state == READY

    @property
    def hopeless(self) -> bool:
        """
        @return: whether it is not usable and will not become usable
            without a retry: a connection attempt or health check has
            failed, or its circuit is open.
        """
        state = self.state
        if state == UNHEALTHY:
            return self._check_failed_here
        return state == CIRCUIT_OPEN or (state == CONNECTING and self.failed_once)

    @property
    def outstanding(self) -> int:
        """
        @return: calls pending on its connection.
        """
        return len(self.client.channel.pending) if self.client is not None else 0

    def describe(self) -> str:
        """
        @return: its name and state, with the reason when it is not usable.
        """
        state = self.state
        if state in (CONNECTING, UNHEALTHY) and self.last_error:
            return f"{self.name} {state} ({self.last_error})"
        if state == CIRCUIT_OPEN and self.breaker is not None:
            return f"{self.name} {state} ({self.breaker.failures} failures in a row)"
        return f"{self.name} {state}"

    # -- calls

    def call(self, method: str, args: Any, timeout: float | None,
             metadata: dict[str, Any] | None) -> Deferred[Any]:
        """
        Send a call on this endpoint's connection, recording its outcome on
        the breaker.

        @return: the call's Deferred; it fails with L{Unavailable} at once
            when not connected.
        """
        client = self.client
        if client is None:
            return fail(Unavailable(f"{self.name} is not connected"))
        breaker = self.breaker
        if breaker is None:
            return client.call(method, args, timeout=timeout, metadata=metadata)
        breaker.begin()
        d = client.call(method, args, timeout=timeout, metadata=metadata)
        return d.addBoth(self._record, breaker)

    def stream(self, method: str, args: Any, timeout: float | None,
               metadata: dict[str, Any] | None, window: int | None) -> Any:
        """
        Open a streaming call on this endpoint's connection, recording how
        it ends on the breaker.  A stream is never a half-open circuit's
        trial call: it may run for long, and the trial would wait for it.

        @return: the L{rpcd.client.streams.ClientStream}.
        @raise Unavailable: not connected.
        """
        client = self.client
        if client is None:
            raise Unavailable(f"{self.name} is not connected")
        breaker = self.breaker
        stream = client.stream(method, args, timeout=timeout, metadata=metadata, window=window)
        if breaker is not None:
            stream.result().addBoth(self._record, breaker).addErrback(lambda f: None)
        return stream

    def _record(self, result: Any, breaker: CircuitBreaker) -> Any:
        before = breaker.state
        if isinstance(result, Failure) and isinstance(result.value, NotRun):
            # The server went away gracefully: no verdict on its health.
            breaker.abandoned()
            return result
        breaker.record(result.value if isinstance(result, Failure) else None)
        if breaker.state != before:
            log.info("{endpoint}: circuit {state} ({failures} failures in a row)",
                     endpoint=self.name, state=breaker.state, failures=breaker.failures)
            if breaker.state == OPEN:
                self._cool_down(breaker.policy.reset_timeout)
            self.on_change(self)
        return result

    def _cool_down(self, seconds: float) -> None:
        # Say when the circuit turns half-open, for those awaiting a usable endpoint.
        if self._cooling is not None and self._cooling.active():
            self._cooling.cancel()
        self._cooling = self.clock.callLater(seconds, self.on_change, self)

    # -- connection

    def start(self) -> None:
        """
        Start connecting (and reconnecting).
        """
        if self._running:
            return
        self._running = True
        self._try_connect()

    def stop(self) -> Deferred[None]:
        """
        Stop reconnecting and checking, and close the connection.

        @return: a Deferred firing once it is closed.
        """
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._cooling is not None and self._cooling.active():
            self._cooling.cancel()
        if self._attempt is not None:
            self._attempt.cancel()
        client, self.client = self.client, None
        self._stop_checks()
        if client is None:
            return succeed(None)
        return client.close()

    def _try_connect(self) -> None:
        self._retry = None
        self._attempt = attempt = self._connect(self.key)
        attempt.addCallbacks(self._connected, self._connect_failed)
        attempt.addErrback(lambda f: log.failure("{endpoint}: connecting", f, endpoint=self.name))

    def _connect_failed(self, failure: Failure) -> None:
        self._attempt = None
        if not self._running:
            return
        self._failures += 1
        self.failed_once = True
        error_type = failure.type
        assert error_type is not None  # Failure() raises rather than hold no exception
        self.last_error = failure.getErrorMessage() or error_type.__name__
        self._schedule_reconnect()
        self.on_change(self)

    def _schedule_reconnect(self) -> None:
        delay = self.reconnect(max(self._failures, 1))
        log.info("{endpoint}: reconnecting in {delay:.2f} s ({why})",
                 endpoint=self.name, delay=delay, why=self.last_error)
        self._retry = self.clock.callLater(delay, self._try_connect)

    def _connected(self, client: Any) -> None:
        self._attempt = None
        if not self._running:
            client.close()
            return
        self._failures = 0
        self.client = client
        if self.breaker is not None:
            self.breaker.expire()
        self.healthy = self.health is None
        self._check_failed_here = False
        self.last_error = None if self.healthy else "first health check pending"
        client.channel.closed_d.addBoth(lambda _: self._lost(client))
        client.channel.on_goaway.append(lambda _: self._going_away(client))
        if self.client is not client:
            return
        log.info("{endpoint}: connected", endpoint=self.name)
        if self.health is not None:
            self._checks = LoopingCall(self._check)
            self._checks.clock = self.clock
            self._checks.start(self.health.interval, now=True)
        self.on_change(self)

    def _going_away(self, client: Any) -> None:
        """
        The server said GOAWAY: it answers the calls it has, on this
        connection, which closes after; new calls go to other endpoints
        until this one is reconnected.
        """
        if client is not self.client:
            return
        self.client = None
        self.healthy = False
        self._stop_checks()
        self.last_error = f"going away: {client.channel.going_away}"
        if self._running:
            log.info("{endpoint}: {why}", endpoint=self.name, why=self.last_error)
            self._schedule_reconnect()
            self.on_change(self)

    def _lost(self, client: Any) -> None:
        if client is not self.client:
            return
        self.client = None
        self.healthy = False
        self._stop_checks()
        reason = client.channel.lost_reason
        self.last_error = "connection lost: " + (client.channel.describe_loss(reason))
        if self._running:
            log.info("{endpoint}: {why}", endpoint=self.name, why=self.last_error)
            self._schedule_reconnect()
            self.on_change(self)

    # -- health

    def _check(self) -> None:
        if self.client is None or self._checking is not None:
            return
        assert self.health is not None
        client = self.client
        self._checking = d = client.call("Health.Check", self.health.service,
                                         timeout=min(self.health.timeout, self.health.interval))
        d.addCallbacks(self._check_answered, self._check_failed)
        d.addBoth(lambda _: setattr(self, "_checking", None))

    def _check_answered(self, status: Any) -> None:
        if status == SERVING:
            self._set_health(True, None)
        else:
            self._set_health(False, f"health check answered {status!r}")

    def _check_failed(self, failure: Failure) -> None:
        if failure.check(Unimplemented):
            # As gRPC does: a server without health checks counts as healthy.
            log.warn("{endpoint} has no Health service; not checking it", endpoint=self.name)
            self._stop_checks()
            self._set_health(True, None)
            return
        self._set_health(False, f"health check failed: {failure.getErrorMessage()}")

    def _set_health(self, healthy: bool, why: str | None) -> None:
        if self.client is None:
            return
        if not healthy:
            self.failed_once = self._check_failed_here = True
        changed = healthy != self.healthy
        self.healthy = healthy
        self.last_error = why
        if changed:
            log.info("{endpoint}: {state}", endpoint=self.name, state=self.describe())
        if changed or not healthy:
            # A failed first check changes no state, but it may leave no
            # endpoint that can become usable: those waiting must hear of it.
            self.on_change(self)

    def _stop_checks(self) -> None:
        if self._checks is not None and self._checks.running:
            self._checks.stop()
        self._checks = None
        if self._checking is not None:
            self._checking.cancel()
