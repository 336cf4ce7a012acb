"""
Tests for login throttling with no bypass: L{rpcd.auth.credentials_problem},
L{rpcd.hashpool}, L{rpcd.login} and L{rpcd.session.Session.login}, on a
L{Clock} and a hashing pool whose "threads" run when the test says so.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from rpcd import auth
from rpcd.config import AuthConfig
from rpcd.errors import ResourceExhausted, Unauthenticated
from rpcd.examples.hello import HelloService
from rpcd.hashpool import HashingPool, PoolFull
from rpcd.login import Authenticator, LoginThrottle, host_key
from rpcd.service import ServiceRegistry
from rpcd.session import Session
from rpcd.testing import MemoryConnection
from tests.test_auth import FAST, FakeThreadPool

ALICE = auth.hash_password("wonderland", **FAST)
BOB = auth.hash_password("builder", **FAST)


class StartableThreadPool(FakeThreadPool):
    """
    L{FakeThreadPool} with the C{start}/C{stop} a L{HashingPool} calls.

    @ivar started: whether C{start} was called and C{stop} not since.
    @ivar stops: how many times C{stop} was called.
    """

    def __init__(self) -> None:
        super().__init__()
        self.started = False
        self.stops = 0

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False
        self.stops += 1

    def run_one(self) -> None:
        """
        Run the oldest pending job only.
        """
        rest, self.pending = self.pending[1:], self.pending[:1]
        self.run_all()
        self.pending = rest


class FakeReactor(Clock):
    """
    A clock whose C{callFromThread} runs the call at once (the fake pool's
    "threads" are the test's own).
    """

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        f(*args, **kw)


def started_pool(clock: FakeReactor, threads: int = 2, queue: int = 64) -> tuple[HashingPool, StartableThreadPool]:
    """
    @return: a running L{HashingPool} on a fake thread pool, and that pool.
    """
    threadpool = StartableThreadPool()
    pool = HashingPool(clock, threads, queue, threadpool=threadpool)
    pool.startService()
    return pool, threadpool


class CredentialsTests(SynchronousTestCase):
    """
    Tests for L{auth.credentials_problem}.
    """

    def test_well_formed(self) -> None:
        """
        Strings of sane length, any Unicode included, and empty ones, pass.
        """
        self.assertIsNone(auth.credentials_problem("alice", "pässwörd ☃"))
        self.assertIsNone(auth.credentials_problem("", ""))
        self.assertIsNone(auth.credentials_problem("u" * auth.MAX_USER_LENGTH,
                                                   "p" * auth.MAX_PASSWORD_LENGTH))

    def test_malformed(self) -> None:
        """
        Each kind of malformed credentials is named, field first, without
        the value.
        """
        cases: list[tuple[object, object, str]] = [
            (None, "x", "no user name given"),
            ("alice", None, "no password given"),
            (["alice"], "x", "the user name must be a string, not list"),
            ("alice", 12345, "the password must be a string, not int"),
            ("u" * (auth.MAX_USER_LENGTH + 1), "x", "the user name is longer than 256 characters"),
            ("alice", "p" * 4_000_000, "the password is longer than 1024 characters"),
            ("al\ud800ice", "x", "the user name is not valid Unicode (it has a lone surrogate)"),
            ("alice", "\udfff", "the password is not valid Unicode (it has a lone surrogate)"),
        ]
        for user, password, reason in cases:
            self.assertEqual(auth.credentials_problem(user, password), reason)

    def test_store_refuses_without_kdf(self) -> None:
        """
        L{auth.UserStore.authenticate} answers False at once for malformed
        credentials, without running the KDF.
        """
        ran: list[str] = []

        def run(check: Callable[[], bool]) -> Deferred[bool]:
            ran.append("kdf")
            return Deferred()

        store = auth.UserStore({"alice": ALICE}, None, run=run)
        self.assertIs(self.successResultOf(store.authenticate("alice", "\ud800")), False)
        self.assertEqual(ran, [])


class ForgiveTests(SynchronousTestCase):
    """
    Tests for L{auth.LoginRateLimiter.forgive}.
    """

    def test_forgive(self) -> None:
        """
        A failure counted in advance can be taken back, once.
        """
        limiter = auth.LoginRateLimiter(Clock(), max_attempts=2)
        entry = limiter.record_failure("h")
        limiter.record_failure("h")
        self.assertIsNotNone(limiter.check("h"))
        limiter.forgive("h", entry)
        self.assertIsNone(limiter.check("h"))

    def test_forgive_other_window(self) -> None:
        """
        Forgiving an attempt of a window that has ended leaves the new
        window's count alone.
        """
        clock = Clock()
        limiter = auth.LoginRateLimiter(clock, max_attempts=1, per_seconds=10)
        old = limiter.record_failure("h")
        clock.advance(10)
        limiter.record_failure("h")
        limiter.forgive("h", old)
        self.assertEqual(limiter.check("h"), 10.0)


class HashingPoolTests(SynchronousTestCase):
    """
    Tests for L{HashingPool} on a fake thread pool.
    """

    def setUp(self) -> None:
        self.clock = FakeReactor()
        self.pool, self.threads = started_pool(self.clock, threads=2, queue=1)

    def test_runs_in_pool(self) -> None:
        """
        Submitted work runs in the thread pool and its result fires the
        Deferred; an exception fails it.
        """
        d = self.pool.submit(lambda: 42)
        bad = self.pool.submit(lambda: 1 // 0)
        self.assertNoResult(d)
        self.assertEqual(self.pool.pending, 2)
        self.threads.run_all()
        self.assertEqual(self.successResultOf(d), 42)
        self.failureResultOf(bad, ZeroDivisionError)
        self.assertEqual(self.pool.pending, 0)

    def test_bounded(self) -> None:
        """
        Beyond threads plus queue pending jobs, submit raises L{PoolFull};
        a finished job frees a place.
        """
        for _ in range(3):
            self.pool.submit(lambda: None)
        self.assertRaises(PoolFull, self.pool.submit, lambda: None)
        self.assertEqual(len(self.threads.pending), 3)
        self.threads.run_one()
        self.pool.submit(lambda: None)
        self.assertEqual(self.pool.pending, 3)

    def test_cancelled_job_counts_until_it_ends(self) -> None:
        """
        A cancelled job's Deferred fails at once, but the job keeps its
        place until its function returns.
        """
        d = self.pool.submit(lambda: True)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.pool.pending, 1)
        self.threads.run_all()
        self.assertEqual(self.pool.pending, 0)

    def test_not_running(self) -> None:
        """
        A pool that is not running refuses work, and stopping it stops the
        thread pool.
        """
        self.pool.stopService()
        self.assertEqual(self.threads.stops, 1)
        self.assertFalse(self.threads.started)
        self.assertRaises(RuntimeError, self.pool.submit, lambda: None)

    def test_bad_sizes(self) -> None:
        """
        No threads, or a negative queue, is refused.
        """
        self.assertRaises(ValueError, HashingPool, self.clock, 0, 1)
        self.assertRaises(ValueError, HashingPool, self.clock, 1, -1)


class RealThreadsTests(TestCase):
    """
    L{HashingPool} with real threads.
    """

    async def test_real_threads_stop(self) -> None:
        """
        The pool runs scrypt in a thread other than the reactor's, and
        stopping the service leaves no thread behind.
        """
        before = set(threading.enumerate())
        pool = HashingPool(reactor, threads=1, queue=0)
        pool.startService()
        ran_in: list[threading.Thread] = []

        def check() -> bool:
            ran_in.append(threading.current_thread())
            return auth.verify_password(ALICE, "wonderland")

        self.assertIs(await pool.submit(check), True)
        self.assertIsNot(ran_in[0], threading.current_thread())
        pool.stopService()
        self.assertEqual(set(threading.enumerate()) - before, set())


class ThrottleTests(SynchronousTestCase):
    """
    Tests for L{LoginThrottle}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock, per_host=5, per_user=3, window=60.0)

    def test_counted_at_start(self) -> None:
        """
        Attempts count as they start: with none finished, the sixth from a
        host is refused.
        """
        for user in "abcde":
            self.throttle.start("10.0.0.1", user)
        e = self.assertRaises(ResourceExhausted, self.throttle.start, "10.0.0.1", "f")
        self.assertEqual(e.message, "too many failed logins from 10.0.0.1; try again in 60 s")

    def test_per_user(self) -> None:
        """
        A user may be tried per_user times from a host; other users still
        have what remains of the host's limit; other hosts are not limited.
        """
        for _ in range(3):
            self.throttle.start("10.0.0.1", "alice")
        self.clock.advance(20.5)
        e = self.assertRaises(ResourceExhausted, self.throttle.start, "10.0.0.1", "alice")
        self.assertEqual(e.message, "too many failed logins for 'alice' from 10.0.0.1; try again in 40 s")
        self.throttle.start("10.0.0.1", "bob")
        self.throttle.start("10.0.0.2", "alice")

    def test_success_keeps_other_users(self) -> None:
        """
        A success forgives itself and that user's failures, not the host's
        failures against other users: a valid login every few guesses does
        not reset the count.
        """
        for _ in range(4):
            for _ in range(2):
                try:
                    self.throttle.start("10.0.0.1", "bob")
                except ResourceExhausted:
                    break
            good = self.throttle.start("10.0.0.1", "alice")
            self.throttle.succeeded(good)
        self.assertEqual(len(self.throttle.users), 1)
        self.assertRaises(ResourceExhausted, self.throttle.start, "10.0.0.1", "bob")
        self.throttle.start("10.0.0.1", "carol")
        self.throttle.start("10.0.0.1", "carol")
        self.assertRaises(ResourceExhausted, self.throttle.start, "10.0.0.1", "carol")

    def test_not_run(self) -> None:
        """
        An attempt that never ran is taken back from both counts.
        """
        attempts = [self.throttle.start("10.0.0.1", "alice") for _ in range(3)]
        self.throttle.not_run(attempts[0])
        self.throttle.start("10.0.0.1", "alice")

    def test_malformed_user_counts_host_only(self) -> None:
        """
        An attempt without a usable user name counts against the host.
        """
        for _ in range(5):
            self.throttle.start("10.0.0.1", None)
        self.assertEqual(len(self.throttle.users), 0)
        self.assertRaises(ResourceExhausted, self.throttle.start, "10.0.0.1", "alice")

    def test_ipv6_by_prefix(self) -> None:
        """
        IPv6 peers count by their /64, so changing the address within it
        does not escape the limit; another /64 is another host.
        """
        for n in range(5):
            self.throttle.start(f"2001:db8:1:2::{n + 1:x}", f"u{n}")
        e = self.assertRaises(ResourceExhausted, self.throttle.start, "2001:db8:1:2:ffff::9", "v")
        self.assertIn("too many failed logins from 2001:db8:1:2::/64;", e.message)
        self.throttle.start("2001:db8:1:3::1", "v")

    def test_host_key(self) -> None:
        """
        IPv4 addresses and non-IP hosts are their own key, IPv4-mapped IPv6
        addresses count as IPv4.
        """
        self.assertEqual(host_key("10.0.0.1"), "10.0.0.1")
        self.assertEqual(host_key("unix"), "unix")
        self.assertEqual(host_key("::ffff:10.0.0.1"), "10.0.0.1")
        self.assertEqual(host_key("fe80::1%eth0"), "fe80::/64")
        self.assertEqual(host_key("::1"), "::/64")

    def test_window_ends(self) -> None:
        """
        After the window, the host may try again.
        """
        for user in "abcde":
            self.throttle.start("10.0.0.1", user)
        self.clock.advance(60)
        self.throttle.start("10.0.0.1", "a")


class AuthenticatorTests(SynchronousTestCase):
    """
    Tests for L{Authenticator} with a fake hashing pool.
    """

    def setUp(self) -> None:
        self.clock = FakeReactor()
        self.pool, self.threads = started_pool(self.clock, threads=2, queue=4)
        config = AuthConfig(users={"alice": ALICE, "bob": BOB}, max_failed_logins=5,
                            max_failed_logins_per_user=3, failed_login_window=60.0)
        self.auth = Authenticator(config, self.clock, pool=self.pool)

    def test_right_and_wrong(self) -> None:
        """
        The right password fires True, a wrong one or an unknown user False,
        each after the KDF ran in the pool.
        """
        results = [self.auth.login("h", "alice", "wonderland"), self.auth.login("h", "alice", "x"),
                   self.auth.login("h", "mallory", "wonderland")]
        for d in results:
            self.assertNoResult(d)
        self.threads.run_all()
        self.assertEqual([self.successResultOf(d) for d in results], [True, False, False])

    def test_in_flight_count(self) -> None:
        """
        Attempts still running count: the sixth concurrent one from a host
        is refused before any has finished.
        """
        for user in ("alice", "alice", "alice", "bob", "bob"):
            self.auth.login("h", user, "guess")
        e = self.assertRaises(ResourceExhausted, self.auth.login, "h", "bob", "builder")
        self.assertIn("too many failed logins from h", e.message)
        self.assertEqual(len(self.threads.pending), 5)

    def test_success_does_not_reset_host(self) -> None:
        """
        Guessing bob's password between valid logins as alice still ends
        at the host's limit.
        """
        refused = 0
        for _ in range(10):
            for password in ("guess1", "guess2"):
                try:
                    self.auth.login("h", "bob", password)
                except ResourceExhausted:
                    refused += 1
            good = self.auth.login("h", "alice", "wonderland")
            self.threads.run_all()
            self.assertIs(self.successResultOf(good), True)
        self.assertEqual(refused, 20 - 3)

    def test_queue_bound(self) -> None:
        """
        Beyond threads plus queue checks, logins from other hosts are
        refused at once with RESOURCE_EXHAUSTED and are not counted.
        """
        for n in range(6):
            self.auth.login(f"10.0.0.{n}", "alice", "guess")
        e = self.assertRaises(ResourceExhausted, self.auth.login, "10.0.0.9", "alice", "wonderland")
        self.assertEqual(e.message, "too many logins are being checked; try again later")
        self.assertNotIn("10.0.0.9", [key for key in self.auth.throttle.hosts._hosts])
        self.threads.run_all()
        d = self.auth.login("10.0.0.9", "alice", "wonderland")
        self.threads.run_all()
        self.assertIs(self.successResultOf(d), True)

    def test_malformed_counted(self) -> None:
        """
        Malformed credentials fail as a login at once, never reach the
        pool, and count against the host (and the user when it is usable).
        """
        cases: list[tuple[object, object]] = [
            ("alice", "\ud800"), ("alice", "p" * 10_000), (["x"], "y"), ("u" * 300, "p"), ("bob", None)]
        for user, password in cases:
            e = self.assertRaises(Unauthenticated, self.auth.login, "h", user, password)
            self.assertTrue(e.message.startswith("auth failed: "), e.message)
        self.assertEqual(self.threads.pending, [])
        self.assertRaises(ResourceExhausted, self.auth.login, "h", "carol", "x")
        self.assertEqual(self.auth.throttle.users.check(("h", "alice")), None)
        self.auth.throttle.users.record_failure(("h", "alice"))
        self.assertIsNotNone(self.auth.throttle.users.check(("h", "alice")))

    def test_default_pool(self) -> None:
        """
        Without a pool given, the authenticator makes one of the configured
        size, which is not running until started.
        """
        config = AuthConfig(users={"alice": ALICE}, login_threads=3, login_queue=7)
        authenticator = Authenticator(config, self.clock)
        self.assertEqual(authenticator.pool.limit, 10)
        self.assertFalse(authenticator.pool.running)


class SessionLoginTests(SynchronousTestCase):
    """
    Tests for L{Session.login} with a real L{Authenticator}.
    """

    def setUp(self) -> None:
        self.clock = FakeReactor()
        self.pool, self.threads = started_pool(self.clock)
        self.auth = Authenticator(AuthConfig(users={"alice": ALICE}), self.clock, pool=self.pool)
        self.session = Session(ServiceRegistry(), "10.0.0.1:5000", "10.0.0.1", self.auth)

    def login(self, user: object, password: object) -> Deferred[None]:
        return Deferred.fromCoroutine(self.session.login(user, password))

    def test_one_in_flight(self) -> None:
        """
        A second login while one is being checked fails at once, saying so,
        and is not counted; once the first ends, another may start.
        """
        first = self.login("alice", "guess")
        second = self.failureResultOf(self.login("alice", "wonderland"), ResourceExhausted)
        self.assertEqual(second.value.message, "a login is already being checked on this connection; "
                                               "wait for its answer before sending another")
        self.threads.run_all()
        self.failureResultOf(first, Unauthenticated)
        third = self.login("alice", "wonderland")
        self.threads.run_all()
        self.successResultOf(third)
        self.assertEqual(self.session.user, "alice")

    def test_cancel_keeps_slot(self) -> None:
        """
        Cancelling a login leaves the connection's slot taken until its
        check has run, and the attempt counted.
        """
        first = self.login("alice", "wonderland")
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.failureResultOf(self.login("alice", "wonderland"), ResourceExhausted)
        self.threads.run_all()
        self.assertIsNone(self.session.user)
        again = self.login("alice", "wonderland")
        self.threads.run_all()
        self.successResultOf(again)

    def test_malformed_logged_as_info(self) -> None:
        """
        Malformed credentials fail the login with a reason and an info log
        line naming the peer, not the value; nothing worse is logged.
        """
        with capturedLogs() as events:
            f = self.failureResultOf(self.login("alice", "\ud800" * 5000), Unauthenticated)
        self.assertEqual(f.value.message, "auth failed: the password is longer than 1024 characters")
        self.assertEqual([e["log_level"] for e in events], [LogLevel.info])
        self.assertEqual(events[0]["peer"], "10.0.0.1:5000")
        self.assertFalse(self.session._login_running)

    def test_login_after_close(self) -> None:
        """
        A login whose check ends after the connection closed does not mark
        the closed session logged in.
        """
        d = self.login("alice", "wonderland")
        self.session.close()
        self.threads.run_all()
        self.successResultOf(d)
        self.assertIsNone(self.session.user)


class HelloThrottleTests(SynchronousTestCase):
    """
    C{HelloService.Login} over in-memory connections with the real
    authenticator and a fake hashing pool.
    """

    def setUp(self) -> None:
        self.clock = FakeReactor()
        self.pool, self.threads = started_pool(self.clock, threads=2, queue=64)
        config = AuthConfig(users={"alice": ALICE}, max_failed_logins=5,
                            max_failed_logins_per_user=5)
        self.auth = Authenticator(config, self.clock, pool=self.pool)
        self.registry = ServiceRegistry()
        self.registry.add(HelloService)

    def connect(self) -> MemoryConnection:
        """
        @return: a native connection from the peer host 10.0.0.1.
        """
        conn = MemoryConnection(self.registry, clock=self.clock, authenticator=self.auth)
        conn.server_protocol.inner.session.peer_host = "10.0.0.1"
        return conn

    def test_concurrent_on_one_connection(self) -> None:
        """
        400 concurrent wrong logins on one connection: one is checked, the
        other 399 are refused at once as a login is in flight.
        """
        conn = self.connect()
        calls = [conn.client.call("HelloService.Login", f"alice:guess{n}") for n in range(400)]
        conn.flush()
        busy = [self.failureResultOf(d, ResourceExhausted) for d in calls[1:]]
        self.assertEqual({f.value.message for f in busy},
                         {"a login is already being checked on this connection; "
                          "wait for its answer before sending another"})
        self.assertEqual(len(self.threads.pending), 1)
        self.threads.run_all()
        conn.flush()
        self.assertEqual(self.failureResultOf(calls[0], Unauthenticated).value.message, "auth failed")

    def test_concurrent_on_many_connections(self) -> None:
        """
        Wrong logins on 20 connections at once: exactly 5 are checked and
        fail, 15 are refused as too many, and the right password is
        refused too.
        """
        conns = [self.connect() for _ in range(20)]
        calls = [c.client.call("HelloService.Login", "alice:guess") for c in conns]
        for c in conns:
            c.flush()
        self.assertEqual(len(self.threads.pending), 5)
        self.threads.run_all()
        for c in conns:
            c.flush()
        outcomes = [self.failureResultOf(d).value for d in calls]
        failed = [e for e in outcomes if isinstance(e, Unauthenticated)]
        limited = [e for e in outcomes if isinstance(e, ResourceExhausted)]
        self.assertEqual((len(failed), len(limited)), (5, 15))
        late = conns[0].client.call("HelloService.Login", "alice:wonderland")
        conns[0].flush()
        self.failureResultOf(late, ResourceExhausted)

    def test_no_colon_counted(self) -> None:
        """
        A request without ":" fails with the hint and counts as a failure.
        """
        conn = self.connect()
        for _ in range(5):
            d = conn.client.call("HelloService.Login", "alice")
            conn.flush()
            self.assertEqual(self.failureResultOf(d, Unauthenticated).value.message,
                             'auth failed: send "user:password"')
        d = conn.client.call("HelloService.Login", "alice:wonderland")
        conn.flush()
        self.failureResultOf(d, ResourceExhausted)

    def test_lone_surrogate_over_jsonrpc(self) -> None:
        """
        A lone surrogate in credentials sent over Go's jsonrpc (JSON allows
        the escape) is a failed login with a reason, not an internal error.
        """
        conn = MemoryConnection(self.registry, codec="jsonrpc", clock=self.clock,
                                authenticator=self.auth)
        d = conn.client.call("HelloService.Login", "alice:\ud800")
        conn.flush()
        f = self.failureResultOf(d)
        self.assertIn("auth failed: the password is not valid Unicode", str(f.value))
        self.assertEqual(self.threads.pending, [])


_AUTH = """
[server]
listen = ["tcp:0:interface=127.0.0.1"]
[auth]
{keys}
[auth.users]
alice = "{hash}"
[services.HelloService]
"""


class AuthConfigTests(SynchronousTestCase):
    """
    The C{[auth]} keys, and the daemon's hashing pool service.
    """

    def parse(self, keys: str = "") -> AuthConfig:
        from rpcd import config
        return config.parse(_AUTH.format(keys=keys, hash=ALICE), "x.toml").auth

    def test_defaults(self) -> None:
        """
        Without the new keys, the per-user limit is the per-host one and the
        pool has 2 threads and 64 waiting places.
        """
        auth_config = self.parse("max_failed_logins = 7")
        self.assertEqual((auth_config.max_failed_logins, auth_config.max_failed_logins_per_user,
                          auth_config.login_threads, auth_config.login_queue), (7, 7, 2, 64))

    def test_keys(self) -> None:
        """
        Each key is read.
        """
        auth_config = self.parse("max_failed_logins = 20\nmax_failed_logins_per_user = 4\n"
                                 "login_threads = 3\nlogin_queue = 0\nfailed_login_window = 30")
        self.assertEqual((auth_config.max_failed_logins, auth_config.max_failed_logins_per_user,
                          auth_config.login_threads, auth_config.login_queue,
                          auth_config.failed_login_window), (20, 4, 3, 0, 30.0))

    def test_bad_values(self) -> None:
        """
        Out-of-range or mistyped values are refused, naming the key.
        """
        from rpcd.config import ConfigError
        for keys, words in [("max_failed_logins_per_user = 0", "auth.max_failed_logins_per_user: must be positive"),
                            ("login_threads = 0", "auth.login_threads: must be between 1 and 256"),
                            ("login_queue = -1", "auth.login_queue: must be between 0 and 100000"),
                            ("login_queue = 'many'", "auth.login_queue: must be an integer")]:
            e = self.assertRaises(ConfigError, self.parse, keys)
            self.assertIn(words, str(e))

    def test_daemon_runs_pool(self) -> None:
        """
        A daemon with users starts its hashing pool before its listeners and
        stops it with them; one without users has none.
        """
        from twisted.internet.testing import MemoryReactor

        from rpcd import config
        from rpcd.daemon import make_service
        memory = MemoryReactor()
        top = make_service(config.parse(_AUTH.format(keys="login_threads = 3", hash=ALICE), "x.toml"),
                           memory)
        pool = top.rpc_server.authenticator.pool
        self.assertIs(list(top)[0], pool)
        self.assertEqual(pool.limit, 3 + 64)
        top.privilegedStartService()
        top.startService()
        self.assertTrue(pool.running)
        top.stopService()
        self.assertFalse(pool.running)
        self.assertRaises(RuntimeError, pool.submit, lambda: None)
        bare = make_service(config.parse("[server]\nlisten = ['tcp:0']\n[services.Arith]\n", "y.toml"), memory)
        self.assertEqual([s for s in bare if isinstance(s, HashingPool)], [])
