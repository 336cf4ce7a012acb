"""
Client-side load balancing: spread calls over several servers, with the same
C{call} and proxy API as L{rpcd.client.Client}::

    balancer = await connect_balanced(["tcp:10.0.0.1:1234", "tcp:10.0.0.2:1234"],
                                      reactor=reactor, policy="least_outstanding")
    product = await balancer.Arith.Multiply(A=7, B=8)
    product = await balancer.call("Arith.Multiply", {"A": 7, "B": 8}, timeout=5)
    await balancer.close()

What it does for each endpoint (L{rpcd.cluster.subchannel}): keeps one connection up,
reconnecting with backoff and jitter; checks its health every
C{health.interval} seconds with the C{Health.Check} every rpcd daemon serves
(anything but C{"SERVING"}, a timeout or an error takes the endpoint out
until a check passes again); and breaks the circuit after
C{breaker.failure_threshold} calls in a row failed with C{UNAVAILABLE} or
C{DEADLINE_EXCEEDED} (L{rpcd.cluster.breaker}).

For each call: picks a usable endpoint by the policy (L{rpcd.cluster.pickers}:
C{round_robin}, C{random}, C{least_outstanding}, C{weighted},
C{dynamic_weight}: by observed latency and calls in flight) and, when the
call fails with a code the L{rpcd.cluster.retry.RetryPolicy} retries (C{UNAVAILABLE},
a lost connection included, and C{RESOURCE_EXHAUSTED} by default), retries
it after a backoff, on an endpoint it has not tried yet when there is one,
while the balancer's retry budget allows (L{rpcd.cluster.retry.RetryBudget}: when
most calls fail, they stop being retried).  Calls marked C{idempotent} can
be hedged instead (L{rpcd.cluster.hedging}).  Streams (L{Balancer.stream}) are
pinned to one endpoint (L{rpcd.cluster.retry_streams}).
With no usable endpoint a call fails with L{rpcd.errors.Unavailable}
naming every endpoint's state (after its retries).

The endpoints come from a list or from an L{rpcd.cluster.resolver.IResolver}
(asked again every C{resolve_interval} seconds; watched, when it is an
L{rpcd.cluster.resolver.IWatchingResolver} such as
L{rpcd.cluster.discovery.EtcdResolver}).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Sequence

from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rpcd.cluster.subchannel import Backend, HealthCheck, ParsedEndpoints
from rpcd.cluster.breaker import BreakerPolicy
from rpcd.client.client import ServiceAttributes, codec_class, connect, reactor_or_global
from rpcd.core.context import current_deadline, shorten
from rpcd.core.interfaces import ICaller
from rpcd.errors import Code, NotRun, Unavailable
from rpcd.cluster.hedging import HedgingPolicy, hedged_call
from rpcd.core.interceptors import client_call, client_stream
from rpcd.cluster.pickers import make_picker
from rpcd.middleware.ratelimit import pushback
from rpcd.cluster.resolver import IResolver, IWatchingResolver, ResolverError, StaticResolver
from rpcd.cluster.retry import NO_RETRY, RetryBudget, RetryPolicy, RetryThrottle, retrying_call
from rpcd.cluster.retry_streams import RetryingStream
from rpcd.wire.fields import check_timeout

log = Logger()

_DEFAULT: Any = object()

# How many other endpoints a call that was not run (GOAWAY) is sent to.
_NOT_RUN_REPICKS = 3

# Seconds a call that was not run (and has no timeout) waits for a usable
# endpoint when none is.
_NOT_RUN_WAIT = 30.0


@implementer(ICaller)
class Balancer(ServiceAttributes):
    """
    Calls spread over several endpoints.

    @ivar backends: one L{rpcd.cluster.subchannel.Backend} per endpoint, in order.
    @ivar retry: the retry policy calls use unless they give their own.
    @ivar default_timeout: applied to calls that give no timeout.
    @ivar budget: the L{RetryBudget} of its calls and streams, or None.
    @ivar parsed: the endpoint strings parsed for its connections (set by
        L{connect_balanced}), or None.
    """

    def __init__(self, clock: IReactorTime, connect: Callable[[Any], Deferred[Any]], *,
                 picker: Any, retry: RetryPolicy = RetryPolicy(),
                 health: HealthCheck | None = HealthCheck(),
                 breaker: BreakerPolicy | None = BreakerPolicy(),
                 reconnect: Callable[[int], float] | None = None,
                 default_timeout: float | None = None,
                 rng: random.Random | None = None,
                 retry_throttle: RetryThrottle | None = RetryThrottle(),
                 hedging: HedgingPolicy | None = None,
                 interceptors: Sequence[Any] = (), codec: str = "native") -> None:
        """
        Most code calls L{connect_balanced} instead.

        @param clock: the reactor, or a C{Clock} in tests.
        @param connect: one connection attempt to an endpoint: returns a
            Deferred firing with a L{rpcd.client.Client}.
        @param picker: the L{rpcd.cluster.pickers.IPicker}.
        @param retry: the default L{RetryPolicy}.
        @param health: the health checks, or None.
        @param breaker: the circuit breakers' thresholds, or None.
        @param reconnect: the reconnect backoff (see L{rpcd.cluster.subchannel.Backend}).
        @param default_timeout: for calls that give none.
        @param rng: the source of jitter.
        @param retry_throttle: the size of the balancer's L{RetryBudget},
            shared by its calls and streams; None for no budget.
        @param hedging: how calls marked idempotent are hedged; None: they
            are not.
        @param interceptors: the client's interceptors (L{rpcd.core.interceptors}),
            run once per call around its retries and hedges.
        @param codec: the wire protocol's name (for interceptors).
        """
        self.clock = clock
        self.interceptors = tuple(interceptors)
        self.codec = codec
        self._pushed: dict[Backend, float] = {}
        self._connect = connect
        self.picker = picker
        self.retry = retry
        self.health = health
        self.breaker = breaker
        self.reconnect = reconnect
        self.default_timeout = default_timeout
        self.rng = rng
        self.budget = RetryBudget(retry_throttle) if retry_throttle is not None else None
        self.hedging = hedging
        self.parsed: ParsedEndpoints | None = None
        self.backends: list[Backend] = []
        self._running = False
        self._waiters: list[tuple[Deferred[Balancer], int]] = []
        self._resolving: LoopingCall | None = None
        self._watching: Deferred[None] | None = None

    # -- endpoints

    def set_endpoints(self, endpoints: Sequence[Any]) -> None:
        """
        Balance over these endpoints from now on: connect to new ones, close
        the connections of those no longer listed (calls in flight on them
        fail with L{rpcd.errors.ConnectionLost}, and are retried).

        @param endpoints: endpoint strings or endpoint objects.
        """
        wanted = list(dict.fromkeys(endpoints))
        current = {b.key: b for b in self.backends}
        for backend in self.backends:
            if backend.key not in wanted:
                log.info("{endpoint}: removed", endpoint=backend.name)
                backend.stop()
                if self.parsed is not None:
                    self.parsed.forget(backend.key)
        self.backends = [current.get(key) or self._backend(key) for key in wanted]
        if self._running:
            for backend in self.backends:
                backend.start()

    def _backend(self, key: Any) -> Backend:
        return Backend(key, self._connect, self.clock, reconnect=self.reconnect,
                       health=self.health, breaker=self.breaker, on_change=self._changed)

    def start(self, resolver: IResolver | None = None, resolve_interval: float | None = None) -> None:
        """
        Start connecting to the endpoints.

        @param resolver: asked for the endpoints now, and again every
            C{resolve_interval} seconds if that is given; an
            L{IWatchingResolver} is watched instead of asked once.
        @param resolve_interval: seconds between resolutions.
        """
        self._running = True
        if IWatchingResolver.providedBy(resolver):
            self._watching = resolver.watch(self._resolved)
            self._watching.addErrback(self._watch_ended)
        if resolver is not None:
            if resolve_interval is None:
                if self._watching is None:
                    self._resolve(resolver)
            else:
                self._resolving = LoopingCall(self._resolve, resolver)
                self._resolving.clock = self.clock
                self._resolving.start(resolve_interval, now=True)
        for backend in self.backends:
            backend.start()

    def _resolved(self, endpoints: list[Any]) -> None:
        if not endpoints and self.backends:
            log.warn("the resolver found no endpoints; keeping {count}", count=len(self.backends))
        elif self._running:
            self.set_endpoints(endpoints)

    def _watch_ended(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            log.failure("watching the resolver stopped", failure)

    def _resolve(self, resolver: IResolver) -> Deferred[None]:
        resolved = self._resolved

        def failed(failure: Failure) -> None:
            if failure.check(ResolverError):
                log.warn("resolving endpoints failed: {error}; keeping {count}",
                         error=failure.getErrorMessage(), count=len(self.backends))
            else:
                log.failure("resolving endpoints failed; keeping {count}", failure,
                            count=len(self.backends))
        return resolver.resolve().addCallbacks(resolved, failed)

    def when_ready(self, timeout: float | None = None, *, at_least: int = 1) -> Deferred[Balancer]:
        """
        Wait for endpoints to be usable.

        @param timeout: seconds to wait, or None.
        @param at_least: how many endpoints must be usable.
        @return: a Deferred firing with this balancer once C{at_least}
            endpoints are usable; it fails with L{Unavailable} (naming each
            endpoint's state and why) at once when none is usable and none
            can become usable without a retry (every endpoint has failed to
            connect, failed its health check or has its circuit open), or
            when C{timeout} passes.
        """
        d: Deferred[Balancer] = Deferred(self._forget_waiter)
        self._waiters.append((d, at_least))
        self._changed(None)
        if timeout is not None and not d.called:
            def timed_out(result: Any, seconds: float) -> Any:
                if isinstance(result, Failure) and not result.check(Unavailable):
                    return Failure(Unavailable(
                        f"no endpoint usable within {seconds:g} s: {self.describe()}"))
                return result
            d.addTimeout(timeout, self.clock, timed_out)
        return d

    def _forget_waiter(self, d: Deferred[Balancer]) -> None:
        self._waiters = [(w, n) for w, n in self._waiters if w is not d]

    def _changed(self, backend: Backend | None) -> None:
        if not self._waiters:
            return
        usable = sum(b.usable for b in self.backends)
        hopeless = not usable and self.backends and all(b.hopeless for b in self.backends)
        waiters, self._waiters = self._waiters, []
        for d, at_least in waiters:
            if usable >= at_least:
                d.callback(self)
            elif hopeless:
                d.errback(Unavailable(f"no endpoint is usable: {self.describe()}"))
            else:
                self._waiters.append((d, at_least))

    def describe(self) -> str:
        """
        @return: every endpoint with its state, for people.
        """
        return "; ".join(b.describe() for b in self.backends) or "no endpoints"

    # -- calls

    def pick(self, exclude: Sequence[Backend] = ()) -> Backend:
        """
        Choose an endpoint for a call by the policy.

        @param exclude: endpoints to avoid when others are usable (those
            this call already tried).
        @return: a usable L{Backend}.
        @raise Unavailable: no endpoint is usable.
        """
        usable = [b for b in self.backends if b.usable]
        if not usable:
            raise Unavailable(f"no endpoint is usable: {self.describe()}")
        if self._pushed:
            # Endpoints that asked to be left alone a while (rate limit
            # pushback) are avoided while others are usable.
            now = self.clock.seconds()
            for b, until in list(self._pushed.items()):
                if until <= now:
                    del self._pushed[b]
            usable = [b for b in usable if b not in self._pushed] or usable
        fresh = [b for b in usable if b not in exclude]
        return self.picker.pick(fresh or usable)

    def call(self, method: str, args: Any = None, *, timeout: float | None = None,
             metadata: dict[str, Any] | None = None, retry: RetryPolicy | None = _DEFAULT,
             idempotent: bool = False) -> Deferred[Any]:
        """
        Call a remote method on one of the endpoints.

        @param method: C{Service.Method}.
        @param args: the argument value.
        @param timeout: the overall deadline in seconds, across retries
            (C{default_timeout} when None).
        @param metadata: key/value metadata for the server.
        @param retry: a L{RetryPolicy} for this call instead of the
            balancer's; None for a single attempt.
        @param idempotent: the call may run more than once: with a
            L{HedgingPolicy}, it is hedged (L{rpcd.cluster.hedging}) instead of
            retried.
        @return: a Deferred firing with the result, or failing with the last
            attempt's L{rpcd.errors.RPCError} (L{Unavailable} when no
            endpoint is usable).  Cancelling it cancels the call.
        """
        timeout = check_timeout(timeout)
        if timeout is None:
            timeout = self.default_timeout
        if current_deadline.get() is not None:
            timeout = shorten(timeout)
        if self.interceptors:
            return client_call(
                self.interceptors, self.clock, self.codec, "balanced", method, args, timeout,
                metadata, lambda m, a, t, md: self._call(m, a, t, md, retry, idempotent))
        return self._call(method, args, timeout, metadata, retry, idempotent)

    def _call(self, method: str, args: Any, timeout: float | None,
              metadata: dict[str, Any] | None, retry: RetryPolicy | None,
              idempotent: bool) -> Deferred[Any]:
        policy = self.retry if retry is _DEFAULT else (retry or NO_RETRY)
        tried: list[Backend] = []

        def attempt(remaining: float | None) -> Deferred[Any]:
            backend = self.pick(exclude=tried)
            tried.append(backend)
            d = backend.call(method, args, remaining, metadata)
            observe = getattr(self.picker, "observe", None)
            if observe is not None:
                d.addBoth(_observed, observe, backend.key, self.clock, self.clock.seconds())
            d.addErrback(self._pushed_back, backend)
            # A call a server going away did not run is sent to another
            # endpoint at once (it ran nowhere: no retry policy needed).
            return d.addErrback(not_run, remaining, self.clock.seconds(), _NOT_RUN_REPICKS)

        def not_run(failure: Failure, remaining: float | None, started: float, left: int) -> Any:
            failure.trap(NotRun)
            if left <= 0:
                return failure
            if remaining is not None:
                remaining -= self.clock.seconds() - started
                if remaining <= 0:
                    return failure
            now = self.clock.seconds()

            def again(_: object) -> Deferred[Any]:
                left_now = None if remaining is None else remaining - (self.clock.seconds() - now)
                backend = self.pick(exclude=tried)
                tried.append(backend)
                return backend.call(method, args, left_now, metadata).addErrback(
                    not_run, left_now, self.clock.seconds(), left - 1)
            if not any(b.usable for b in self.backends):
                # Every endpoint is going away or reconnecting (a rolling
                # restart): wait for one, within the call's time.
                wait = _NOT_RUN_WAIT if remaining is None else remaining
                return self.when_ready(wait).addCallback(again)
            return again(None)

        if idempotent and self.hedging is not None:
            return hedged_call(attempt, self.hedging, self.clock, timeout=timeout, budget=self.budget)
        return retrying_call(attempt, policy, self.clock, timeout=timeout, rng=self.rng,
                             what=method, budget=self.budget)

    def stream(self, method: str, args: Any = None, *, timeout: float | None = None,
               metadata: dict[str, Any] | None = None, window: int | None = None,
               retry: RetryPolicy | None = _DEFAULT) -> RetryingStream:
        """
        Open a streaming call (server, client or bidirectional) on one of
        the endpoints, picked as for L{call}; it stays on that endpoint, and
        is opened again on another by the retry policy while the server has
        sent nothing back (see L{rpcd.cluster.retry_streams}).

        @param method: C{Service.Method}.
        @param args: the request of a server-streaming method; None for
            client- and bidirectional-streaming methods.
        @param timeout: seconds the whole stream may take, across attempts
            (C{default_timeout} when None).
        @param metadata: key/value metadata for the server.
        @param window: messages the server may send ahead of the application.
        @param retry: a L{RetryPolicy} instead of the balancer's; None for
            a single attempt.
        @return: a L{RetryingStream}: C{async for} its messages, C{send},
            C{close_send}, C{cancel}, C{result}, as a
            L{rpcd.client.streams.ClientStream}.  With no usable endpoint
            it has failed already with L{Unavailable}.
        """
        if timeout is None:
            timeout = self.default_timeout
        if current_deadline.get() is not None:
            timeout = shorten(timeout)
        if self.interceptors:
            return client_stream(
                self.interceptors, self.clock, self.codec, "balanced", method, args, timeout,
                metadata, lambda m, a, t, md: self._stream(m, a, t, md, window, retry))
        return self._stream(method, args, timeout, metadata, window, retry)

    def _stream(self, method: str, args: Any, timeout: float | None,
                metadata: dict[str, Any] | None, window: int | None,
                retry: RetryPolicy | None) -> RetryingStream:
        policy = self.retry if retry is _DEFAULT else (retry or NO_RETRY)
        tried: list[Backend] = []

        def attempt(remaining: float | None) -> Any:
            backend = self.pick(exclude=tried)
            tried.append(backend)
            return backend.stream(method, args, remaining, metadata, window)
        return RetryingStream(attempt, policy, self.clock, method=method, timeout=timeout,
                              budget=self.budget)

    def _pushed_back(self, failure: Failure, backend: Backend) -> Failure:
        """
        A call failed: if the server gave a retry-after hint, avoid its
        endpoint until then.
        """
        hint = pushback(failure.value) if failure.value is not None else None
        if hint is not None:
            self._pushed[backend] = self.clock.seconds() + hint
        return failure

    def close(self) -> Deferred[None]:
        """
        Close every connection and stop reconnecting, checking and
        resolving; pending calls fail with L{rpcd.errors.ConnectionLost}.

        @return: a Deferred firing once every connection is closed.
        """
        self._running = False
        if self._resolving is not None and self._resolving.running:
            self._resolving.stop()
        if self._watching is not None:
            watching, self._watching = self._watching, None
            watching.cancel()
        waiters, self._waiters = self._waiters, []
        for d, _ in waiters:
            d.cancel()
        closing = [b.stop() for b in self.backends]
        return gatherResults(closing).addCallback(lambda _: None) if closing else succeed(None)


def _observed(result: Any, observe: Callable[[Any, float], None], key: Any,
              clock: IReactorTime, started: float) -> Any:
    """
    Tell a picker that learns from response times (L{rpcd.cluster.pickers.DynamicWeight})
    how long an endpoint took to answer: a result or an error from the
    server, not a cancellation or an unreachable endpoint.
    """
    if not (isinstance(result, Failure) and
            (result.check(CancelledError) or getattr(result.value, "code", None) in _NOT_ANSWERS)):
        observe(key, clock.seconds() - started)
    return result


_NOT_ANSWERS = frozenset({Code.CANCELLED, Code.UNAVAILABLE})


def connect_balanced(endpoints: Sequence[Any] | IResolver, *, codec: str = "native",
                     reactor: Any = None, policy: Any = "round_robin",
                     weights: Mapping[Any, float] | Sequence[float] | None = None,
                     retry: RetryPolicy | None = RetryPolicy(),
                     health: HealthCheck | None = HealthCheck(),
                     breaker: BreakerPolicy | None = BreakerPolicy(),
                     reconnect: Callable[[int], float] | None = None,
                     default_timeout: float | None = None, connect_timeout: float | None = 30.0,
                     resolve_interval: float | None = None,
                     rng: random.Random | None = None,
                     retry_throttle: RetryThrottle | None = RetryThrottle(),
                     hedging: HedgingPolicy | None = None,
                     interceptors: Sequence[Any] = ()) -> Deferred[Balancer]:
    """
    Connect to several servers and balance calls over them.

    @param endpoints: Twisted client endpoint strings (or endpoint objects),
        or an L{IResolver} that finds them.
    @param codec: the wire protocol, as for L{rpcd.client.connect}.
    @param reactor: the reactor (the global one by default); a C{Clock}
        will do when every endpoint is an object.
    @param policy: C{"round_robin"}, C{"random"}, C{"least_outstanding"},
        C{"weighted"}, C{"dynamic_weight"}, or an L{rpcd.cluster.pickers.IPicker}.
    @param weights: for C{"weighted"} (base weights for
        C{"dynamic_weight"}): endpoint to weight, or weights in the order of
        C{endpoints}.
    @param retry: the default L{RetryPolicy} of calls; None: no retries.
    @param health: the health checks (every 5 s, 2 s timeout by default);
        None for servers without rpcd's C{Health} service.
    @param breaker: the circuit breakers (open after 5 failures in a row,
        half-open after 10 s by default); None for none.
    @param reconnect: attempt number to seconds before reconnecting
        (L{rpcd.cluster.subchannel.default_reconnect_policy} by default).
    @param default_timeout: for calls that give no timeout.
    @param connect_timeout: seconds each connection attempt (and its
        handshake) may take, and the longest this waits for a first usable
        endpoint; None waits forever.
    @param resolve_interval: with a resolver, seconds between resolutions
        (None: resolve once, or only watch a watching resolver).
    @param rng: the source of randomness (jitter, the random policy).
    @param retry_throttle: the size of the retry budget (gRFC A6 retry
        throttling: 100 tokens, 0.1 back per success by default): retries
        and hedges stop while more than half of it is spent; None: no
        budget.
    @param hedging: a L{HedgingPolicy} for calls made with
        C{idempotent=True}; None: those are retried like others.
    @param interceptors: the client's interceptors, in chain order (see
        L{rpcd.core.interceptors}); they run once per call, around its retries.
    @return: a Deferred firing with a L{Balancer} once one endpoint is
        usable; it fails with L{Unavailable} when every endpoint failed (or
        none became usable within C{connect_timeout}), or C{ValueError} for
        a bad policy, weights or codec.  On failure, the balancer is closed.
    """
    reactor = reactor_or_global(reactor)
    try:
        codec_class(codec)
        listed: Sequence[Any] = ()
        if IResolver.providedBy(endpoints):
            resolver: Any = endpoints
        else:
            listed = endpoints
            resolver = StaticResolver(listed)
        picker = make_picker(policy, weights=weights, endpoints=listed, rng=rng)
    except ValueError as e:
        d: Deferred[Balancer] = Deferred()
        d.errback(e)
        return d

    parsed = ParsedEndpoints(reactor)

    def connect_one(endpoint: Any) -> Deferred[Any]:
        return parsed.get(endpoint).addCallback(
            connect, codec=codec, reactor=reactor, connect_timeout=connect_timeout, redial=False)

    balancer = Balancer(reactor, connect_one, picker=picker, retry=retry or NO_RETRY,
                        health=health, breaker=breaker, reconnect=reconnect,
                        default_timeout=default_timeout, rng=rng,
                        retry_throttle=retry_throttle, hedging=hedging,
                        interceptors=interceptors, codec=codec)
    balancer.parsed = parsed
    balancer.start(resolver, resolve_interval)
    ready = balancer.when_ready(connect_timeout)

    def failed(failure: Failure) -> Any:
        balancer.close()
        return failure
    return ready.addErrback(failed)
