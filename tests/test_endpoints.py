"""
Tests for L{rpcd.endpoints} and the C{rpcd-tls:} / C{mtls:} server endpoint
strings of the C{twisted/plugins/rpcd_endpoints.py} drop-in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol, serverFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.plugin import IPlugin, getPlugins
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

import rpcd.endpoints
from rpcd.client import client_from_string, connect
from rpcd.endpoints import (
    WatchedClientOptions,
    WatchedServerOptions,
    client_tls_options,
    load_certificates,
    server_tls_options,
)
from rpcd.errors import ConnectionLost
from rpcd.tlsinfo import describe_tls_failure, peer_identity
from tests.test_tlsinfo import PKIFixture, handshake, human
from tests.tools import require_tool

CHECKOUT = Path(__file__).resolve().parent.parent


def _escape(path: Path) -> str:
    """
    @return: C{path} escaped for an endpoint string.
    """
    return str(path).replace("\\", "\\\\").replace(":", "\\:")


def _options(endpoint: object) -> WatchedServerOptions:
    """
    @return: the TLS creator of an endpoint made by our parsers.
    """
    creator = endpoint.connectionCreator  # type: ignore[attr-defined]
    assert isinstance(creator, WatchedServerOptions)
    return creator


class PluginTests(SynchronousTestCase):
    """
    The drop-in is found by Twisted's plugin system and stays cheap.
    """

    def test_found(self) -> None:
        """
        Twisted's plugin scan finds both parsers, and they provide the
        interfaces.
        """
        parsers = {
            p.prefix: p
            for p in getPlugins(IStreamServerEndpointStringParser)
            if type(p).__module__ == "twisted.plugins.rpcd_endpoints"
        }
        self.assertEqual(set(parsers), {"rpcd-tls", "mtls"})
        for parser in parsers.values():
            verifyObject(IPlugin, parser)
            verifyObject(IStreamServerEndpointStringParser, parser)

    def test_no_tls_prefix(self) -> None:
        """
        rpcd does not claim C{tls:}, which Twisted's own server parser uses.
        """
        ours = [
            p.prefix
            for p in getPlugins(IStreamServerEndpointStringParser)
            if type(p).__module__ == "twisted.plugins.rpcd_endpoints"
        ]
        self.assertNotIn("tls", ours)

    def test_cheap_import(self) -> None:
        """
        Importing the drop-in imports neither rpcd nor OpenSSL nor a reactor.
        """
        code = (
            "import sys, twisted.plugins.rpcd_endpoints\n"
            "print(sorted(m for m in ('rpcd', 'rpcd.endpoints', 'OpenSSL', "
            "'cryptography', 'twisted.internet.reactor') if m in sys.modules))\n"
        )
        env = dict(os.environ, PYTHONPATH=str(CHECKOUT))
        output = subprocess.run(
            [sys.executable, "-c", code], cwd=CHECKOUT, env=env,
            capture_output=True, text=True, check=True,
        ).stdout
        self.assertEqual(output.strip(), "[]")

    def test_no_init(self) -> None:
        """
        There is no C{__init__.py} under C{twisted/}, which would shadow Twisted.
        """
        self.assertTrue((CHECKOUT / "twisted" / "plugins" / "rpcd_endpoints.py").exists())
        self.assertFalse((CHECKOUT / "twisted" / "__init__.py").exists())
        self.assertFalse((CHECKOUT / "twisted" / "plugins" / "__init__.py").exists())


class ParserTests(SynchronousTestCase):
    """
    C{serverFromString} with C{rpcd-tls:} and C{mtls:} on a L{MemoryReactor}.
    """

    def setUp(self) -> None:
        self.pki = PKIFixture(Path(self.mktemp()))
        self.reactor = MemoryReactor()
        self.files = (
            f"certKey={_escape(self.pki.path('server.pem'))}"
            f":privateKey={_escape(self.pki.path('server.key'))}"
        )
        self.ca = f"caCerts={_escape(self.pki.path('ca.pem'))}"

    def listen(self, description: str) -> tuple[Any, Any]:
        """
        Parse C{description} and listen on it.

        @return: the endpoint and the factory given to the reactor.
        """
        endpoint = serverFromString(self.reactor, description)
        self.successResultOf(endpoint.listen(Factory.forProtocol(Protocol)))
        servers = self.reactor.tcpServers or self.reactor.unixServers
        factory = servers[-1][1]
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        return endpoint, factory

    def test_mtls(self) -> None:
        """
        C{mtls:PORT} listens on that port and interface, and its TLS
        context requires a verified client certificate.
        """
        endpoint, _ = self.listen(f"mtls:8443:{self.files}:{self.ca}:interface=127.0.0.1")
        port, _, backlog, interface = self.reactor.tcpServers[0]
        self.assertEqual((port, backlog, interface), (8443, 50, "127.0.0.1"))
        context = _options(endpoint).options.getContext()
        self.assertEqual(
            context.get_verify_mode(),
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE,
        )
        verifyObject(IOpenSSLServerConnectionCreator, _options(endpoint))

    def test_rpcd_tls(self) -> None:
        """
        C{rpcd-tls:PORT} does not ask for client certificates.
        """
        endpoint, _ = self.listen(f"rpcd-tls:8443:{self.files}")
        self.assertEqual(self.reactor.tcpServers[0][0], 8443)
        self.assertEqual(self.reactor.tcpServers[0][3], "")
        context = _options(endpoint).options.getContext()
        self.assertEqual(context.get_verify_mode(), SSL.VERIFY_NONE)

    def test_tls_floor(self) -> None:
        """
        Both endpoint types refuse TLS 1.0 and 1.1.
        """
        for description in (f"rpcd-tls:1:{self.files}", f"mtls:1:{self.files}:{self.ca}"):
            context = _options(serverFromString(self.reactor, description)).options.getContext()
            options = context.set_options(0)  # Returns the options in force.
            self.assertTrue(options & SSL.OP_NO_TLSv1, description)
            self.assertTrue(options & SSL.OP_NO_TLSv1_1, description)
            self.assertFalse(options & SSL.OP_NO_TLSv1_2, description)

    def test_mtls_handshake(self) -> None:
        """
        The parsed C{mtls:} endpoint's TLS policy accepts a client with a
        certificate from C{caCerts} and refuses one without.
        """
        endpoint = serverFromString(self.reactor, f"mtls:1:{self.files}:{self.ca}")
        server, _ = handshake(_options(endpoint), self.pki.client())
        self.assertEqual(server.received, b"ping")
        assert server.identity is not None
        self.assertEqual(server.identity.common_name, "alice")
        endpoint = serverFromString(self.reactor, f"mtls:1:{self.files}:{self.ca}")
        server, client = handshake(_options(endpoint), self.pki.client(None))
        self.assertEqual(server.received, b"")
        self.assertEqual(
            human(client.description),
            "the server requires a client certificate: give certificate= and privateKey= in the tls: endpoint",
        )

    def test_ipv6_interface(self) -> None:
        """
        An IPv6 interface (colons escaped) listens on IPv6.
        """
        self.listen(f"mtls:8443:{self.files}:{self.ca}:interface=\\:\\:1")
        self.assertEqual(self.reactor.tcpServers[0][3], "::1")

    def test_unix(self) -> None:
        """
        C{mtls:unix:PATH} listens on a Unix socket with the given mode.
        """
        path = self.mktemp()
        self.listen(f"mtls:unix:{_escape(Path(path))}:{self.files}:{self.ca}:mode=600")
        address, _, backlog, mode, want_pid = self.reactor.unixServers[0]
        self.assertEqual((address, backlog, mode, want_pid), (path, 50, 0o600, True))

    def test_key_in_cert_file(self) -> None:
        """
        Without C{privateKey}, the key is read from the C{certKey} file.
        """
        combined = Path(self.mktemp())
        combined.write_bytes(
            self.pki.path("server.pem").read_bytes() + self.pki.path("server.key").read_bytes()
        )
        endpoint = serverFromString(self.reactor, f"rpcd-tls:1:certKey={_escape(combined)}")
        self.assertIsNotNone(_options(endpoint).options.certificate)

    def test_several_cas(self) -> None:
        """
        C{caCerts} may hold several CA certificates, all trusted.
        """
        bundle = Path(self.mktemp())
        foreign = self.pki.path("foreign-server.pem").read_bytes()
        bundle.write_bytes(foreign + self.pki.path("ca.pem").read_bytes())
        self.assertEqual(len(load_certificates(bundle)), 2)
        endpoint = serverFromString(
            self.reactor, f"mtls:1:{self.files}:caCerts={_escape(bundle)}"
        )
        server, _ = handshake(_options(endpoint), self.pki.client())
        self.assertEqual(server.received, b"ping")

    def assertParseError(self, description: str, words: str) -> None:
        """
        Parsing C{description} raises L{ValueError} containing C{words}.
        """
        error = self.assertRaises(ValueError, serverFromString, self.reactor, description)
        self.assertIn(words, str(error))

    def test_errors(self) -> None:
        """
        Bad descriptions are refused with a message naming the problem.
        """
        self.assertParseError(f"mtls:8443:{self.files}", "caCerts=FILE is required")
        self.assertParseError(f"rpcd-tls:8443:{self.files}:{self.ca}", "caCerts= is only for mtls:")
        self.assertParseError("rpcd-tls:8443", "certKey=FILE is required")
        self.assertParseError(f"rpcd-tls:https:{self.files}", "the port must be a number")
        self.assertParseError(f"rpcd-tls:8443:{self.files}:certkey=x", "unknown endpoint option(s): certkey")
        self.assertParseError(f"rpcd-tls:8443:{self.files}:mode=600", "unknown endpoint option(s): mode")
        self.assertParseError(
            f"rpcd-tls:unix:/tmp/s:{self.files}:interface=127.0.0.1", "interface= is for TCP"
        )

    def test_key_mismatch(self) -> None:
        """
        A key that does not belong to the certificate is refused at parse time.
        """
        description = (
            f"rpcd-tls:1:certKey={_escape(self.pki.path('server.pem'))}"
            f":privateKey={_escape(self.pki.path('alice.key'))}"
        )
        self.assertParseError(description, "does not match the certificate")

    def test_missing_file(self) -> None:
        """
        A missing certificate file raises L{OSError}.
        """
        self.assertRaises(
            OSError, serverFromString, self.reactor, "rpcd-tls:1:certKey=/nonexistent.pem"
        )

    def test_twisted_tls_client_unaffected(self) -> None:
        """
        Twisted's own C{tls:} client string still parses.
        """
        endpoint = clientFromString(
            self.reactor,
            f"tls:host=localhost:port=8443:trustRoots={_escape(self.pki.directory)}",
        )
        self.assertIsNotNone(endpoint)


class ClientParserTests(SynchronousTestCase):
    """
    C{tls:} client strings as rpcd's clients read them
    (L{rpcd.client.client_from_string}, the drop-in's C{rpcd-tls:} client
    parser).
    """

    def setUp(self) -> None:
        self.pki = PKIFixture(Path(self.mktemp()))
        self.reactor = MemoryReactorClock()
        self.roots = _escape(self.pki.directory)
        self.wrapped: list[tuple[Any, Any]] = []
        self.patch(rpcd.endpoints, "wrapClientTLS", self._wrap)

    def _wrap(self, options: Any, transport: Any) -> Any:
        """
        Note what the parser wraps in TLS, and return the transport.
        """
        self.wrapped.append((options, transport))
        return transport

    def options(self, description: str) -> WatchedClientOptions:
        """
        @return: the client TLS options the parser made for C{description}.
        """
        client_from_string(self.reactor, description)
        options = self.wrapped[-1][0]
        assert isinstance(options, WatchedClientOptions)
        return options

    def test_found(self) -> None:
        """
        Twisted's plugin scan finds the client parser.
        """
        parsers = [
            p for p in getPlugins(IStreamClientEndpointStringParserWithReactor)
            if type(p).__module__ == "twisted.plugins.rpcd_endpoints"
        ]
        self.assertEqual([p.prefix for p in parsers], ["rpcd-tls"])
        verifyObject(IStreamClientEndpointStringParserWithReactor, parsers[0])

    def test_watched_options(self) -> None:
        """
        A C{tls:} string gets L{WatchedClientOptions} for its host, with a
        TLS 1.2 floor, and connects to that host and port.
        """
        options = self.options(f"tls:host=localhost:port=8443:trustRoots={self.roots}:timeout=7")
        self.assertEqual((options.hostname, options.is_ip), ("localhost", False))
        self.assertTrue(options.options.getContext().set_options(0) & SSL.OP_NO_TLSv1_1)
        self.wrapped[-1][1].connect(Factory.forProtocol(Protocol))
        host, port, _, timeout, _ = self.reactor.tcpClients[0]
        self.assertEqual((port, timeout), (8443, 7))

    def test_positional_host_and_ip(self) -> None:
        """
        Host and port may be positional, as in Twisted's C{tls:}; an IP
        address is checked as one.
        """
        options = self.options(f"tls:127.0.0.1:8443:trustRoots={self.roots}")
        self.assertEqual((options.hostname, options.is_ip), ("127.0.0.1", True))

    def test_client_certificate(self) -> None:
        """
        C{certificate=} and C{privateKey=} give the client certificate.
        """
        d = self.pki.directory
        options = self.options(
            f"tls:host=localhost:port=1:trustRoots={self.roots}"
            f":certificate={_escape(d / 'alice.pem')}:privateKey={_escape(d / 'alice.key')}")
        self.assertIsNotNone(options.options.certificate)

    def test_trust_roots_file(self) -> None:
        """
        C{trustRoots=} may also name one PEM file.
        """
        options = self.options(f"tls:host=localhost:port=1:trustRoots={_escape(self.pki.path('ca.pem'))}")
        self.assertEqual(options.hostname, "localhost")

    def test_trust_roots_without_certificates(self) -> None:
        """
        A C{trustRoots=} directory with no certificate is refused, naming
        it, instead of silently trusting nothing.
        """
        empty = Path(self.mktemp())
        empty.mkdir()
        (empty / "key.pem").write_bytes(self.pki.path("ca.key").read_bytes())
        error = self.assertRaises(ValueError, client_from_string, self.reactor,
                                  f"tls:host=localhost:port=1:trustRoots={_escape(empty)}")
        self.assertIn(f"{empty}: no *.pem file in this directory holds a certificate", str(error))

    def test_refusals(self) -> None:
        """
        A missing host or port and an unknown option are refused by name.
        """
        for description, words in [
            (f"tls:port=1:trustRoots={self.roots}", "host= is required"),
            (f"tls:host=localhost:trustRoots={self.roots}", "port= is required"),
            (f"tls:host=localhost:port=1:trustroots={self.roots}", "unknown endpoint option(s): trustroots"),
        ]:
            error = self.assertRaises(ValueError, client_from_string, self.reactor, description)
            self.assertIn(words, str(error), description)

    def test_wrapped_endpoint(self) -> None:
        """
        C{endpoint=} runs TLS over another client endpoint, the host being
        only the name to verify.
        """
        options = self.options(
            f"tls:host=example.com:trustRoots={self.roots}:endpoint=tcp\\:127.0.0.1\\:9999")
        self.assertEqual(options.hostname, "example.com")
        self.wrapped[-1][1].connect(Factory.forProtocol(Protocol))
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 9999))

    def test_other_strings_unchanged(self) -> None:
        """
        Anything but C{tls:} goes to Twisted's parsers as it is.
        """
        client_from_string(self.reactor, "tcp:127.0.0.1:1234").connect(Factory.forProtocol(Protocol))
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 1234))


class ClientOptionsTests(SynchronousTestCase):
    """
    Tests for L{client_tls_options}.
    """

    def test_interface(self) -> None:
        """
        It provides L{IOpenSSLClientConnectionCreator} with a TLS 1.2 floor.
        """
        pki = PKIFixture(Path(self.mktemp()))
        options = client_tls_options("localhost", pki.path("ca.pem"))
        verifyObject(IOpenSSLClientConnectionCreator, options)
        context_options = options.options.getContext().set_options(0)
        self.assertTrue(context_options & SSL.OP_NO_TLSv1_1)

    def test_key_without_certificate(self) -> None:
        """
        A private key without a certificate is refused.
        """
        error = self.assertRaises(
            ValueError, client_tls_options, "localhost", None, None, "client.key"
        )
        self.assertEqual(str(error), "a private key was given without its certificate")

    def test_server_options_floor(self) -> None:
        """
        L{server_tls_options} asks Twisted for a TLS 1.2 minimum.
        """
        pki = PKIFixture(Path(self.mktemp()))
        options = server_tls_options(pki.path("server.pem"), pki.path("server.key"))
        self.assertTrue(options.getContext().set_options(0) & SSL.OP_NO_TLSv1_1)


class _Asker(Protocol):
    """
    Sends a question, collects the answer until the server hangs up.
    """

    def __init__(self) -> None:
        self.answer = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"who am I?")

    def dataReceived(self, data: bytes) -> None:
        self.answer += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.done.callback(self.answer)


class _Teller(Protocol):
    """
    Answers with the client certificate's CN, then hangs up.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        identity = peer_identity(self.transport)
        name = identity.common_name if identity and identity.common_name else "?"
        self.transport.write(f"you are {name}".encode())
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        factory: _TellerFactory = self.factory  # type: ignore[assignment]
        factory.lost.append(describe_tls_failure(reason, "server", self.transport))
        if not factory.first_lost.called:
            factory.first_lost.callback(None)


class _TellerFactory(Factory):
    """
    Makes L{_Teller}s; records how their connections ended.

    @ivar lost: L{describe_tls_failure} of each connection's end.
    @ivar first_lost: fires when the first connection has ended.
    """

    protocol = _Teller

    def __init__(self) -> None:
        self.lost: list[str] = []
        self.first_lost: Deferred[None] = Deferred()


class LoopbackTests(TestCase):
    """
    The C{mtls:} endpoint on a real loopback socket, with real clients.
    """

    async def listen(self) -> int:
        """
        Listen with C{mtls:} on 127.0.0.1, port 0.

        @return: the port number.
        """
        self.pki = PKIFixture(Path(self.mktemp()))
        self.factory = _TellerFactory()
        d = self.pki.directory
        endpoint = serverFromString(
            global_reactor,
            f"mtls:0:interface=127.0.0.1:certKey={_escape(d / 'server.pem')}"
            f":privateKey={_escape(d / 'server.key')}:caCerts={_escape(d / 'ca.pem')}",
        )
        port = await endpoint.listen(self.factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def test_client_library_expired_server(self) -> None:
        """
        The client library, given a C{tls:} string, says that the server's
        certificate has expired, not just that it failed verification.
        """
        pki = PKIFixture(Path(self.mktemp()))
        d = pki.directory
        endpoint = serverFromString(
            global_reactor,
            f"rpcd-tls:0:interface=127.0.0.1:certKey={_escape(d / 'expired-server.pem')}"
            f":privateKey={_escape(d / 'expired-server.key')}",
        )
        port = await endpoint.listen(_TellerFactory())
        self.addCleanup(port.stopListening)
        with self.assertRaises(ConnectionLost) as caught:
            await connect(f"tls:host=localhost:port={port.getHost().port}:trustRoots={_escape(d)}")
        self.assertIn("certificate verify failed: the server's certificate has expired",
                      str(caught.exception))

    def test_twisted_tls_client(self) -> Deferred[None]:
        """
        Twisted's C{tls:} client string with a client certificate connects,
        and the server sees the client's CN.
        """

        async def run() -> None:
            port = await self.listen()
            d = self.pki.directory
            client = clientFromString(
                global_reactor,
                f"tls:host=localhost:port={port}:trustRoots={_escape(d)}"
                f":certificate={_escape(d / 'alice.pem')}:privateKey={_escape(d / 'alice.key')}",
            )
            asker = await connectProtocol(client, _Asker())
            self.assertEqual(await asker.done, b"you are alice")
            await self.factory.first_lost

        return Deferred.fromCoroutine(run())

    def test_openssl_without_certificate(self) -> Deferred[None]:
        """
        C{openssl s_client} without a client certificate verifies the server
        but is refused by it, and the server says why.
        """
        openssl = require_tool("openssl", "to check the mtls: endpoint against another TLS stack")

        async def run() -> None:
            port = await self.listen()
            result = await deferToThread(
                subprocess.run,
                [
                    openssl, "s_client", "-connect", f"127.0.0.1:{port}",
                    "-CAfile", str(self.pki.path("ca.pem")), "-verify_return_error",
                    "-servername", "localhost", "-ign_eof",
                ],
                input=b"hello\n",
                capture_output=True,
                timeout=30,
            )
            await self.factory.first_lost
            output = (result.stdout + result.stderr).decode("utf-8", "replace")
            self.assertNotEqual(result.returncode, 0, output)
            self.assertIn("Verify return code: 0 (ok)", output)
            self.assertTrue(
                "alert certificate required" in output or "alert handshake failure" in output,
                output,
            )
            self.assertEqual(
                self.factory.lost,
                ["the client did not send a certificate, and this server requires one (mtls:)"],
            )

        return Deferred.fromCoroutine(run())

    def test_openssl_with_certificate(self) -> Deferred[None]:
        """
        C{openssl s_client} with alice's certificate is told it is alice.
        """
        openssl = require_tool("openssl", "to check the mtls: endpoint against another TLS stack")

        async def run() -> None:
            port = await self.listen()
            d = self.pki.directory
            result = await deferToThread(
                subprocess.run,
                [
                    openssl, "s_client", "-connect", f"127.0.0.1:{port}",
                    "-CAfile", str(d / "ca.pem"), "-verify_return_error", "-ign_eof",
                    "-cert", str(d / "alice.pem"), "-key", str(d / "alice.key"),
                ],
                input=b"hello\n",
                capture_output=True,
                timeout=30,
            )
            await self.factory.first_lost
            self.assertIn(b"you are alice", result.stdout, result.stderr.decode())

        return Deferred.fromCoroutine(run())
