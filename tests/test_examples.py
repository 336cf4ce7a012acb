"""
Tests for the seed documents' services, as their Go programs use them.
"""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from rpcd.errors import Code, ConnectionLost, DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, Unauthenticated
from rpcd.examples.arith import Arith, Cal, ServiceA
from rpcd.examples.hello import HelloService
from rpcd.examples.kvstore import KVStoreService
from rpcd.service import ServiceRegistry
from rpcd.testing import MemoryConnection


class FakeAuthenticator:
    """Knows user/password; refuses a host after three failures."""

    def __init__(self) -> None:
        self.failures: dict[str, int] = {}

    def login(self, host: str, user: object, password: object):  # type: ignore[no-untyped-def]
        if self.failures.get(host, 0) >= 3:
            raise ResourceExhausted("too many failed logins from " + host)
        ok = (user, password) == ("user", "password")
        if not ok:
            self.failures[host] = self.failures.get(host, 0) + 1
        return succeed(ok)


class ArithmeticTests(SynchronousTestCase):
    """Cal.Square, Arith.Multiply and ServiceA.Add."""

    def test_seed_calls(self) -> None:
        """The three seed calls answer as the Go servers do; x/y match X/Y."""
        conn = MemoryConnection([Cal, Arith, ServiceA])
        calls = [conn.client.call("Cal.Square", 12), conn.client.call("Arith.Multiply", {"A": 7, "B": 8}),
                 conn.client.call("ServiceA.Add", {"x": 10, "y": 50})]
        conn.flush()
        self.assertEqual([self.successResultOf(d) for d in calls], [{"Num": 12, "Ans": 144}, 56, 60])


class HelloTests(SynchronousTestCase):
    """The per-connection HelloService with its login."""

    def setUp(self) -> None:
        self.registry = ServiceRegistry()
        self.registry.add(HelloService)
        self.auth = FakeAuthenticator()

    def connect(self) -> MemoryConnection:
        return MemoryConnection(self.registry, authenticator=self.auth)

    def call(self, conn: MemoryConnection, method: str, arg: object):  # type: ignore[no-untyped-def]
        d = conn.client.call(method, arg)
        conn.flush()
        return d

    def test_hello_needs_login(self) -> None:
        """Hello before Login fails with "please login"."""
        conn = self.connect()
        f = self.failureResultOf(self.call(conn, "HelloService.Hello", "x"), Unauthenticated)
        self.assertEqual(f.value.message, "please login")

    def test_login_then_hello(self) -> None:
        """After Login("user:password"), Hello answers with the caller's address."""
        conn = self.connect()
        self.assertEqual(self.successResultOf(self.call(conn, "HelloService.Login", "user:password")), "")
        reply = self.successResultOf(self.call(conn, "HelloService.Hello", "hello"))
        peer = conn.server_protocol.inner.session.peer
        self.assertEqual(reply, "hello:hello, from" + peer)

    def test_wrong_password(self) -> None:
        """A wrong password fails with "auth failed" and leaves the connection logged out."""
        conn = self.connect()
        f = self.failureResultOf(self.call(conn, "HelloService.Login", "user:nope"), Unauthenticated)
        self.assertEqual(f.value.message, "auth failed")
        self.failureResultOf(self.call(conn, "HelloService.Hello", "x"), Unauthenticated)

    def test_login_is_per_connection(self) -> None:
        """A login on one connection does not log in another."""
        one, two = self.connect(), self.connect()
        self.successResultOf(self.call(one, "HelloService.Login", "user:password"))
        self.successResultOf(self.call(one, "HelloService.Hello", "a"))
        self.failureResultOf(self.call(two, "HelloService.Hello", "b"), Unauthenticated)

    def test_throttled(self) -> None:
        """After too many failures from a host, logins fail with RESOURCE_EXHAUSTED."""
        conn = self.connect()
        for _ in range(3):
            self.failureResultOf(self.call(conn, "HelloService.Login", "user:bad"), Unauthenticated)
        f = self.failureResultOf(self.call(conn, "HelloService.Login", "user:password"), ResourceExhausted)
        self.assertIn("too many failed logins", f.value.message)

    def test_no_users(self) -> None:
        """Without configured users every login fails, saying why."""
        conn = MemoryConnection(self.registry)
        f = self.failureResultOf(self.call(conn, "HelloService.Login", "user:password"), Unauthenticated)
        self.assertIn("no users configured", f.value.message)


class KVStoreTests(SynchronousTestCase):
    """Get, Set and the long-poll Watch."""

    def setUp(self) -> None:
        self.store = KVStoreService()
        self.conn = MemoryConnection([self.store])

    def call(self, method: str, arg: object):  # type: ignore[no-untyped-def]
        d = self.conn.client.call(method, arg)
        self.conn.flush()
        return d

    def test_get_set(self) -> None:
        """Set then Get returns the value; a missing key fails with "not found"."""
        self.assertIsNone(self.successResultOf(self.call("KVStoreService.Set", ["abc", "abc-value"])))
        self.assertEqual(self.successResultOf(self.call("KVStoreService.Get", "abc")), "abc-value")
        f = self.failureResultOf(self.call("KVStoreService.Get", "zzz"), NotFound)
        self.assertEqual((f.value.code, f.value.message), (Code.NOT_FOUND, "not found"))

    def test_watch_beside_set(self) -> None:
        """Many Watches wait on one connection; a Set that changes a value wakes them all."""
        watches = [self.call("KVStoreService.Watch", 30) for _ in range(10)]
        self.assertEqual(len(self.watch_timers()), 1)  # one timer for all their timeouts
        self.assertEqual(len(self.store.watch_timeouts[self.conn.clock]), 10)
        for w in watches:
            self.assertNoResult(w)
        self.assertEqual(len(self.store.watchers), 10)
        self.successResultOf(self.call("KVStoreService.Set", ["abc", "v"]))
        self.assertEqual([self.successResultOf(w) for w in watches], ["abc"] * 10)
        self.assertEqual(self.store.watchers, {})
        self.assertEqual(self.watch_timers(), [])
        self.assertEqual(len(self.store.watch_timeouts[self.conn.clock]), 0)

    def watch_timers(self, clock: Clock | None = None) -> list:
        """The timers of Watch timeouts still scheduled (on the connection's clock by default)."""
        return [c for c in (clock or self.conn.clock).getDelayedCalls()
                if c.func.__qualname__ == "Timeouts._fire"]

    def test_unchanged_value_does_not_wake(self) -> None:
        """Setting a key to the value it has wakes nobody, as in the seed."""
        self.successResultOf(self.call("KVStoreService.Set", ["k", "v"]))
        watch = self.call("KVStoreService.Watch", 30)
        self.successResultOf(self.call("KVStoreService.Set", ["k", "v"]))
        self.assertNoResult(watch)

    def test_watch_timeout(self) -> None:
        """A Watch with no change fails with "timeout" and is removed."""
        watch = self.call("KVStoreService.Watch", 2)
        self.conn.clock.advance(2)
        self.conn.flush()
        f = self.failureResultOf(watch, DeadlineExceeded)
        self.assertEqual(f.value.message, "timeout")
        self.assertEqual(self.store.watchers, {})

    def test_watch_removed_on_disconnect(self) -> None:
        """A dropped connection removes its watchers and their timers."""
        watches = [self.call("KVStoreService.Watch", 30) for _ in range(2)]
        self.assertEqual(len(self.store.watchers), 2)
        self.assertEqual(len(self.watch_timers()), 1)
        self.conn.disconnect()
        for w in watches:
            self.failureResultOf(w, ConnectionLost)
        self.assertEqual(self.store.watchers, {})
        self.assertEqual(self.watch_timers(), [])
        self.assertEqual(len(self.store.watch_timeouts[self.conn.clock]), 0)

    def test_watch_cancelled_by_caller(self) -> None:
        """A Watch its caller cancels is removed at the server; the one beside it still waits and is woken."""
        cancelled, kept = (self.call("KVStoreService.Watch", 30) for _ in range(2))
        self.assertEqual(len(self.store.watchers), 2)
        cancelled.cancel()
        self.conn.flush()
        self.failureResultOf(cancelled)
        self.assertEqual(len(self.store.watchers), 1)
        self.successResultOf(self.call("KVStoreService.Set", ["k", "v"]))
        self.assertEqual(self.successResultOf(kept), "k")
        self.assertEqual((self.store.watchers, len(self.store.watch_timeouts[self.conn.clock])), ({}, 0))
        self.assertEqual(self.watch_timers(), [])

    def test_watch_timeouts_each_at_its_own(self) -> None:
        """Watches with different timeouts on one timer each fail at their own, not before."""
        five, two = self.call("KVStoreService.Watch", 5), self.call("KVStoreService.Watch", 2)
        self.conn.clock.advance(1.5)
        self.conn.flush()
        self.assertNoResult(two)
        self.conn.clock.advance(0.5)
        self.conn.flush()
        self.assertEqual(self.failureResultOf(two, DeadlineExceeded).value.message, "timeout")
        self.assertNoResult(five)
        self.assertEqual(len(self.store.watchers), 1)
        self.conn.clock.advance(3)
        self.conn.flush()
        self.failureResultOf(five, DeadlineExceeded)
        self.assertEqual((self.store.watchers, self.watch_timers()), ({}, []))

    def test_set_on_another_connection_wakes(self) -> None:
        """A Set on one connection wakes the Watches of others, whatever their clocks."""
        other_clock = MemoryConnection([self.store])  # a server on a reactor of its own
        same_clock = MemoryConnection([self.store], clock=self.conn.clock)
        watches = [self.call("KVStoreService.Watch", 30)]
        for conn in (other_clock, same_clock):
            watches.append(conn.client.call("KVStoreService.Watch", 30))
            conn.flush()
        self.assertEqual(len(self.store.watchers), 3)
        self.assertEqual(len(self.store.watch_timeouts), 2)
        self.successResultOf(self.call("KVStoreService.Set", ["x", "1"]))
        other_clock.flush()
        same_clock.flush()
        self.assertEqual([self.successResultOf(w) for w in watches], ["x"] * 3)
        self.assertEqual([len(t) for t in self.store.watch_timeouts.values()], [0, 0])
        self.assertEqual(self.watch_timers(other_clock.clock) + self.watch_timers(), [])

    def test_watch_churn_leaves_nothing(self) -> None:
        """Thousands of Watches cancelled one after another keep the timeouts within twice the waiting ones, and leave nothing."""
        waiting = self.call("KVStoreService.Watch", 60)
        timeouts = self.store.watch_timeouts[self.conn.clock]
        for _ in range(2000):
            watch = self.call("KVStoreService.Watch", 60)
            watch.cancel()
            self.conn.flush()
            self.failureResultOf(watch)
            self.assertLessEqual(len(timeouts), 2 * len(self.store.watchers) + 64 + 1)
        self.assertEqual(len(self.store.watchers), 1)
        self.conn.clock.advance(60)
        self.conn.flush()
        self.failureResultOf(waiting, DeadlineExceeded)
        self.assertEqual((self.store.watchers, len(timeouts), self.watch_timers()), ({}, 0, []))

    def test_watch_bounds(self) -> None:
        """A negative or huge timeout is refused."""
        self.failureResultOf(self.call("KVStoreService.Watch", -1), InvalidArgument)
        self.failureResultOf(self.call("KVStoreService.Watch", 10**9), InvalidArgument)
