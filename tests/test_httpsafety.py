"""
Tests for the HTTP wire protocol's safety rules, at byte level without
sockets: C{Host} and C{Origin} checks (L{rpcd.wire.httporigin}), one session
per request, the filtered and switchable C{/debug/rpc}, the pipelining and
write buffer bounds, half-close, and ALPN on rpcd's TLS listeners.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet.address import IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.ssl import CertificateOptions, trustRootFromCertificates
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from rpcd import certs
from rpcd.builtin import Introspection
from rpcd.config import ConfigError, HTTPConfig, parse
from rpcd.context import CallContext
from rpcd.errors import ResourceExhausted
from rpcd.endpoints import ALPN_PROTOCOLS, WatchedServerOptions, load_certificates, select_alpn, \
    server_tls_options
from rpcd.server import Limits, RPCServer
from rpcd.service import ServiceRegistry, exposed
from rpcd.wire.httporigin import OriginPolicy, check_host_pattern, check_origin_pattern, split_host
from rpcd.wire.httpserver import HTTPServerProtocol
from tests.test_httpwire import responses
from tests.test_tlsinfo import handshake


class Waiter:
    """Answers when the test fires C{waiting}, in order."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[Any]] = []
        self.cancelled: list[int] = []

    @exposed
    def Later(self, n: int) -> Deferred[Any]:
        """Answer n when the test fires it."""
        d: Deferred[Any] = Deferred(lambda d: self.cancelled.append(n))
        self.waiting.append(d)
        return d.addCallback(lambda _: n)

    @exposed
    def Now(self, n: int) -> int:
        """Answer n at once."""
        return n

    @exposed
    def Big(self, size: int) -> str:
        """Answer a string of size bytes at once, counting the calls."""
        self.big_calls = getattr(self, "big_calls", 0) + 1
        return "x" * size


class Door:
    """Logs its caller's session in, without a password."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    @exposed
    def Login(self, user: str, ctx: CallContext) -> str:
        """Mark the session logged in as user."""
        ctx.session.user = user
        ctx.session.on_close(lambda: self.closed.append(user))
        return user


class Secret:
    """Needs a login."""

    @exposed
    def Get(self, ctx: CallContext) -> str:
        """Return who is logged in."""
        return str(ctx.session.user)


class Vault:
    """Needs the certificate identity "alice"."""

    @exposed
    def Open(self) -> str:
        """Return "open"."""
        return "open"


@dataclass
class Access:
    """A service's access policy, as ServiceConfig carries it."""

    require_login: bool = False
    require_identity: tuple[str, ...] = ()


@dataclass
class Identity:
    """A client certificate's names, as L{rpcd.tlsinfo.PeerIdentity} has them."""

    common_name: str | None
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()


class Passwords:
    """An authenticator with one user, alice, password "pw", that counts failures."""

    def __init__(self) -> None:
        self.failures = 0
        self.cancelled = False
        self.pending: Deferred[bool] = Deferred()

    def login(self, host: str, user: object, password: object) -> Deferred[bool]:
        if self.failures >= 3:
            raise ResourceExhausted("too many failed logins from this host; try again in 30 s")
        ok = (user, password) == ("alice", "pw")
        self.failures += not ok
        if password == "slow":
            self.pending = Deferred(lambda d: setattr(self, "cancelled", True))
            return self.pending
        return succeed(ok)


def make_server(http: HTTPConfig = HTTPConfig(), limits: Limits = Limits()) -> tuple[RPCServer, Waiter, Door]:
    """
    A server with C{Waiter}, C{Door}, C{Secret} (login) and C{Vault}
    (identity alice) and the given C{[http]} settings.
    """
    registry = ServiceRegistry()
    waiter, door = Waiter(), Door()
    registry.add(waiter)
    registry.add(door)
    registry.add(Secret(), access=Access(require_login=True))
    registry.add(Vault(), access=Access(require_identity=("alice",)))
    registry.add(Introspection(registry))
    server = RPCServer(registry, Clock(), limits, Passwords())
    server.http = http  # type: ignore[attr-defined]
    return server, waiter, door


def connect(server: RPCServer, host: Any = None) -> tuple[HTTPServerProtocol, StringTransport]:
    """An HTTP protocol on a StringTransport (local address C{host})."""
    protocol = HTTPServerProtocol(server)
    transport = StringTransport(hostAddress=host)
    protocol.makeConnection(transport)
    return protocol, transport


def request(method: str = "POST", target: str = "/rpc", body: bytes = b"", *,
            host: str | None = "localhost", headers: str = "",
            version: str = "HTTP/1.1") -> bytes:
    """One request's bytes."""
    head = f"{method} {target} {version}\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + headers + "\r\n").encode("latin-1") + body


def call(method: str, *params: Any, id: int = 1, **kwargs: Any) -> bytes:
    """A POST of one JSON-RPC 2.0 call."""
    body = json.dumps({"jsonrpc": "2.0", "id": id, "method": method, "params": list(params)})
    return request(body=body.encode(), **kwargs)


def result(body: bytes) -> Any:
    """The result (or the error message) of a JSON-RPC 2.0 response body."""
    reply = json.loads(body)
    return reply["result"] if "result" in reply else ("error", reply["error"]["message"])


class PolicyTests(SynchronousTestCase):
    """L{OriginPolicy} and the config entries it reads."""

    def test_split_host(self) -> None:
        """Host values split into a lower-case name and a port; malformed ones are None."""
        self.assertEqual(split_host("LocalHost:8080"), ("localhost", 8080))
        self.assertEqual(split_host("[0:0::1]:80"), ("::1", 80))
        self.assertEqual(split_host("example.com."), ("example.com", None))
        for bad in ("", "a b", "[zz]", "a:b:c", "a:123456", "[::1"):
            self.assertIsNone(split_host(bad), bad)

    def test_default_hosts(self) -> None:
        """Loopback names and the local address pass, with any port; others do not."""
        policy = OriginPolicy()
        for host in ("localhost", "localhost:1234", "127.0.0.1:1", "[::1]:8080", "[::1]",
                     "192.0.2.7:99"):
            self.assertTrue(policy.host_allowed(host, "192.0.2.7"), host)
        for host in ("evil.example", "evil.example:1234", "127.0.0.2", "localhost.evil.example",
                     "192.0.2.8", "", "a b"):
            self.assertFalse(policy.host_allowed(host, "192.0.2.7"), host)

    def test_configured_hosts(self) -> None:
        """A name (any port), a name with a port, a subdomain suffix and * are honoured."""
        policy = OriginPolicy(("rpc.example", "api.example:8443", ".corp.example"))
        for host in ("rpc.example", "RPC.example:1", "api.example:8443", "corp.example",
                     "a.b.corp.example:80"):
            self.assertTrue(policy.host_allowed(host, None), host)
        for host in ("api.example", "api.example:8444", "xcorp.example", "evil.example"):
            self.assertFalse(policy.host_allowed(host, None), host)
        self.assertTrue(OriginPolicy(("*",)).host_allowed("anything.example", None))

    def test_origins(self) -> None:
        """Same-origin and configured origins pass; others, and null, do not."""
        policy = OriginPolicy((), ("https://app.example",))
        self.assertEqual(policy.origin_allowed("http://localhost:8080", "localhost:8080"),
                         (True, False))
        self.assertEqual(policy.origin_allowed("https://App.example", "localhost"), (True, True))
        self.assertEqual(policy.origin_allowed("https://evil.example", "localhost"), (False, True))
        self.assertEqual(policy.origin_allowed("null", "localhost"), (False, True))
        self.assertEqual(policy.origin_allowed("http://localhost:8081", "localhost:8080"),
                         (False, True))
        self.assertEqual(OriginPolicy((), ("*",)).origin_allowed("null", None), (True, True))

    def test_patterns_checked(self) -> None:
        """Malformed allowed_hosts and allowed_origins entries are refused with the expected form."""
        for good in ("*", "a.example", "a.example:80", ".example", "[::1]:8080"):
            check_host_pattern(good)
        for good in ("*", "null", "https://a.example", "http://127.0.0.1:8080"):
            check_origin_pattern(good)
        with self.assertRaisesRegex(ValueError, "must be a host name"):
            check_host_pattern("http://a.example")
        with self.assertRaisesRegex(ValueError, "no trailing slash"):
            check_origin_pattern("https://a.example/")

    def test_config(self) -> None:
        """The [http] section is read and checked, naming the key at fault."""
        config = parse('[http]\nallowed_hosts = ["RPC.example"]\nallowed_origins = ["*"]\n'
                       'debug_page = false\nmax_pipelined = 4\n', "x.toml")
        self.assertEqual(config.http, HTTPConfig(("rpc.example",), ("*",), False, 4))
        self.assertEqual(parse("", "x.toml").http, HTTPConfig())
        for text, words in (('[http]\nallowed_hosts = ["a b"]', "http.allowed_hosts[0]"),
                            ('[http]\nallowed_origins = [1]', "http.allowed_origins[0]"),
                            ('[http]\nmax_pipelined = 0', "http.max_pipelined"),
                            ('[http]\ndebug_page = "no"', "http.debug_page"),
                            ('[http]\nhosts = []', "unknown key 'hosts'")):
            with self.assertRaisesRegex(ConfigError, words.replace("[", r"\[")):
                parse(text, "x.toml")


class HostTests(SynchronousTestCase):
    """The Host check on every request."""

    def test_foreign_host_refused(self) -> None:
        """A POST for Host evil.example gets 421 naming the Host and the key; the call never runs."""
        server, waiter, _ = make_server()
        protocol, transport = connect(server)
        protocol.dataReceived(call("Waiter.Later", 1, host="evil.example:1234")
                              + call("Waiter.Now", 2, id=2))
        (status, headers, body), (status2, _, body2) = responses(transport.value())
        self.assertEqual(status, 421)
        self.assertIn(b"Host 'evil.example:1234'", body)
        self.assertIn(b"[http] allowed_hosts", body)
        self.assertEqual(waiter.waiting, [])
        self.assertEqual((status2, result(body2)), (200, 2))
        self.assertFalse(transport.disconnecting)

    def test_local_address(self) -> None:
        """The address the connection reached is a Host name of the daemon (IPv6 in brackets)."""
        server, _, _ = make_server()
        protocol, transport = connect(server, IPv6Address("TCP", "2001:db8::5", 80))
        protocol.dataReceived(call("Waiter.Now", 3, host="[2001:db8::5]:80"))
        ((status, _, body),) = responses(transport.value())
        self.assertEqual((status, result(body)), (200, 3))

    def test_debug_page_host(self) -> None:
        """GET /debug/rpc checks the Host too (a rebound page could read it)."""
        server, _, _ = make_server()
        protocol, transport = connect(server)
        protocol.dataReceived(request("GET", "/debug/rpc", host="evil.example"))
        self.assertEqual(responses(transport.value())[0][0], 421)

    def test_no_host_http10(self) -> None:
        """An HTTP/1.0 request without Host (Go's CONNECT) is served."""
        server, _, _ = make_server()
        protocol, transport = connect(server)
        protocol.dataReceived(call("Waiter.Now", 4, host=None, version="HTTP/1.0"))
        ((status, _, body),) = responses(transport.value().replace(b"HTTP/1.0", b"HTTP/1.1"))
        self.assertEqual((status, result(body)), (200, 4))

    def test_unix_socket(self) -> None:
        """On a Unix socket, which no web page reaches, any Host is served."""
        server, _, _ = make_server()
        protocol, transport = connect(server, UNIXAddress(b"/tmp/rpcd.sock"))
        protocol.dataReceived(call("Waiter.Now", 5, host="anything.example"))
        self.assertEqual(responses(transport.value())[0][0], 200)

    def test_configured(self) -> None:
        """A name in allowed_hosts is served."""
        server, _, _ = make_server(HTTPConfig(allowed_hosts=("rpc.example",)))
        protocol, transport = connect(server)
        protocol.dataReceived(call("Waiter.Now", 6, host="rpc.example:443"))
        self.assertEqual(responses(transport.value())[0][0], 200)

    def test_duplicate_content_type(self) -> None:
        """Two Content-Type headers are a 400 and the connection closes."""
        server, _, _ = make_server()
        protocol, transport = connect(server)
        protocol.dataReceived(request(body=b"{}", headers="Content-Type: text/plain\r\n"))
        ((status, _, body),) = responses(transport.value())
        self.assertEqual(status, 400)
        self.assertIn(b"more than one Content-Type", body)
        self.assertTrue(transport.disconnecting)


class OriginTests(SynchronousTestCase):
    """The Origin check on requests that change something."""

    def test_cross_origin_refused(self) -> None:
        """A POST with a foreign Origin gets 403 naming the Origin and the key."""
        server, _, _ = make_server()
        protocol, transport = connect(server)
        protocol.dataReceived(call("Waiter.Now", 1, headers="Origin: https://evil.example\r\n"))
        ((status, _, body),) = responses(transport.value())
        self.assertEqual(status, 403)
        self.assertIn(b"Origin 'https://evil.example'", body)
        self.assertIn(b"[http] allowed_origins", body)

    def test_same_origin(self) -> None:
        """A POST whose Origin is its own Host is served, without CORS headers."""
        server, _, _ = make_server()
        protocol, transport = connect(server)
        protocol.dataReceived(call("Waiter.Now", 1, host="localhost:8080",
                                   headers="Origin: http://localhost:8080\r\n"))
        ((status, headers, _),) = responses(transport.value())
        self.assertEqual(status, 200)
        self.assertNotIn("access-control-allow-origin", headers)

    def test_allowed_origin(self) -> None:
        """A configured origin is served, with the CORS headers a browser needs, preflight included."""
        server, _, _ = make_server(HTTPConfig(allowed_origins=("https://app.example",)))
        protocol, transport = connect(server)
        origin = "Origin: https://app.example\r\n"
        protocol.dataReceived(
            request("OPTIONS", headers=origin + "Access-Control-Request-Method: POST\r\n")
            + call("Waiter.Now", 7, headers=origin))
        (status, headers, _), (status2, headers2, body2) = responses(transport.value())
        self.assertEqual(status, 204)
        self.assertEqual(headers["access-control-allow-origin"], "https://app.example")
        self.assertEqual(headers["access-control-allow-methods"], "POST")
        self.assertEqual(headers["access-control-allow-headers"], "Content-Type")
        self.assertEqual((status2, result(body2)), (200, 7))
        self.assertEqual(headers2["access-control-allow-origin"], "https://app.example")

    def test_get_not_checked(self) -> None:
        """A GET of the debug page with a foreign Origin is served (no CORS: the browser cannot read it)."""
        server, _, _ = make_server()
        protocol, transport = connect(server)
        protocol.dataReceived(request("GET", "/debug/rpc", headers="Origin: https://x.example\r\n"))
        ((status, headers, _),) = responses(transport.value())
        self.assertEqual(status, 200)
        self.assertNotIn("access-control-allow-origin", headers)


class SessionTests(SynchronousTestCase):
    """Each request is its own session."""

    def test_login_does_not_ride_the_connection(self) -> None:
        """A login lasts for its request: the next request on the connection is not logged in."""
        server, _, door = make_server()
        protocol, transport = connect(server)
        protocol.dataReceived(call("Door.Login", "alice") + call("Secret.Get", id=2))
        (_, _, first), (_, _, second) = responses(transport.value())
        self.assertEqual(result(first), "alice")
        self.assertEqual(result(second), ("error", "Secret requires a login on this connection"))
        self.assertEqual(door.closed, ["alice"])
        self.assertIsNone(protocol.session.user)

    def test_login_within_a_batch(self) -> None:
        """Within one request (a batch), a login applies to the calls after it."""
        server, _, _ = make_server()
        protocol, transport = connect(server)
        batch = json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "Door.Login", "params": ["bob"]},
                            {"jsonrpc": "2.0", "id": 2, "method": "Secret.Get", "params": []}])
        protocol.dataReceived(request(body=batch.encode()))
        ((_, _, body),) = responses(transport.value())
        self.assertEqual([r["result"] for r in json.loads(body)], ["bob", "bob"])

    def test_session_closed_after_late_answer(self) -> None:
        """A request's session closes when its answer is ready, and its calls are cancelled if the connection is lost first."""
        server, waiter, door = make_server()
        protocol, transport = connect(server)
        def batch(n: int) -> bytes:
            return request(body=json.dumps([
                {"jsonrpc": "2.0", "id": 1, "method": "Door.Login", "params": ["c"]},
                {"jsonrpc": "2.0", "id": 2, "method": "Waiter.Later", "params": [n]}]).encode())
        protocol.dataReceived(batch(1) + batch(2))
        self.assertEqual(door.closed, [])
        waiter.waiting[0].callback(None)
        self.assertEqual(door.closed, ["c"])
        self.assertEqual(len(responses(transport.value())), 1)
        protocol.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(door.closed, ["c", "c"])
        self.assertEqual(waiter.cancelled, [2])


class AuthorizationTests(SynchronousTestCase):
    """HTTP Basic credentials log one request's session in."""

    def basic(self, credentials: str) -> str:
        """An Authorization header line with Basic credentials."""
        return f"Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n"

    def test_basic_login(self) -> None:
        """With good credentials the request's calls run logged in; the next request is not."""
        server, _, _ = make_server()
        protocol, transport = connect(server)
        protocol.dataReceived(call("Secret.Get", headers=self.basic("alice:pw"))
                              + call("Secret.Get", id=2))
        (status, _, body), (_, _, second) = responses(transport.value())
        self.assertEqual((status, result(body)), (200, "alice"))
        self.assertEqual(result(second), ("error", "Secret requires a login on this connection"))

    def test_refused(self) -> None:
        """Wrong or malformed credentials get 401 with a Basic challenge, then 429 once throttled; no call runs."""
        server, waiter, _ = make_server()
        protocol, transport = connect(server)
        for header in (self.basic("alice:nope"), "Authorization: Bearer x\r\n",
                       "Authorization: Basic %%%\r\n", self.basic("alice"),
                       self.basic("bob:x"), self.basic("alice:x"), self.basic("alice:pw")):
            protocol.dataReceived(call("Waiter.Later", 1, headers=header))
        answers = responses(transport.value())
        self.assertEqual([status for status, _, _ in answers], [401] * 6 + [429])
        self.assertEqual(answers[0][1]["www-authenticate"], 'Basic realm="rpcd", charset="UTF-8"')
        self.assertEqual(answers[0][2], b"401 auth failed\n")
        self.assertIn(b"try again in 30 s", answers[6][2])
        self.assertEqual(waiter.waiting, [])
        self.assertFalse(transport.disconnecting)

    def test_order_kept(self) -> None:
        """A request waiting for its password check holds the answers behind it, in order."""
        server, _, _ = make_server()
        passwords = server.authenticator
        protocol, transport = connect(server)
        protocol.dataReceived(call("Secret.Get", headers=self.basic("alice:slow"))
                              + call("Waiter.Now", 2, id=2))
        self.assertEqual(transport.value(), b"")
        self.assertTrue(protocol.busy())
        passwords.pending.callback(True)
        self.assertEqual([result(b) for _, _, b in responses(transport.value())], ["alice", 2])
        self.assertFalse(protocol.busy())

    def test_lost_during_check(self) -> None:
        """
        Losing the connection during a password check lets the check finish
        (it holds its place in the hashing pool) but runs no call and
        writes nothing.
        """
        server, _, _ = make_server()
        protocol, transport = connect(server)
        protocol.dataReceived(call("Secret.Get", headers=self.basic("alice:slow")))
        protocol.connectionLost(None)  # type: ignore[arg-type]
        self.assertFalse(server.authenticator.cancelled)
        server.authenticator.pending.callback(True)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(protocol.busy())


class ListingTests(SynchronousTestCase):
    """The debug page and Introspection.List show what the caller may call."""

    def page(self, server: RPCServer, identity: Any = None) -> str:
        """The debug page as a client with this certificate identity gets it."""
        protocol, transport = connect(server)
        protocol.session.tls_identity = identity
        protocol.dataReceived(request("GET", "/debug/rpc"))
        ((status, _, body),) = responses(transport.value())
        self.assertEqual(status, 200)
        return body.decode()

    def test_debug_page_filtered(self) -> None:
        """Services needing a login or another identity are not on the page."""
        server, _, _ = make_server()
        page = self.page(server)
        self.assertIn("Service Waiter", page)
        self.assertNotIn("Secret", page)
        self.assertNotIn("Vault", page)
        self.assertIn("Service Vault", self.page(server, Identity("alice")))
        self.assertNotIn("Vault", self.page(server, Identity("bob")))

    def test_debug_page_off(self) -> None:
        """With debug_page = false, /debug/rpc is a 404."""
        server, _, _ = make_server(HTTPConfig(debug_page=False))
        protocol, transport = connect(server)
        protocol.dataReceived(request("GET", "/debug/rpc"))
        ((status, _, body),) = responses(transport.value())
        self.assertEqual((status, body), (404, b"404 page not found\n"))

    def test_introspection_filtered(self) -> None:
        """Introspection.List leaves out what the caller may not call, and lists it once it may."""
        server, _, _ = make_server()
        protocol, transport = connect(server)
        protocol.dataReceived(call("Introspection.List"))
        names = {m["name"] for m in result(responses(transport.value())[0][2])}
        self.assertIn("Waiter.Now", names)
        self.assertNotIn("Secret.Get", names)
        self.assertNotIn("Vault.Open", names)
        session = protocol._request_session()
        session.user = "alice"
        session.tls_identity = Identity(None, ("alice",))
        listed = {m.name for m in server.registry.listing(session)}
        self.assertTrue({"Secret.Get", "Vault.Open"} <= listed)


class PipelineTests(SynchronousTestCase):
    """The bounds on pipelined requests and on the write buffer, and half-close."""

    def test_pipeline_cap(self) -> None:
        """Behind a pending call, at most max_pipelined requests start and reading pauses; the rest follow in order."""
        server, waiter, _ = make_server(HTTPConfig(max_pipelined=3))
        protocol, transport = connect(server)
        protocol.dataReceived(call("Waiter.Later", 0)
                              + b"".join(call("Waiter.Now", i, id=i) for i in range(1, 20)))
        self.assertEqual(len(protocol._queue), 3)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(transport.producerState, "paused")
        waiter.waiting[0].callback(None)
        answers = [result(body) for _, _, body in responses(transport.value())]
        self.assertEqual(answers, list(range(20)))
        self.assertEqual(transport.producerState, "producing")

    def test_write_buffer_full(self) -> None:
        """While the write buffer is over the cap no request starts; once it drains, they do."""
        server, _, _ = make_server()
        protocol, transport = connect(server)
        transport.producer.pauseProducing()
        protocol.dataReceived(call("Waiter.Now", 1) + call("Waiter.Now", 2, id=2))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(transport.producerState, "paused")
        transport.producer.resumeProducing()
        self.assertEqual([result(b) for _, _, b in responses(transport.value())], [1, 2])
        self.assertEqual(transport.producerState, "producing")

    def test_large_answers_fill_the_buffer(self) -> None:
        """
        Each answer is written as soon as it is ready, so the first large one
        that fills the write buffer stops the requests pipelined behind it.
        """
        server, waiter, _ = make_server()
        protocol, transport = connect(server)
        write = transport.write

        def write_and_fill(data: bytes) -> None:
            write(data)
            if len(transport.value()) > 100_000 and not protocol.write_full:
                transport.producer.pauseProducing()  # as a socket over the cap does
        transport.write = write_and_fill  # type: ignore[method-assign]
        protocol.dataReceived(b"".join(call("Waiter.Big", 200_000, id=i) for i in range(10)))
        self.assertEqual(waiter.big_calls, 1)
        self.assertEqual(len(responses(transport.value())), 1)
        transport.clear()
        transport.producer.resumeProducing()
        self.assertEqual(waiter.big_calls, 2)

    def test_answers_waiting_bounded(self) -> None:
        """
        Answers ready behind a slow request count against the write cap: no
        request starts while more than write_buffer_bytes of them wait.
        """
        server, waiter, _ = make_server(limits=Limits(write_buffer_bytes=1_000_000))
        protocol, transport = connect(server)
        protocol.dataReceived(call("Waiter.Later", 1) + b"".join(
            call("Waiter.Big", 400_000, id=i) for i in range(2, 12)))
        self.assertEqual(waiter.big_calls, 3)  # the third passes the cap
        self.assertEqual(transport.value(), b"")
        self.assertEqual(transport.producerState, "paused")
        waiter.waiting[0].callback(None)
        self.assertEqual(waiter.big_calls, 10)
        self.assertEqual([result(b) for _, _, b in responses(transport.value())][0], 1)

    def test_half_close(self) -> None:
        """After the peer's FIN, the requests read before it are answered, then the connection closes."""
        server, waiter, _ = make_server()
        protocol, transport = connect(server)
        protocol.dataReceived(call("Waiter.Later", 1) + call("Waiter.Now", 2, id=2) + b"POST /rp")
        protocol.read_connection_lost()
        self.assertFalse(transport.disconnecting)
        waiter.waiting[0].callback(None)
        self.assertEqual([result(b) for _, _, b in responses(transport.value())], [1, 2])
        self.assertTrue(transport.disconnecting)

    def test_half_close_idle(self) -> None:
        """A FIN with nothing pending closes at once."""
        server, _, _ = make_server()
        protocol, transport = connect(server)
        protocol.read_connection_lost()
        self.assertTrue(transport.disconnecting)


class ALPNTests(SynchronousTestCase):
    """ALPN on rpcd's TLS server options (a real OpenSSL handshake in memory)."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        certs.create_dev_pki(self.dir)
        self.server_options = WatchedServerOptions(
            server_tls_options(self.dir / "server.pem", self.dir / "server.key"))

    def client(self, protocols: list[bytes] | None) -> CertificateOptions:
        """Client options trusting the test CA, offering these ALPN protocols."""
        roots = trustRootFromCertificates(load_certificates(self.dir / "ca.pem"))
        return CertificateOptions(trustRoot=roots, acceptableProtocols=protocols)

    def test_offered(self) -> None:
        """A client offering h2 and http/1.1 (curl) gets http/1.1."""
        server, client = handshake(self.server_options, self.client([b"h2", b"http/1.1"]))
        self.assertEqual(server.received, b"ping")
        self.assertEqual(client.transport.negotiatedProtocol, b"http/1.1")  # type: ignore[union-attr]

    def test_no_overlap(self) -> None:
        """A client offering only protocols rpcd does not speak still connects, with none chosen."""
        server, client = handshake(self.server_options, self.client([b"spdy/3"]))
        self.assertEqual(server.received, b"ping")
        self.assertIsNone(client.transport.negotiatedProtocol)  # type: ignore[union-attr]

    def test_not_offered(self) -> None:
        """A client without ALPN (native, gob, Go) connects as before."""
        server, client = handshake(self.server_options, self.client(None))
        self.assertEqual((server.received, client.received), (b"ping", b"pong"))

    def test_select(self) -> None:
        """The choice is the first of ALPN_PROTOCOLS offered, else no overlap."""
        self.assertEqual(ALPN_PROTOCOLS[0], b"http/1.1")
        self.assertEqual(select_alpn(None, [b"h2", b"http/1.1"]), b"http/1.1")  # type: ignore[arg-type]
        self.assertIs(select_alpn(None, [b"x"]), SSL.NO_OVERLAPPING_PROTOCOLS)  # type: ignore[arg-type]
