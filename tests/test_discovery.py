"""
Tests of L{rpcd.etcd} and L{rpcd.discovery} without etcd: the gateway's
requests and answers against an in-memory etcd (L{tests.fake_etcd}), lease
timing on a C{Clock}, and the daemon's wiring over a C{MemoryReactorClock}.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Sequence

from twisted.application.service import IService
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rpcd import config
from rpcd.balancer import Balancer
from rpcd.config import ConfigError
from rpcd.daemon import make_service
from rpcd.discovery import EtcdResolver, Registration, service_key, service_value
from rpcd.etcd import EtcdClient, EtcdError, EtcdUnavailable, LeaseNotFound, prefix_end
from rpcd.pickers import make_picker
from rpcd.resolver import IResolver, IWatchingResolver, ResolverError
from tests.fake_etcd import FakeEtcd, FakeResponse

URL = "http://etcd.test:2379"
PREFIX = "/rpcd/services/"


def setup(min_ttl: int = 2) -> tuple[Clock, FakeEtcd, EtcdClient]:
    """
    @return: a clock, an in-memory etcd on it and a client of it.
    """
    clock = Clock()
    etcd = FakeEtcd(clock, min_ttl=min_ttl)
    return clock, etcd, EtcdClient(URL, reactor=clock, agent=etcd)


def messages(events: Sequence[dict[str, Any]], level: LogLevel | None = None) -> list[str]:
    """
    @return: the formatted log events (at C{level} only, if given).
    """
    return [formatEvent(e) for e in events if level is None or e["log_level"] == level]


@implementer(IAgent)
class OneAnswer:
    """An agent that answers every request with the same response."""

    def __init__(self, code: int, body: bytes) -> None:
        self.code, self.body = code, body

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> Deferred[Any]:
        return succeed(FakeResponse(self.code, self.body))


class EtcdClientTests(SynchronousTestCase):
    """The gateway's requests and answers."""

    def test_grant(self) -> None:
        """grant POSTs the TTL to /v3/lease/grant and fires with the lease id and granted TTL."""
        clock, etcd, client = setup()
        lease, ttl = self.successResultOf(client.grant(10))
        self.assertEqual(etcd.requests, [("/v3/lease/grant", {"TTL": 10})])
        self.assertEqual((lease, ttl), (etcd.next_lease - 1, 10))

    def test_put_is_base64_with_lease_as_string(self) -> None:
        """put sends the key and value in base64 and the lease id as a decimal string."""
        clock, etcd, client = setup()
        lease, _ = self.successResultOf(client.grant(10))
        self.successResultOf(client.put("/a/b", b"\x00value", lease))
        self.assertEqual(etcd.requests[-1], ("/v3/kv/put", {
            "key": base64.b64encode(b"/a/b").decode(), "value": base64.b64encode(b"\x00value").decode(),
            "lease": str(lease)}))

    def test_get_prefix(self) -> None:
        """get_prefix ranges from the prefix to its successor and fires with the pairs in key order."""
        clock, etcd, client = setup()
        for key in ("/p/b", "/p/a", "/q", "/o"):
            self.successResultOf(client.put(key, key.encode()))
        self.assertEqual(self.successResultOf(client.get_prefix("/p/")), [("/p/a", b"/p/a"), ("/p/b", b"/p/b")])
        self.assertEqual(etcd.requests[-1][1], {"key": base64.b64encode(b"/p/").decode(),
                                                "range_end": base64.b64encode(b"/p0").decode()})
        self.assertEqual(self.successResultOf(client.get_prefix("/none/")), [])

    def test_prefix_end(self) -> None:
        """A prefix's range end increments its last byte below 0xff; all 0xff means every key."""
        self.assertEqual(prefix_end(b"/a/"), b"/a0")
        self.assertEqual(prefix_end(b"a\xff"), b"b")
        self.assertEqual(prefix_end(b"\xff\xff"), b"\0")

    def test_keepalive(self) -> None:
        """keepalive fires with the renewed TTL, and with 0 once the lease has gone."""
        clock, etcd, client = setup()
        lease, _ = self.successResultOf(client.grant(6))
        clock.advance(5)
        self.assertEqual(self.successResultOf(client.keepalive(lease)), 6)
        clock.advance(5)
        self.assertIn(lease, etcd.leases)
        clock.advance(2)
        self.assertEqual(self.successResultOf(client.keepalive(lease)), 0)

    def test_revoke(self) -> None:
        """revoke deletes the lease's keys; revoking a lease that has gone is not an error."""
        clock, etcd, client = setup()
        lease, _ = self.successResultOf(client.grant(6))
        self.successResultOf(client.put("/k", b"v", lease))
        self.successResultOf(client.revoke(lease))
        self.assertEqual(etcd.keys, {})
        self.assertIsNone(self.successResultOf(client.revoke(lease)))

    def test_put_on_lost_lease(self) -> None:
        """Putting a key on a lease that has gone fails with LeaseNotFound and etcd's words."""
        clock, etcd, client = setup()
        failure = self.failureResultOf(client.put("/k", b"v", 12345), LeaseNotFound)
        self.assertEqual(str(failure.value), f"{URL}/v3/kv/put: etcdserver: requested lease not found")
        self.assertEqual(failure.value.code, 5)

    def test_connection_refused(self) -> None:
        """A refused connection fails with EtcdUnavailable naming the URL and the reason."""
        clock, etcd, client = setup()
        etcd.down = True
        failure = self.failureResultOf(client.grant(10), EtcdUnavailable)
        self.assertIn(f"{URL}/v3/lease/grant: ", str(failure.value))
        self.assertIn("Connection refused", str(failure.value))

    def test_timeout(self) -> None:
        """A request without an answer fails with EtcdUnavailable after the client's timeout."""
        clock, etcd, client = setup()
        etcd.hold = True
        d = client.grant(10)
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        failure = self.failureResultOf(d, EtcdUnavailable)
        self.assertEqual(str(failure.value), f"{URL}/v3/lease/grant: no answer within 5 s")

    def test_not_json(self) -> None:
        """An answer that is not JSON fails with EtcdError quoting it."""
        client = EtcdClient(URL, reactor=Clock(), agent=OneAnswer(502, b"<html>Bad Gateway</html>"))
        failure = self.failureResultOf(client.grant(10), EtcdError)
        self.assertIn("HTTP 502, not a JSON object: b'<html>Bad Gateway</html>'", str(failure.value))

    def test_error_in_stream(self) -> None:
        """An error inside a streamed answer fails the request; gRPC UNAVAILABLE as EtcdUnavailable."""
        body = json.dumps({"error": {"grpc_code": 14, "http_code": 503,
                                     "message": "etcdserver: no leader"}}).encode()
        client = EtcdClient(URL, reactor=Clock(), agent=OneAnswer(200, body))
        failure = self.failureResultOf(client.keepalive(1), EtcdUnavailable)
        self.assertEqual(str(failure.value), f"{URL}/v3/lease/keepalive: etcdserver: no leader")


class RegistrationTests(SynchronousTestCase):
    """Keeping a daemon's services registered."""

    def start(self, ttl: int = 9, **kwargs: Any) -> tuple[Clock, FakeEtcd, Registration]:
        clock, etcd, client = setup()
        registration = Registration(client, ["Arith", "Health"], "tcp:10.0.0.5:1234",
                                    prefix=PREFIX, ttl=ttl, backoff=lambda n: 1.0, **kwargs)
        registration.startService()
        return clock, etcd, registration

    def test_interface(self) -> None:
        """A Registration is an IService."""
        clock, etcd, client = setup()
        verifyObject(IService, Registration(client, ["Arith"], "tcp:h:1"))

    def test_registers_each_service(self) -> None:
        """Starting puts one key per service, all on one lease, with the documented value."""
        with capturedLogs() as events:
            clock, etcd, registration = self.start()
        self.assertEqual(etcd.paths(), ["/v3/lease/grant", "/v3/kv/put", "/v3/kv/put"])
        values = etcd.values()
        self.assertEqual(sorted(values), [service_key(PREFIX, "Arith", "tcp:10.0.0.5:1234"),
                                          service_key(PREFIX, "Health", "tcp:10.0.0.5:1234")])
        arith = values["/rpcd/services/Arith/tcp:10.0.0.5:1234"]
        self.assertEqual((arith["endpoint"], arith["service"], arith["services"]),
                         ("tcp:10.0.0.5:1234", "Arith", ["Arith", "Health"]))
        self.assertEqual({lease for _, lease in etcd.keys.values()}, {registration.lease})
        self.assertEqual(messages(events), [
            f"registered Arith, Health as tcp:10.0.0.5:1234 in etcd {URL} "
            f"(lease {registration.lease}, 9 s)"])

    def test_value(self) -> None:
        """A key's value is JSON naming the endpoint, the service, every service, host and pid."""
        self.assertEqual(json.loads(service_value("tcp:h:1", "A", ["A", "B"], hostname="h", pid=7)),
                         {"endpoint": "tcp:h:1", "service": "A", "services": ["A", "B"],
                          "hostname": "h", "pid": 7})

    def test_keepalive_every_third_of_ttl(self) -> None:
        """The lease is renewed every ttl/3 seconds, so the keys outlive the TTL."""
        clock, etcd, registration = self.start(ttl=9)
        del etcd.requests[:]
        clock.advance(2.9)
        self.assertEqual(etcd.paths(), [])
        clock.advance(0.1)
        self.assertEqual(etcd.requests, [("/v3/lease/keepalive", {"ID": str(registration.lease)})])
        clock.pump([3] * 10)
        self.assertEqual(etcd.paths(), ["/v3/lease/keepalive"] * 11)
        self.assertEqual(len(etcd.values()), 2)

    def test_granted_ttl_sets_the_pace(self) -> None:
        """When etcd grants a longer TTL than asked for, renewals follow the granted one."""
        clock, etcd, client = setup(min_ttl=6)
        registration = Registration(client, ["Arith"], "tcp:h:1", ttl=2)
        registration.startService()
        self.assertEqual(registration.ttl, 6)
        del etcd.requests[:]
        clock.advance(1.9)
        self.assertEqual(etcd.paths(), [])
        clock.advance(0.1)
        self.assertEqual(etcd.paths(), ["/v3/lease/keepalive"])

    def test_registers_again_after_lost_lease(self) -> None:
        """When a keepalive finds the lease gone, a new lease is granted and every key put again."""
        clock, etcd, registration = self.start()
        first = registration.lease
        etcd.restart()
        del etcd.requests[:]
        with capturedLogs() as events:
            clock.advance(3)
        self.assertEqual(etcd.paths(), ["/v3/lease/keepalive", "/v3/lease/grant",
                                        "/v3/kv/put", "/v3/kv/put"])
        self.assertNotEqual(registration.lease, first)
        self.assertEqual(len(etcd.values()), 2)
        self.assertEqual(messages(events, LogLevel.warn),
                         [f"lease {first} in etcd {URL} has expired; registering again"])

    def test_retries_while_etcd_is_down(self) -> None:
        """While etcd is unreachable each failure is one warning without a traceback; once back, the daemon registers again."""
        clock, etcd, registration = self.start(ttl=3)
        etcd.down = True
        with capturedLogs() as events:
            clock.pump([1] * 5)
        warnings = messages(events, LogLevel.warn)
        self.assertEqual(len(warnings), 5)
        self.assertTrue(warnings[0].startswith(f"service registration: {URL}/v3/lease/keepalive: "
                                               "Connection was refused"), warnings[0])
        self.assertTrue(warnings[0].endswith("; retrying in 1.0 s (rpcd keeps serving)"), warnings[0])
        self.assertFalse([e for e in events if e.get("log_failure")])
        self.assertEqual(etcd.values(), {})  # the lease expired meanwhile
        etcd.down = False
        del etcd.requests[:]
        clock.advance(1)
        self.assertEqual(etcd.paths(), ["/v3/lease/keepalive", "/v3/lease/grant",
                                        "/v3/kv/put", "/v3/kv/put"])
        self.assertEqual(len(etcd.values()), 2)

    def test_puts_again_after_an_error(self) -> None:
        """After a failed keepalive, the keys are put again on the still-live lease."""
        clock, etcd, registration = self.start(ttl=9)
        lease = registration.lease
        etcd.down = True
        clock.advance(3)
        etcd.down = False
        del etcd.keys[next(iter(etcd.keys))]  # lost while we could not see
        del etcd.requests[:]
        clock.advance(1)
        self.assertEqual(etcd.paths(), ["/v3/lease/keepalive", "/v3/kv/put", "/v3/kv/put"])
        self.assertEqual(registration.lease, lease)
        self.assertEqual(len(etcd.values()), 2)

    def test_revokes_on_stop(self) -> None:
        """Stopping revokes the lease, so the keys vanish at once, and stops renewing."""
        clock, etcd, registration = self.start()
        lease = registration.lease
        del etcd.requests[:]
        with capturedLogs() as events:
            self.assertIsNone(self.successResultOf(registration.stopService()))
        self.assertEqual(etcd.requests, [("/v3/lease/revoke", {"ID": str(lease)})])
        self.assertEqual(etcd.values(), {})
        self.assertEqual(messages(events), [f"removed Arith, Health from etcd {URL} (lease {lease} revoked)"])
        clock.pump([3] * 10)
        self.assertEqual(etcd.paths(), ["/v3/lease/revoke"])

    def test_stop_while_etcd_is_down(self) -> None:
        """When the revoke fails, stopping still finishes, with a warning that the keys leave at expiry."""
        clock, etcd, registration = self.start()
        lease = registration.lease
        etcd.down = True
        with capturedLogs() as events:
            self.successResultOf(registration.stopService())
        [warning] = messages(events, LogLevel.warn)
        self.assertTrue(warning.startswith(f"could not revoke lease {lease} in etcd: "), warning)
        self.assertTrue(warning.endswith("; the keys leave when it expires"), warning)

    def test_stop_while_etcd_hangs(self) -> None:
        """A revoke that gets no answer ends stopping after the client's timeout; the pending keepalive is abandoned."""
        clock, etcd, registration = self.start()
        clock.advance(3)
        etcd.hold = True
        clock.advance(3)  # a keepalive now hangs
        d = registration.stopService()
        self.assertNoResult(d)
        clock.advance(5)
        self.successResultOf(d)
        self.assertEqual(etcd.paths()[-2:], ["/v3/lease/keepalive", "/v3/lease/revoke"])

    def test_stop_before_registered(self) -> None:
        """Stopping before a lease was granted revokes nothing."""
        clock, etcd, client = setup()
        etcd.hold = True
        registration = Registration(client, ["Arith"], "tcp:h:1")
        registration.startService()
        self.successResultOf(registration.stopService())
        self.assertEqual(etcd.paths(), ["/v3/lease/grant"])

    def test_advertise_when_known(self) -> None:
        """An advertised endpoint given as a Deferred-returning function is awaited before registering."""
        clock, etcd, client = setup()
        known: Deferred[str] = Deferred()
        registration = Registration(client, ["Arith"], lambda: known)
        registration.startService()
        self.assertEqual(etcd.requests, [])
        known.callback("tcp:h:4242")
        self.assertEqual(list(etcd.values()), ["/rpcd/services/Arith/tcp:h:4242"])


class ResolverTests(SynchronousTestCase):
    """Finding daemons in etcd."""

    def test_interface(self) -> None:
        """EtcdResolver is an IResolver."""
        clock, etcd, client = setup()
        verifyObject(IResolver, EtcdResolver(client, "Arith"))

    def test_resolves_registered_daemons(self) -> None:
        """The resolver lists the endpoints registered for its service, and drops one whose daemon stopped."""
        clock, etcd, client = setup()
        registrations = [Registration(client, services, endpoint, backoff=lambda n: 1.0)
                         for services, endpoint in ((["Arith", "Who"], "tcp:a:1"), (["Who"], "tcp:b:2"))]
        for registration in registrations:
            registration.startService()
        self.assertEqual(self.successResultOf(EtcdResolver(client, "Who").resolve()), ["tcp:a:1", "tcp:b:2"])
        self.assertEqual(self.successResultOf(EtcdResolver(client, "Arith").resolve()), ["tcp:a:1"])
        self.assertEqual(self.successResultOf(EtcdResolver(client, "Ari").resolve()), [])
        self.assertEqual(self.successResultOf(EtcdResolver(client, "Who", prefix="/other/").resolve()), [])
        self.successResultOf(registrations[0].stopService())
        self.assertEqual(self.successResultOf(EtcdResolver(client, "Who").resolve()), ["tcp:b:2"])
        self.assertEqual(etcd.requests[-1], ("/v3/kv/range", {
            "key": base64.b64encode(b"/rpcd/services/Who/").decode(),
            "range_end": base64.b64encode(b"/rpcd/services/Who0").decode()}))

    def test_skips_foreign_values(self) -> None:
        """A key under the prefix whose value is not a registration is skipped with a warning."""
        clock, etcd, client = setup()
        self.successResultOf(client.put("/rpcd/services/Who/x", b"not json"))
        self.successResultOf(client.put("/rpcd/services/Who/y", b'{"endpoint": "tcp:y:1"}'))
        self.successResultOf(client.put("/rpcd/services/Who/z", b'{"endpoint": 5}'))
        with capturedLogs() as events:
            self.assertEqual(self.successResultOf(EtcdResolver(client, "Who").resolve()), ["tcp:y:1"])
        self.assertEqual(len(messages(events, LogLevel.warn)), 2)

    def test_etcd_down(self) -> None:
        """When etcd cannot be asked, resolving fails with a ResolverError naming the service."""
        clock, etcd, client = setup()
        etcd.down = True
        failure = self.failureResultOf(EtcdResolver(client, "Who").resolve(), ResolverError)
        self.assertIn(f"finding Who in etcd: {URL}/v3/kv/range: Connection was refused",
                      str(failure.value))

    def test_balancer_logs_one_line(self) -> None:
        """A balancer whose resolver fails with ResolverError logs one warning without a traceback."""
        clock, etcd, client = setup()
        etcd.down = True
        resolver = EtcdResolver(client, "Who")

        @implementer(IResolver)
        class Polled:
            def resolve(self) -> Deferred[list[Any]]:
                return resolver.resolve()
        balancer = Balancer(clock, lambda endpoint: Deferred(), picker=make_picker("round_robin"))
        with capturedLogs() as events:
            balancer.start(Polled())
        [warning] = messages(events, LogLevel.warn)
        self.assertTrue(warning.startswith("resolving endpoints failed: finding Who in etcd: "), warning)
        self.assertFalse([e for e in events if e.get("log_failure")])

    def test_resolve_keeps_the_last_known(self) -> None:
        """Once it has found endpoints, the resolver answers them again while etcd is down, with a warning."""
        clock, etcd, client = setup()
        self.successResultOf(client.put("/rpcd/services/Who/a", b'{"endpoint": "tcp:a:1"}'))
        resolver = EtcdResolver(client, "Who")
        self.assertEqual(self.successResultOf(resolver.resolve()), ["tcp:a:1"])
        etcd.down = True
        with capturedLogs() as events:
            self.assertEqual(self.successResultOf(resolver.resolve()), ["tcp:a:1"])
        [warning] = messages(events, LogLevel.warn)
        self.assertIn("keeping the last 1 known endpoints", warning)


def register(client: EtcdClient, name: str) -> None:
    """Put a registration for C{tcp:NAME:1} under Who."""
    client.put(f"/rpcd/services/Who/tcp:{name}:1",
               json.dumps({"endpoint": f"tcp:{name}:1"}).encode())


def unregister(client: EtcdClient, name: str, etcd: FakeEtcd) -> None:
    """Delete a registration, as a revoked lease does."""
    key = f"/rpcd/services/Who/tcp:{name}:1".encode()
    del etcd.keys[key]
    etcd._changed(key, None)


class WatchTests(SynchronousTestCase):
    """EtcdResolver.watch, and a balancer watching it."""

    def watch(self, client: EtcdClient, **kwargs: Any) -> tuple[EtcdResolver, list[list[str]], Deferred[None]]:
        resolver = EtcdResolver(client, "Who", backoff=lambda n: 1.0, **kwargs)
        seen: list[list[str]] = []
        d = resolver.watch(seen.append)
        d.addErrback(lambda f: f.trap(CancelledError))
        self.addCleanup(d.cancel)
        return resolver, seen, d

    def test_interface(self) -> None:
        """EtcdResolver is an IWatchingResolver."""
        clock, etcd, client = setup()
        verifyObject(IWatchingResolver, EtcdResolver(client, "Who"))

    def test_changes_as_they_happen(self) -> None:
        """The watch reports the endpoints, then each registration and removal as etcd makes it, with no clock advance."""
        clock, etcd, client = setup()
        register(client, "a")
        resolver, seen, d = self.watch(client)
        register(client, "b")
        unregister(client, "a", etcd)
        self.assertEqual(seen, [["tcp:a:1"], ["tcp:a:1", "tcp:b:1"], ["tcp:b:1"]])
        self.assertEqual(clock.seconds(), 0)
        self.assertEqual(etcd.paths(), ["/v3/kv/put", "/v3/kv/range", "/v3/watch",
                                        "/v3/kv/put"])
        self.assertEqual(etcd.requests[2][1]["create_request"]["start_revision"], "3")

    def test_no_change_missed_across_a_reconnect(self) -> None:
        """When the watch stream breaks, changes made meanwhile are reported after it watches again from the last revision it saw, without reading the keys again."""
        clock, etcd, client = setup()
        register(client, "a")
        resolver, seen, d = self.watch(client)
        register(client, "b")
        with capturedLogs() as events:
            etcd.cut_watches()
        [warning] = messages(events, LogLevel.warn)
        self.assertIn("watching again in 1.0 s from revision 4, keeping 2 known endpoints", warning)
        register(client, "c")
        unregister(client, "a", etcd)
        self.assertEqual(seen[-1], ["tcp:a:1", "tcp:b:1"])
        clock.advance(1)
        self.assertEqual(seen[-1], ["tcp:b:1", "tcp:c:1"])
        self.assertEqual(etcd.paths().count("/v3/kv/range"), 1)
        self.assertEqual(etcd.requests[-1], ("/v3/watch", {"create_request": {
            "key": base64.b64encode(b"/rpcd/services/Who/").decode(),
            "range_end": base64.b64encode(b"/rpcd/services/Who0").decode(),
            "start_revision": "4"}}))

    def test_compacted_revision_reads_again(self) -> None:
        """When the revision to watch from was compacted away, the resolver reads the keys again."""
        clock, etcd, client = setup()
        register(client, "a")
        resolver, seen, d = self.watch(client)
        etcd.cut_watches()
        register(client, "b")
        register(client, "c")
        etcd.compact()
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(seen[-1], ["tcp:a:1", "tcp:b:1", "tcp:c:1"])
        self.assertEqual(etcd.paths().count("/v3/kv/range"), 2)
        register(client, "d")
        self.assertEqual(seen[-1], ["tcp:a:1", "tcp:b:1", "tcp:c:1", "tcp:d:1"])

    def test_etcd_that_lost_its_data(self) -> None:
        """A watch answered by an etcd whose revisions started again (its data lost) reads the keys again."""
        clock, etcd, client = setup()
        for name in "abc":
            register(client, name)
        resolver, seen, d = self.watch(client)
        etcd.cut_watches()
        etcd.restart()
        register(client, "d")
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(seen[-1], ["tcp:d:1"])
        self.assertEqual(etcd.paths().count("/v3/kv/range"), 2)
        register(client, "e")
        self.assertEqual(seen[-1], ["tcp:d:1", "tcp:e:1"])

    def test_etcd_away_keeps_the_endpoints(self) -> None:
        """While etcd is down the watch reports nothing, retries with backoff, and the resolver answers the last known endpoints; it catches up when etcd is back."""
        clock, etcd, client = setup()
        register(client, "a")
        resolver, seen, d = self.watch(client)
        etcd.down = True
        etcd.cut_watches()
        with capturedLogs() as events:
            clock.advance(1)
            clock.advance(1)
        self.assertEqual(len(messages(events, LogLevel.warn)), 2)
        self.assertEqual(seen, [["tcp:a:1"]])
        self.assertEqual(self.successResultOf(resolver.resolve()), ["tcp:a:1"])
        etcd.down = False
        register(client, "b")
        clock.advance(1)
        self.assertEqual(seen[-1], ["tcp:a:1", "tcp:b:1"])

    def test_cancel_stops(self) -> None:
        """Cancelling the watch ends its stream and leaves no timer."""
        clock, etcd, client = setup()
        resolver, seen, d = self.watch(client)
        [(_, _, response)] = etcd.watches
        d.cancel()
        self.assertTrue(response.ended)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bad_stream(self) -> None:
        """A watch stream line that is not JSON ends the watch with EtcdError naming the URL."""
        clock, etcd, client = setup()
        seen: list[Any] = []
        d = client.watch_prefix("/p/", 1, seen.append)
        [(_, _, response)] = etcd.watches
        response.protocol.dataReceived(b"nope\n")
        failure = self.failureResultOf(d, EtcdError)
        self.assertIn(f"{URL}/v3/watch: not a JSON object", str(failure.value))
        self.assertEqual(seen, [{"header": etcd._header(), "created": True}])

    def test_refused_watch(self) -> None:
        """A watch answered with an error status fails with EtcdError."""
        client = EtcdClient(URL, reactor=Clock(), agent=OneAnswer(404, b"no"))
        self.failureResultOf(client.watch_prefix("/p/", 1, lambda m: None), EtcdError)

    def test_balancer_follows_the_watch(self) -> None:
        """A balancer given an EtcdResolver and no resolve interval follows registrations as etcd reports them, and stops watching on close."""
        clock, etcd, client = setup()
        register(client, "a")
        balancer = Balancer(clock, lambda endpoint: Deferred(), picker=make_picker("round_robin"))
        balancer.start(EtcdResolver(client, "Who"))
        self.assertEqual([b.key for b in balancer.backends], ["tcp:a:1"])
        register(client, "b")
        self.assertEqual([b.key for b in balancer.backends], ["tcp:a:1", "tcp:b:1"])
        unregister(client, "a", etcd)
        self.assertEqual([b.key for b in balancer.backends], ["tcp:b:1"])
        self.assertEqual(etcd.paths().count("/v3/kv/range"), 1)
        [(_, _, response)] = etcd.watches
        balancer.close()
        self.assertTrue(response.ended)


DISCOVERY = """
[server]
listen = ["tcp:4321:interface=127.0.0.1"]
[services.Arith]
[discovery]
etcd = "http://127.0.0.1:2379"
advertise = "tcp:127.0.0.1:{port}"
"""


class ConfigTests(SynchronousTestCase):
    """The [discovery] table."""

    def error(self, text: str) -> str:
        return str(self.assertRaises(ConfigError, config.parse, text, "x.toml"))

    def test_defaults(self) -> None:
        """Only etcd and advertise are required; prefix and ttl have defaults; without the table there is no discovery."""
        loaded = config.parse(DISCOVERY, "x.toml").discovery
        assert loaded is not None
        self.assertEqual((loaded.etcd, loaded.advertise, loaded.prefix, loaded.ttl),
                         ("http://127.0.0.1:2379", "tcp:127.0.0.1:{port}", "/rpcd/services/", 10))
        self.assertIsNone(config.load().discovery)

    def test_all_keys(self) -> None:
        """Every key is read."""
        loaded = config.parse('[discovery]\netcd = "https://e:1"\nadvertise = "tcp:h:1"\n'
                              'prefix = "/x/"\nttl = 30\n', "x.toml").discovery
        assert loaded is not None
        self.assertEqual((loaded.etcd, loaded.advertise, loaded.prefix, loaded.ttl),
                         ("https://e:1", "tcp:h:1", "/x/", 30))

    def test_errors(self) -> None:
        """Bad [discovery] settings are refused naming the file and the key."""
        base = '[discovery]\netcd = "http://e:1"\nadvertise = "tcp:h:1"\n'
        cases = {
            "[discovery]\nadvertise = 'tcp:h:1'\n": "x.toml: discovery.etcd: is required",
            "[discovery]\netcd = 'http://e:1'\n": "x.toml: discovery.advertise: is required",
            "discovery = 5\n": "x.toml: discovery: must be a table, not an integer",
            base + "ttl = 1\n": "x.toml: discovery.ttl: must be between 2 and 3600 seconds, got 1",
            base + "ttl = '10'\n": "x.toml: discovery.ttl: must be an integer, not a string",
            base + "prefix = ''\n": "x.toml: discovery.prefix: must not be empty",
            base + "lease = 3\n": "x.toml: [discovery] unknown key 'lease'",
            base.replace("http://e:1", "e:2379"): "x.toml: discovery.etcd: must be etcd's client URL",
            base.replace("tcp:h:1", "h"): "x.toml: discovery.advertise: must be a Twisted endpoint string",
            base.replace("tcp:h:1", "tcp:{host}:1"): "x.toml: discovery.advertise: the only placeholder is {port}",
        }
        for text, expected in cases.items():
            self.assertIn(expected, self.error(text), text)


class DaemonWiringTests(SynchronousTestCase):
    """The daemon registers itself when its config has [discovery]."""

    def test_registers_with_listener_port(self) -> None:
        """The daemon's registration asks etcd over HTTP for a lease, then puts keys advertising the first listener's port."""
        reactor = MemoryReactorClock()
        top = make_service(config.parse(DISCOVERY, "x.toml"), reactor)
        top.startService()
        self.addCleanup(top.stopService)
        [(host, port, factory, _, _)] = reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 2379))
        transport = StringTransport()
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(transport)
        request = transport.value()
        self.assertTrue(request.startswith(b"POST /v3/lease/grant HTTP/1.1\r\n"), request)
        self.assertIn(b"\r\nContent-Type: application/json\r\n", request)
        self.assertTrue(request.endswith(b'\r\n\r\n{"TTL": 10}'), request)
        body = b'{"header":{},"ID":"77","TTL":"10"}'
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertEqual(len(reactor.tcpClients), 2)
        transport = StringTransport()
        second = reactor.tcpClients[1][2].buildProtocol(None)
        assert second is not None
        second.makeConnection(transport)
        request = transport.value()
        self.assertTrue(request.startswith(b"POST /v3/kv/put HTTP/1.1\r\n"), request)
        put = json.loads(request.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(put["lease"], "77")
        key = base64.b64decode(put["key"]).decode()
        self.assertEqual(key, "/rpcd/services/Arith/tcp:127.0.0.1:4321")
