"""
Rate limiting: token buckets per method, per peer host and per user (the
built-in interceptor C{rate_limit}).

::

    [[interceptors]]
    use = "rate_limit"
    [interceptors.options]
    per_host = { rate = 100, burst = 200 }      # each peer host: 100 calls/s, bursts of 200
    per_user = { rate = 20, burst = 40 }        # each logged-in user (or client certificate CN)
    methods = { "Arith.Multiply" = { rate = 1000, burst = 1000 }, "*" = { rate = 5000, burst = 5000 } }
    max_keys = 10000                            # buckets kept per table (least recently used go)

C{rate} is calls per second, C{burst} the bucket's size (calls allowed at
once after a quiet spell; C{rate} when omitted).  C{methods} limits each
named method across all callers; C{"*"} gives every other method its own
bucket of that size.  A call takes a token from each bucket that applies;
one that finds any of them empty takes none and is refused with
RESOURCE_EXHAUSTED, its details C{{"retry_after": seconds, "limit":
"host" | "user" | "method"}}: the time until the emptiest bucket has a token
again.  Over JSON-RPC on HTTP the answer is HTTP 429 with C{Retry-After}
(whole seconds, rounded up).  rpcd's retry policy and balancer honour the
hint (L{pushback}).

Each table keeps at most C{max_keys} buckets; when it is full the least
recently used bucket is dropped (its key starts again with a full bucket), so
a flood of new peers costs bounded memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Mapping

from twisted.logger import Logger
from zope.interface import implementer

from rpcd.errors import Code, ResourceExhausted, RPCError
from rpcd.core.interfaces import IServerInterceptor

log = Logger()

RETRY_AFTER = "rpcd.retry_after"
"""The key under which a refused call leaves its hint in C{session.data}
(read by the HTTP server for C{Retry-After})."""


class TokenBucket:
    """
    C{rate} tokens a second, at most C{burst} kept.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def refill(self, now: float) -> float:
        """
        @param now: the clock's time.
        @return: the tokens available now.
        """
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def wait(self) -> float:
        """
        @return: seconds until a whole token is available (after L{refill}).
        """
        return max(0.0, (1.0 - self.tokens) / self.rate)


class BucketTable:
    """
    Buckets by key, the least recently used dropped beyond C{max_keys}.
    """

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.buckets: OrderedDict[Any, TokenBucket] = OrderedDict()

    def get(self, key: Any, now: float) -> TokenBucket:
        """
        @return: the key's bucket, made full if it had none.
        """
        buckets = self.buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            bucket = buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            buckets.move_to_end(key)
        return bucket


def _limit(where: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a table {{ rate = N, burst = N }}, not {value!r}")
    unknown = set(value) - {"rate", "burst"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                         "(known: rate, burst)")
    rate = value.get("rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0 \
            or math.isinf(rate):
        raise ValueError(f"{where}.rate must be a number of calls per second > 0, got {rate!r}")
    burst = value.get("burst", rate)
    if isinstance(burst, bool) or not isinstance(burst, (int, float)) or not burst >= 1 \
            or math.isinf(burst):
        raise ValueError(f"{where}.burst must be a number of calls >= 1, got {burst!r}")
    return float(rate), float(burst)


@implementer(IServerInterceptor)
class RateLimit:
    """
    Refuses calls beyond the configured rates.

    @ivar refused: calls refused so far, by limit (C{host}, C{user},
        C{method}).
    """

    def __init__(self, per_host: Mapping[str, Any] | None = None,
                 per_user: Mapping[str, Any] | None = None,
                 methods: Mapping[str, Any] | None = None, max_keys: int = 10000,
                 clock: Any = None) -> None:
        """
        @param per_host: C{{"rate": r, "burst": b}} for each peer host.
        @param per_user: the same for each logged-in user (or, without a
            login, each client certificate's CN; calls with neither are
            not limited by it).
        @param methods: method name (or C{"*"}) to C{{"rate", "burst"}}.
        @param max_keys: buckets kept per table.
        @param clock: the reactor (the global one by default).
        @raise ValueError: a malformed limit; the message names it.
        """
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be an integer >= 1, got {max_keys!r}")
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.hosts = None if per_host is None else BucketTable(*_limit("per_host", per_host), max_keys)
        self.users = None if per_user is None else BucketTable(*_limit("per_user", per_user), max_keys)
        self.methods: dict[str, BucketTable] = {}
        self.any_method: BucketTable | None = None
        if methods is not None:
            if not isinstance(methods, Mapping):
                raise ValueError(f"methods must be a table of method name to limit, not {methods!r}")
            for name, value in methods.items():
                table = BucketTable(*_limit(f"methods.{name}", value), 1 if name != "*" else max_keys)
                if name == "*":
                    self.any_method = table
                else:
                    self.methods[name] = table
        self.refused: dict[str, int] = {"host": 0, "user": 0, "method": 0}

    def intercept(self, call: Any, proceed: Callable[[Any], Any]) -> Any:
        """
        Take a token from each bucket that applies, or refuse the call.

        @raise ResourceExhausted: a bucket is empty; the details carry
            C{retry_after}.
        """
        now = self.clock.seconds()
        buckets: list[tuple[str, TokenBucket]] = []
        method_table = self.methods.get(call.method)
        if method_table is None and call.known:
            method_table = self.any_method
        if method_table is not None:
            buckets.append(("method", method_table.get(call.method, now)))
        if self.hosts is not None:
            host = getattr(call, "peer_host", None) or call.peer
            buckets.append(("host", self.hosts.get(host, now)))
        if self.users is not None:
            user = getattr(call, "user", None)
            if user is None:
                identity = getattr(call, "tls_identity", None)
                cn = getattr(identity, "common_name", None)
                user = None if cn is None else ("cn", cn)
            if user is not None:
                buckets.append(("user", self.users.get(user, now)))
        worst: tuple[float, str] | None = None
        for what, bucket in buckets:
            if bucket.refill(now) < 1.0:
                wait = bucket.wait()
                if worst is None or wait > worst[0]:
                    worst = (wait, what)
        if worst is not None:
            wait, what = worst
            self.refused[what] += 1
            session = getattr(call, "session", None)
            if session is not None:
                session.data[RETRY_AFTER] = wait
            raise ResourceExhausted(
                f"rate limit: too many calls {_whose(what, call)}; retry after {wait:.3g} s",
                details={"retry_after": wait, "limit": what})
        for _, bucket in buckets:
            bucket.tokens -= 1.0
        return proceed(call)


def _whose(what: str, call: Any) -> str:
    if what == "method":
        return f"to {call.method}"
    if what == "host":
        return f"from {getattr(call, 'peer_host', call.peer)}"
    return "from this user"


def pushback(error: BaseException) -> float | None:
    """
    The server's retry-after hint on an error, if it gave one.

    @param error: what a call failed with.
    @return: seconds to wait before trying again, or None (no hint, or a
        malformed one).
    """
    if not isinstance(error, RPCError) or error.code != Code.RESOURCE_EXHAUSTED:
        return None
    details = error.details
    if not isinstance(details, dict):
        return None
    value = details.get("retry_after")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        return None
    return float(value)


def retry_after_header(seconds: float) -> str:
    """
    @param seconds: the hint.
    @return: the value of HTTP's C{Retry-After} (whole seconds, rounded up,
        at least 1).
    """
    return str(max(1, math.ceil(seconds)))
