"""
Tests for L{rpcd.tlsinfo}: real OpenSSL handshakes over in-memory transports
(L{TLSMemoryBIOFactory} on L{twisted.test.iosim}), through the failure matrix.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from rpcd import certs
from rpcd.endpoints import WatchedServerOptions, client_tls_options, server_tls_options
from rpcd.tlsinfo import PeerIdentity, describe_tls_failure, peer_identity


class PKIFixture:
    """
    A development PKI in a directory, plus the bad certificates the failure
    matrix needs.

    @ivar directory: where the files are.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        certs.create_dev_pki(directory, clients=["alice"])
        ca = certs.load_issued_certificate(directory / "ca.pem", directory / "ca.key")
        foreign = certs.create_ca()  # Same name as the real CA, another key.
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
        expired: dict[str, Any] = {
            "valid_from": past, "valid_until": past + datetime.timedelta(days=1)
        }
        certs.issue_server_certificate(ca, **expired).write(directory, "expired-server")
        certs.issue_server_certificate(ca, ["wrong.example"]).write(directory, "wrong-server")
        certs.issue_server_certificate(foreign).write(directory, "foreign-server")
        certs.issue_client_certificate(ca, "old", **expired).write(directory, "expired-client")
        certs.issue_client_certificate(foreign, "mallory").write(directory, "foreign-client")

    def path(self, name: str) -> Path:
        """
        @return: the path of file C{name} in the PKI directory.
        """
        return self.directory / name

    def server(self, stem: str = "server", mutual: bool = True) -> WatchedServerOptions:
        """
        @return: server options with C{STEM.pem}, requiring client
            certificates signed by C{ca.pem} if C{mutual}.
        """
        ca = self.path("ca.pem") if mutual else None
        return WatchedServerOptions(
            server_tls_options(self.path(f"{stem}.pem"), self.path(f"{stem}.key"), ca)
        )

    def client(
        self, stem: str | None = "alice", hostname: str = "localhost", ca: str = "ca.pem"
    ) -> object:
        """
        @return: client options trusting C{ca}, with certificate C{STEM.pem}
            unless C{stem} is L{None}.
        """
        if stem is None:
            return client_tls_options(hostname, self.path(ca))
        return client_tls_options(
            hostname, self.path(ca), self.path(f"{stem}.pem"), self.path(f"{stem}.key")
        )


@implementer(IHandshakeListener)
class Peer(Protocol):
    """
    One end of a test connection: records what happened to it.

    @ivar side: C{"client"} or C{"server"}.
    @ivar received: the application bytes received.
    @ivar identity: L{peer_identity} when the handshake completed.
    @ivar reason: the reason given to C{connectionLost}.
    @ivar description: L{describe_tls_failure} of that reason.
    """

    def __init__(self, side: str) -> None:
        self.side = side
        self.received = b""
        self.identity: PeerIdentity | None = None
        self.handshake_done = False
        self.reason: Failure | None = None
        self.description: str | None = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self.identity = peer_identity(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.reason = reason
        self.description = describe_tls_failure(reason, self.side, self.transport)  # type: ignore[arg-type]


class ClosingPeer(Peer):
    """
    A plaintext server that hangs up when anything arrives.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


class ReplyingPeer(Peer):
    """
    A plaintext server that answers anything with an error line.
    """

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        assert self.transport is not None
        self.transport.write(b"ERR unknown command\r\n")


def handshake(
    server_options: Any,
    client_options: Any,
    server: Peer | None = None,
    client_first: bytes = b"ping",
) -> tuple[Peer, Peer]:
    """
    Connect a client and a server in memory, with TLS on the sides that
    have options, send C{client_first} one way and "pong" the other.

    @return: the server and client application protocols.
    """
    clock = Clock()
    server = Peer("server") if server is None else server
    client = Peer("client")
    server_factory: Any = Factory.forProtocol(lambda: server)
    client_factory: Any = Factory.forProtocol(lambda: client)
    if server_options is not None:
        server_factory = TLSMemoryBIOFactory(server_options, False, server_factory, clock=clock)
    if client_options is not None:
        client_factory = TLSMemoryBIOFactory(client_options, True, client_factory, clock=clock)
    _, _, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    assert client.transport is not None and server.transport is not None
    client.transport.write(client_first)
    pump.flush()
    server.transport.write(b"pong")
    pump.flush()
    return server, client


def human(description: str | None) -> str | None:
    """
    @return: C{description} without its " (OpenSSL: ...)" tag, whose words
        vary with the OpenSSL version.
    """
    if description is None:
        return None
    return description.split(" (OpenSSL: ", 1)[0]


class HandshakeMatrixTests(SynchronousTestCase):
    """
    L{peer_identity} and L{describe_tls_failure} on real handshakes.
    """

    def setUp(self) -> None:
        self.pki = PKIFixture(Path(self.mktemp()))

    def assertFailed(self, peer: Peer, error: type[BaseException], words: str) -> None:
        """
        C{peer} received nothing, lost its connection with C{error}, and
        L{describe_tls_failure} said C{words}.
        """
        self.assertEqual(peer.received, b"")
        self.assertIsNotNone(peer.reason, f"the {peer.side} is still connected")
        assert peer.reason is not None
        self.assertIsInstance(peer.reason.value, error)
        self.assertEqual(human(peer.description), words)

    def test_mutual_tls(self) -> None:
        """
        With a good client certificate, data flows both ways and each side
        sees the other's verified identity.
        """
        server, client = handshake(self.pki.server(), self.pki.client())
        self.assertEqual((server.received, client.received), (b"ping", b"pong"))
        self.assertIsNone(server.reason)
        assert server.identity is not None and client.identity is not None
        self.assertEqual(server.identity.common_name, "alice")
        self.assertEqual(server.identity.issuer_common_name, "rpcd development CA")
        self.assertEqual(client.identity.common_name, "localhost")
        self.assertEqual(client.identity.dns_names, ("localhost",))
        self.assertEqual(client.identity.ip_addresses, ("127.0.0.1", "::1"))

    def test_fingerprint(self) -> None:
        """
        The fingerprint is the SHA-256 of the client's DER certificate, in
        OpenSSL's colon-separated format.
        """
        server, _ = handshake(self.pki.server(), self.pki.client())
        assert server.identity is not None
        der = server.identity.certificate.public_bytes(Encoding.DER)
        alice = certs.load_issued_certificate(self.pki.path("alice.pem"), self.pki.path("alice.key"))
        self.assertEqual(alice.certificate.public_bytes(Encoding.DER), der)
        self.assertEqual(
            server.identity.fingerprint_sha256.replace(":", ""),
            hashlib.sha256(der).hexdigest().upper(),
        )
        self.assertEqual(len(server.identity.fingerprint_sha256), 95)

    def test_server_only_tls(self) -> None:
        """
        A server that does not ask for client certificates sees no client
        identity, though the client sees the server's.
        """
        server, client = handshake(self.pki.server(mutual=False), self.pki.client(None))
        self.assertEqual(server.received, b"ping")
        self.assertTrue(server.handshake_done)
        self.assertIsNone(server.identity)
        self.assertIsNotNone(client.identity)

    def test_unknown_ca(self) -> None:
        """
        A server certificate from a CA the client does not trust fails on
        both sides, each saying so.
        """
        server, client = handshake(self.pki.server("foreign-server"), self.pki.client())
        self.assertFailed(
            client,
            SSL.Error,
            "certificate verify failed: the server's certificate is not signed by a CA "
            "you trust (trustRoots=)",
        )
        self.assertFailed(
            server,
            SSL.Error,
            "the client does not trust the CA that signed this server's certificate",
        )

    def test_name_mismatch(self) -> None:
        """
        A server certificate for another name fails with service_identity's
        error, and the words name both the wanted and the offered names.
        """
        server, client = handshake(self.pki.server("wrong-server"), self.pki.client())
        self.assertFailed(
            client,
            VerificationError,
            "the server's certificate is not valid for 'localhost', the name you connected "
            "to; it is for: wrong.example",
        )
        self.assertEqual(server.received, b"")
        self.assertIsNotNone(server.reason)

    def test_ip_mismatch(self) -> None:
        """
        Connecting to an IP address that the certificate lacks fails, naming
        the address.
        """
        _, client = handshake(self.pki.server(), self.pki.client(hostname="10.9.9.9"))
        self.assertFailed(
            client,
            VerificationError,
            "the server's certificate is not valid for '10.9.9.9', the name you connected "
            "to; it is for: localhost, 127.0.0.1, ::1",
        )

    def test_ip_match(self) -> None:
        """
        Connecting to 127.0.0.1 verifies against the IP SAN.
        """
        server, client = handshake(self.pki.server(), self.pki.client(hostname="127.0.0.1"))
        self.assertEqual((server.received, client.received), (b"ping", b"pong"))

    def test_expired_server(self) -> None:
        """
        An expired server certificate is called expired on both sides.
        """
        server, client = handshake(self.pki.server("expired-server"), self.pki.client())
        self.assertFailed(
            client, SSL.Error, "certificate verify failed: the server's certificate has expired"
        )
        self.assertFailed(
            server, SSL.Error, "the client rejected this server's certificate: it has expired"
        )

    def test_no_client_certificate(self) -> None:
        """
        A client without a certificate is told the server requires one.
        """
        server, client = handshake(self.pki.server(), self.pki.client(None))
        self.assertFailed(
            client, SSL.Error, "the server requires a client certificate: give certificate= "
            "and privateKey= in the tls: endpoint"
        )
        self.assertFailed(
            server,
            SSL.Error,
            "the client did not send a certificate, and this server requires one (mtls:)",
        )

    def test_foreign_client_certificate(self) -> None:
        """
        A client certificate from another CA (with the same name) is
        rejected by the server, and the client is told why.
        """
        server, client = handshake(self.pki.server(), self.pki.client("foreign-client"))
        self.assertFailed(
            server,
            SSL.Error,
            "certificate verify failed: the client's certificate is not signed by a CA this "
            "server trusts (caCerts=)",
        )
        self.assertFailed(
            client, SSL.Error, "the server does not trust the CA that signed your certificate"
        )
        self.assertIsNone(server.identity)

    def test_expired_client_certificate(self) -> None:
        """
        An expired client certificate is called expired on both sides.
        """
        server, client = handshake(self.pki.server(), self.pki.client("expired-client"))
        self.assertFailed(
            server, SSL.Error, "certificate verify failed: the client's certificate has expired"
        )
        self.assertFailed(client, SSL.Error, "the server rejected your certificate: it has expired")

    def test_plaintext_to_tls(self) -> None:
        """
        Plaintext sent to a TLS port: the server says the peer does not
        speak TLS.
        """
        server, client = handshake(self.pki.server(), None, client_first=b"\x00\x01hello")
        self.assertFailed(
            server, SSL.Error, "the peer does not speak TLS: it sent plaintext to this TLS port"
        )
        self.assertIsNotNone(client.reason)

    def test_http_to_tls(self) -> None:
        """
        A plain HTTP request sent to a TLS port is recognised as such.
        """
        server, _ = handshake(self.pki.server(), None, client_first=b"GET / HTTP/1.1\r\n\r\n")
        self.assertFailed(
            server,
            SSL.Error,
            "the peer does not speak TLS: it sent a plain HTTP request to this TLS port",
        )

    def test_tls_to_plaintext(self) -> None:
        """
        A TLS client whose server answers in plaintext says the peer does
        not speak TLS; the server got the ClientHello as data.
        """
        server, client = handshake(None, self.pki.client(), server=ReplyingPeer("server"))
        self.assertFailed(
            client,
            SSL.Error,
            "the peer does not speak TLS: the server answered in plaintext; "
            "is this a plaintext port?",
        )
        self.assertEqual(server.received[:2], b"\x16\x03")

    def test_tls_to_closing_plaintext(self) -> None:
        """
        A TLS client whose server hangs up during the handshake says so.
        """
        _, client = handshake(None, self.pki.client(), server=ClosingPeer("server"))
        assert client.reason is not None
        self.assertEqual(
            client.description,
            "the server closed the connection during the TLS handshake: it may not speak "
            "TLS on this port, or it refused you",
        )

    def test_old_tls_version(self) -> None:
        """
        A client that offers nothing newer than TLS 1.1 cannot connect, and
        is told that rpcd needs TLS 1.2.
        """
        old = CertificateOptions(
            insecurelyLowerMinimumTo=TLSVersion.TLSv1_0,
            lowerMaximumSecurityTo=TLSVersion.TLSv1_1,
        )
        server, client = handshake(self.pki.server(mutual=False), old)
        self.assertEqual(server.received, b"")
        assert client.reason is not None
        self.assertEqual(
            human(client.description),
            "the server and you share no TLS version (rpcd requires TLS 1.2 or newer)",
        )


class PeerIdentityTests(SynchronousTestCase):
    """
    L{peer_identity} outside a completed, verified handshake.
    """

    def test_plaintext(self) -> None:
        """
        A plaintext transport has no peer identity.
        """
        self.assertIsNone(peer_identity(StringTransport()))

    def test_before_handshake(self) -> None:
        """
        Before the handshake completes there is no identity yet.
        """
        pki = PKIFixture(Path(self.mktemp()))
        server = Peer("server")
        factory = TLSMemoryBIOFactory(
            pki.server(), False, Factory.forProtocol(lambda: server), clock=Clock()
        )
        factory.buildProtocol(None).makeConnection(StringTransport())
        self.assertIsNone(peer_identity(server.transport))


class DescribeTests(SynchronousTestCase):
    """
    L{describe_tls_failure} without a transport, and on odd inputs.
    """

    def test_verify_failed_without_transport(self) -> None:
        """
        Without the transport, a verify failure lists the likely causes.
        """
        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertEqual(
            describe_tls_failure(error, "client"),
            "certificate verify failed: the server's certificate is not signed by a CA you "
            "trust (trustRoots=), or has expired",
        )

    def test_failure(self) -> None:
        """
        A L{Failure} is described by its exception, with the OpenSSL reason
        kept at the end.
        """
        failure = Failure(SSL.Error([("SSL routines", "", "wrong version number")]))
        self.assertEqual(
            describe_tls_failure(failure, "server"),
            "the peer does not speak TLS: it sent plaintext to this TLS port "
            "(OpenSSL: wrong version number)",
        )

    def test_unknown_openssl_error(self) -> None:
        """
        An OpenSSL error with no known words is still reported with its
        reason.
        """
        error = SSL.Error([("SSL routines", "", "something new")])
        self.assertEqual(
            describe_tls_failure(error), "the TLS handshake failed (OpenSSL: something new)"
        )

    def test_other_exception(self) -> None:
        """
        Any other exception is reported as it is.
        """
        self.assertEqual(
            describe_tls_failure(ValueError("boom")), "the connection failed: boom"
        )

    def test_connection_done(self) -> None:
        """
        A clean close with no TLS transport at hand is just a close.
        """
        self.assertEqual(describe_tls_failure(ConnectionDone()), "the connection was closed")
