"""
A daemon's figures, for Prometheus (C{GET /metrics}) and the live status
page (C{GET /debug/rpc}).

The hot path only adds to plain Python numbers (L{MethodStats}); the
Prometheus series are built from them, and from the counters the daemon
keeps anyway (open connections, refused connections, failed logins), when
someone scrapes, by L{ServerCollector} in the daemon's own
C{CollectorRegistry} (never the process-global one, so that several
daemons in one process, as in tests, do not collide).

Series (all prefixed C{rpcd_}):

    calls_total{method,code}               calls ended, by status code name
    call_duration_seconds{method}          histogram of call durations
    calls_running{method}                  calls started and not ended
    stream_messages_total{method,direction}  stream messages received/sent
    call_bytes_total{direction}            payload bytes received/sent by calls
                                           (their size as msgpack)
    connections{protocol}                  connections open now
    connections_opened_total{protocol}     connections since start
    connections_refused_total              refused by the connection caps
    login_failures_total{reason}           failed logins (bad credentials, throttled)
    rate_limited_total{method}             calls refused by the rate limiter

Method labels are bounded: at most L{MAX_METHODS} methods get series of
their own; calls to others (and to names that do not exist) are counted
under C{(other)}.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import msgpack
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from twisted.python.failure import Failure

from rpcd.errors import Code
from rpcd.middleware.ratelimit import pushback

if TYPE_CHECKING:
    from rpcd.server.factory import RPCServer
    from rpcd.core.session import Session

#: Upper bounds (seconds) of the latency histogram's buckets.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Methods with series of their own; more are counted as C{(other)}.
MAX_METHODS = 1000

#: Recent durations kept per method for the status page's percentiles.
RECENT = 1024

OTHER = "(other)"

_CODE_NAMES = {int(code): code.name for code in Code}
_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def code_name(code: int) -> str:
    """
    @param code: a status code number.
    @return: its name (C{OK}, C{NOT_FOUND}...), or the number as text.
    """
    return _CODE_NAMES.get(code) or str(code)


class MethodStats:
    """
    The figures of one method since the daemon started.

    @ivar codes: status code number to calls that ended with it.
    @ivar running: calls started and not ended.
    @ivar total_seconds: the sum of the ended calls' durations.
    @ivar buckets: per L{BUCKETS} bound (and one more for +Inf), the calls
        whose duration fell in it (not cumulative).
    @ivar recent: the last L{RECENT} durations, for percentiles.
    @ivar messages_in: stream messages received.
    @ivar messages_out: stream messages sent.
    @ivar rate_limited: calls refused with RESOURCE_EXHAUSTED before they ran.
    """

    __slots__ = ("codes", "running", "total_seconds", "buckets", "recent",
                 "messages_in", "messages_out", "rate_limited")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.running = 0
        self.total_seconds = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.messages_in = 0
        self.messages_out = 0
        self.rate_limited = 0

    def ended(self, code: int, seconds: float) -> None:
        """
        A call ended.

        @param code: its status code (0 for success).
        @param seconds: how long it took.
        """
        codes = self.codes
        codes[code] = codes.get(code, 0) + 1
        self.total_seconds += seconds
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.recent.append(seconds)

    @property
    def calls(self) -> int:
        """Calls ended."""
        return sum(self.codes.values())

    @property
    def errors(self) -> int:
        """Calls ended with a code other than OK."""
        return sum(n for code, n in self.codes.items() if code != Code.OK)

    def percentiles(self, *quantiles: float) -> list[float | None]:
        """
        @param quantiles: each between 0 and 1.
        @return: for each, the duration (seconds) under which that share of
            the recent calls fell (nearest rank), or None before any call.
        """
        ordered = sorted(self.recent)
        if not ordered:
            return [None for _ in quantiles]
        last = len(ordered) - 1
        return [ordered[min(last, max(0, int(q * len(ordered) + 0.999999) - 1))] for q in quantiles]


class Metrics:
    """
    A daemon's figures and its Prometheus registry.

    @ivar methods: method name (or C{(other)}) to its L{MethodStats}.
    @ivar opened: protocol name to connections opened since start.
    @ivar closed: protocol name to connections closed since start.
    @ivar bytes_in: call payload bytes received.
    @ivar bytes_out: call payload bytes sent.
    @ivar registry: the C{CollectorRegistry} C{/metrics} serves.
    """

    def __init__(self, server: RPCServer | None = None) -> None:
        """
        @param server: the daemon whose connection counters to report, or
            None for the call figures alone.
        """
        self.server = server
        self.methods: dict[str, MethodStats] = {}
        self.opened: dict[str, int] = {}
        self.closed: dict[str, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServerCollector(self))

    def stats(self, method: str) -> MethodStats:
        """
        @param method: C{Service.Method}.
        @return: its L{MethodStats}, made on first use (C{(other)}'s once
            L{MAX_METHODS} methods have some).
        """
        stats = self.methods.get(method)
        if stats is None:
            if len(self.methods) >= MAX_METHODS:
                method = OTHER
                stats = self.methods.get(OTHER)
            if stats is None:
                stats = self.methods[method] = MethodStats()
        return stats

    def connection_opened(self, session: Session) -> None:
        """
        A connection's session was made: count it open until it closes.

        @param session: the connection's session.
        """
        protocol = session.protocol
        self.opened[protocol] = self.opened.get(protocol, 0) + 1
        session.on_close(lambda: self._connection_closed(protocol))

    def _connection_closed(self, protocol: str) -> None:
        self.closed[protocol] = self.closed.get(protocol, 0) + 1

    def connections(self) -> dict[str, int]:
        """
        @return: protocol name to connections open now.
        """
        return {protocol: opened - self.closed.get(protocol, 0)
                for protocol, opened in sorted(self.opened.items())}

    def exposition(self) -> bytes:
        """
        @return: every series in Prometheus' text format.
        """
        return generate_latest(self.registry)


class MetricsInterceptor:
    """
    The built-in server interceptor that keeps a L{Metrics}' per-call
    figures (L{rpcd.core.interceptors}): calls running, each call's code and
    duration, stream messages, payload bytes (the size of each argument,
    result and stream message as msgpack: exact for the native protocol,
    an approximation for the others, as the access log counts them), and
    refusals with RESOURCE_EXHAUSTED carrying a retry-after hint (the rate
    limiter's, L{rpcd.middleware.ratelimit.pushback}).  It goes first in the
    chain, so that it times and counts whatever the others do.
    """

    def __init__(self, metrics: Metrics) -> None:
        """
        @param metrics: where the figures go.
        """
        self.metrics = metrics

    def intercept(self, call: Any, proceed: Any) -> Any:
        metrics = self.metrics
        stats = metrics.stats(call.method if call.known else OTHER)
        stats.running += 1
        metrics.bytes_in += _size(call.value)
        if call.kind != "unary":
            def received(message: Any) -> Any:
                stats.messages_in += 1
                metrics.bytes_in += _size(message)
                return message

            def sent(message: Any) -> Any:
                stats.messages_out += 1
                metrics.bytes_out += _size(message)
                return message
            call.wrap_messages(received=received, sent=sent)
        d = proceed(call)
        if d.called and not d.paused:
            # Answered at once (the hot path): read the outcome, skip a callback.
            self._ended(d.result, call, stats)
            return d
        return d.addBoth(self._ended, call, stats)

    def _ended(self, result: Any, call: Any, stats: MethodStats) -> Any:
        stats.running -= 1
        if isinstance(result, Failure):
            error = result.value
            code = int(getattr(error, "code", Code.UNKNOWN))
            if code == Code.RESOURCE_EXHAUSTED and error is not None and pushback(error) is not None:
                stats.rate_limited += 1
        else:
            code = 0
            self.metrics.bytes_out += _size(result)
        stats.ended(code, call.elapsed())
        return result


def _size(value: Any) -> int:
    """
    @return: the size of a value as msgpack (what rpcd's native protocol
        sends; an approximation for the other wire formats), 0 for a value
        msgpack cannot carry.
    """
    try:
        return len(_packb(value))
    except Exception:
        return 0


class ServerCollector(Collector):
    """
    Builds the Prometheus series from a L{Metrics} and its daemon's
    counters when scraped.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())

    def _collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        calls = CounterMetricFamily("rpcd_calls", "Calls ended, by method and status code.",
                                    labels=["method", "code"])
        durations = HistogramMetricFamily("rpcd_call_duration_seconds",
                                          "How long calls took, by method.", labels=["method"])
        running = GaugeMetricFamily("rpcd_calls_running", "Calls running now, by method.",
                                    labels=["method"])
        messages = CounterMetricFamily("rpcd_stream_messages", "Stream messages, by method "
                                       "and direction (received, sent).",
                                       labels=["method", "direction"])
        limited = CounterMetricFamily("rpcd_rate_limited", "Calls refused by the rate limiter "
                                      "(RESOURCE_EXHAUSTED before running), by method.",
                                      labels=["method"])
        for method, stats in sorted(metrics.methods.items()):
            for code, count in sorted(stats.codes.items()):
                calls.add_metric([method, code_name(code)], count)
            cumulative = 0
            buckets = []
            for bound, count in zip((*BUCKETS, float("inf")), stats.buckets):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            durations.add_metric([method], buckets, stats.total_seconds)
            running.add_metric([method], stats.running)
            if stats.messages_in or stats.messages_out:
                messages.add_metric([method, "received"], stats.messages_in)
                messages.add_metric([method, "sent"], stats.messages_out)
            if stats.rate_limited:
                limited.add_metric([method], stats.rate_limited)
        yield from (calls, durations, running, messages, limited)
        payload = CounterMetricFamily("rpcd_call_bytes", "Call payload bytes, by direction.",
                                      labels=["direction"])
        payload.add_metric(["received"], metrics.bytes_in)
        payload.add_metric(["sent"], metrics.bytes_out)
        yield payload
        open_now = GaugeMetricFamily("rpcd_connections", "Connections open now, by wire protocol.",
                                     labels=["protocol"])
        opened = CounterMetricFamily("rpcd_connections_opened", "Connections since start, by "
                                     "wire protocol.", labels=["protocol"])
        for protocol, count in metrics.connections().items():
            open_now.add_metric([protocol], count)
            opened.add_metric([protocol], metrics.opened[protocol])
        yield open_now
        yield opened
        server = metrics.server
        if server is None:
            return
        yield CounterMetricFamily("rpcd_connections_refused", "Connections refused by the "
                                  "connection caps (limits.max_connections...).",
                                  value=server.caps.refused)
        failures = CounterMetricFamily("rpcd_login_failures", "Failed logins: bad credentials, "
                                       "or refused by the throttle.", labels=["reason"])
        authenticator = server.authenticator
        failures.add_metric(["bad_credentials"], getattr(authenticator, "failures", 0))
        failures.add_metric(["throttled"], getattr(authenticator, "throttled", 0))
        yield failures


__all__ = ["BUCKETS", "MetricsInterceptor", "Metrics", "MethodStats", "ServerCollector", "code_name"]
