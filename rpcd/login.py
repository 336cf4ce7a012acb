"""
Checking logins for sessions: the configured users plus per-host throttling
of failed attempts.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from rpcd.auth import LoginRateLimiter, UserStore
from rpcd.config import AuthConfig


class Authenticator:
    """
    What L{rpcd.session.Session.login} asks.

    Password checks run the KDF in a thread, so the reactor never blocks on
    them; failures are counted per peer host.
    """

    def __init__(self, config: AuthConfig, reactor: Any) -> None:
        """
        @param config: the users and throttling settings.
        @param reactor: for the thread pool and the clock.
        """
        self.users = UserStore(config.users, reactor)
        self.limiter = LoginRateLimiter(reactor, config.max_failed_logins, config.failed_login_window)

    def retry_after(self, host: str) -> float | None:
        """
        @param host: the peer's host.
        @return: seconds until that host may try again, or None if it may now.
        """
        return self.limiter.check(host)

    def authenticate(self, host: str, user: str, password: str) -> Deferred[bool]:
        """
        Check a password, counting a failure against the host.

        @param host: the peer's host.
        @param user: the user name.
        @param password: the password.
        @return: a Deferred firing with whether it matched.
        """
        d = self.users.authenticate(user, password)

        def record(ok: bool) -> bool:
            if ok:
                self.limiter.record_success(host)
            else:
                self.limiter.record_failure(host)
            return ok
        return d.addCallback(record)
