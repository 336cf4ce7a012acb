"""
Checking logins for sessions: the configured users, a bounded pool that runs
the KDF, and throttling of failed attempts per peer host and per host and
user, with no way around it:

  - an attempt counts as a failure when it starts, so attempts in flight
    count against the limits, and is forgiven only if it succeeds;
  - a success forgives that attempt and that user's failures from that
    host, never the failures against other users;
  - malformed credentials count as failures and never reach the KDF;
  - beyond the pool's queue, attempts are refused at once and not counted.

(At most one attempt in flight per connection is the session's rule, see
L{rpcd.core.session.Session.login}.)
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from rpcd.daemon.auth import Failures, LoginRateLimiter, UserStore, credentials_problem
from rpcd.daemon.config import AuthConfig
from rpcd.errors import ResourceExhausted, Unauthenticated
from rpcd.daemon.hashpool import HashingPool, PoolFull


def host_key(host: str) -> str:
    """
    What failures from a peer host are counted under.

    An IPv6 peer usually has a whole /64 to pick addresses from, so IPv6
    hosts count by their /64 (an IPv4-mapped address by its IPv4 address).

    @param host: the peer's host, as L{rpcd.core.session.describe_address} gives
        it.
    @return: C{host} itself for IPv4 and anything that is not an IP
        address, else the IPv6 /64 network, e.g. C{2001:db8:1:2::/64}.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return host


@dataclass
class Attempt:
    """
    A login attempt that has been counted as a failure in advance.

    @ivar host: the peer's host.
    @ivar user: the user name, or None when it was malformed (then only the
        host is counted).
    @ivar host_entry: what the host limiter counted it in.
    @ivar user_entry: what the per-user limiter counted it in, or None.
    """

    host: str
    user: str | None
    host_entry: Failures
    user_entry: Failures | None


class LoginThrottle:
    """
    Two limits on failed logins: per peer host, and per peer host and user.
    """

    def __init__(self, clock: IReactorTime, per_host: int = 5, per_user: int = 5,
                 window: float = 60.0, max_entries: int = 10_000) -> None:
        """
        @param clock: the time source.
        @param per_host: failures allowed from one host per window.
        @param per_user: failures allowed against one user from one host per
            window.
        @param window: the window's length, in seconds, counted from a
            key's first failure.
        @param max_entries: how many hosts, and how many (host, user) pairs,
            to remember at most.
        @raise ValueError: a limit out of range.
        """
        self.hosts = LoginRateLimiter(clock, per_host, window, max_entries)
        self.users = LoginRateLimiter(clock, per_user, window, max_entries)

    def start(self, host: str, user: str | None) -> Attempt:
        """
        Begin an attempt: refuse it if either limit is reached, else count it
        as a failure now.

        @param host: the peer's host (an IPv6 host counts by its /64, see
            L{host_key}).
        @param user: the user name, or None if it is malformed.
        @return: the counted attempt, for L{succeeded} or L{not_run}.
        @raise ResourceExhausted: a limit is reached; the message says which
            and how long to wait.
        """
        host = host_key(host)
        wait = self.hosts.check(host)
        if wait is not None:
            raise ResourceExhausted(f"too many failed logins from {host}; "
                                    f"try again in {math.ceil(wait)} s")
        if user is not None:
            wait = self.users.check((host, user))
            if wait is not None:
                raise ResourceExhausted(f"too many failed logins for {user!r} from {host}; "
                                        f"try again in {math.ceil(wait)} s")
        host_entry = self.hosts.record_failure(host)
        user_entry = None if user is None else self.users.record_failure((host, user))
        return Attempt(host, user, host_entry, user_entry)

    def succeeded(self, attempt: Attempt) -> None:
        """
        The attempt logged in: take it back from the host's count and forget
        that user's failures from that host (other users' stay).

        @param attempt: from L{start}.
        """
        self.hosts.forgive(attempt.host, attempt.host_entry)
        if attempt.user is not None:
            self.users.record_success((attempt.host, attempt.user))

    def not_run(self, attempt: Attempt) -> None:
        """
        The attempt was refused before its password was checked (the pool
        was full): take it back from both counts.

        @param attempt: from L{start}.
        """
        self.hosts.forgive(attempt.host, attempt.host_entry)
        if attempt.user is not None and attempt.user_entry is not None:
            self.users.forgive((attempt.host, attempt.user), attempt.user_entry)


class Authenticator:
    """
    What L{rpcd.core.session.Session.login} asks.

    Password checks run the KDF in a L{HashingPool}, so the reactor never
    blocks on them and a flood of them is bounded; L{pool} is a service to
    start and stop with the daemon.

    @ivar users: the L{UserStore}.
    @ivar throttle: the L{LoginThrottle}.
    @ivar pool: the L{HashingPool}.
    @ivar failures: logins failed since start (bad or malformed credentials).
    @ivar throttled: logins refused by the throttle since start.
    """

    def __init__(self, config: AuthConfig, reactor: Any, pool: HashingPool | None = None) -> None:
        """
        @param config: the users and throttling settings.
        @param reactor: for the clock and the pool's results.
        @param pool: where the KDF runs; by default a new L{HashingPool} of
            C{config.login_threads} threads and C{config.login_queue}
            waiting places.
        """
        self.pool = pool if pool is not None else HashingPool(
            reactor, config.login_threads, config.login_queue)
        self.users = UserStore(config.users, reactor, run=self.pool.submit)
        self.throttle = LoginThrottle(reactor, config.max_failed_logins,
                                      config.max_failed_logins_per_user,
                                      config.failed_login_window)
        self.failures = 0
        self.throttled = 0

    def login(self, host: str, user: object, password: object) -> Deferred[bool]:
        """
        Check credentials from a peer, counting the attempt against the host
        and the user as it starts.

        @param host: the peer's host.
        @param user: the user name, as the peer sent it (anything).
        @param password: the password, likewise.
        @return: a Deferred firing with whether they matched, once the KDF
            has run; it fails only if the KDF raised (the attempt stays
            counted).  Cancelling it fails it at once, but the check still
            runs and holds its place in the pool.
        @raise ResourceExhausted: a throttling limit is reached, or the pool
            is full (then the attempt is not counted).
        @raise Unauthenticated: the credentials are malformed (see
            L{credentials_problem}); counted as a failure.
        """
        problem = credentials_problem(user, password)
        well_formed_user = user if isinstance(user, str) and credentials_problem(user, "") is None else None
        try:
            attempt = self.throttle.start(host, well_formed_user)
        except ResourceExhausted:
            self.throttled += 1
            raise
        if problem is not None:
            self.failures += 1
            raise Unauthenticated(f"auth failed: {problem}")
        assert isinstance(user, str) and isinstance(password, str)
        try:
            d = self.users.authenticate(user, password)
        except PoolFull:
            self.throttle.not_run(attempt)
            raise ResourceExhausted("too many logins are being checked; try again later") from None

        def record(ok: bool) -> bool:
            if ok:
                self.throttle.succeeded(attempt)
            else:
                self.failures += 1
            return ok
        return d.addCallback(record)


__all__ = ["Attempt", "Authenticator", "LoginThrottle", "host_key"]
