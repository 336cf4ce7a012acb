"""
TLS server endpoint strings (C{rpcd-tls:}, C{mtls:}) and TLS client options.

Twisted's C{ssl:} server string cannot require client certificates, and
Twisted 26's own C{tls:} server string takes a directory of PEM files for SNI,
so rpcd adds two server endpoint types, registered by the drop-in
C{twisted/plugins/rpcd_endpoints.py}.

Server strings (for C{serverFromString} and rpcd's config)::

    rpcd-tls:PORT:certKey=server.pem:privateKey=server.key[:interface=127.0.0.1]
        [:extraCertChain=chain.pem][:backlog=50]
    mtls:PORT:certKey=server.pem:privateKey=server.key:caCerts=ca.pem
        [:interface=127.0.0.1][:extraCertChain=chain.pem][:backlog=50]
    rpcd-tls:unix:PATH:certKey=...:privateKey=...[:mode=660][:lockfile=1][:backlog=50]
    mtls:unix:PATH:certKey=...:privateKey=...:caCerts=ca.pem[:mode=660][:lockfile=1]

C{rpcd-tls:} authenticates the server only.  C{mtls:} also requires a client
certificate signed by one of the CAs in C{caCerts} (one PEM file that may
hold several certificates); the handshake fails without one.  Both refuse
anything older than TLS 1.2 and use Twisted's default ciphers.  C{certKey}
may hold the key too, in which case C{privateKey} may be left out.  An IPv6
C{interface} (escape its colons: C{interface=\\:\\:1}) listens on IPv6.
Both offer the application protocols in L{ALPN_PROTOCOLS} (C{http/1.1}, C{h2} for gRPC) to
clients that ask for one over ALPN, as curl and browsers do; clients that
do not ask (rpcd's native and gob clients, Go) are served as before.

Why C{rpcd-tls:} and not C{tls:}: Twisted 26 registers a C{tls:} server
parser of its own (C{tls:DIRECTORY:port=443}); two plugins with one prefix
are picked in an unspecified order.  The client namespace is separate, and
Twisted's C{tls:} client string is what users type to connect::

    tls:host=localhost:port=8443:trustRoots=DIR
    tls:host=localhost:port=8443:trustRoots=DIR:certificate=client.pem:privateKey=client.key

C{trustRoots} is a directory whose every C{*.pem} file is trusted (the
directory that L{rpcd.tls.certs.create_dev_pki} writes works, because all of its
certificates chain to C{ca.pem}; in production use a directory holding only
CA certificates), or one PEM file of CA certificates.  C{host} is checked
against the server certificate's names with service_identity.  For
programmatic clients use L{client_tls_options} with C{wrapClientTLS}.

rpcd's clients (the library's C{connect}, the C{rpcd} command, the daemon's
C{connect = [...]}) read a C{tls:} client string with
L{rpcd.client.client_from_string}: the same syntax and options as Twisted's
(C{host}, C{port}, C{timeout}, C{bindAddress}, C{certificate},
C{privateKey}, C{trustRoots}, C{endpoint}), parsed by the C{rpcd-tls:}
client parser of the drop-in (L{parse_tls_client}), which also refuses
anything older than TLS 1.2, refuses a C{trustRoots} that holds no
certificate (Twisted's would silently trust nothing), and builds its
connections with L{WatchedClientOptions}.

The creators here (L{WatchedServerOptions}, L{WatchedClientOptions}) call
L{rpcd.tls.tlsinfo.watch_verification}, so that
L{rpcd.tls.tlsinfo.describe_tls_failure} can tell an expired certificate from an
unknown CA; with Twisted's own C{tls:} client parser the words are less
precise.

If another installed plugin also claimed C{mtls:}, Twisted would pick one of
the two arbitrarily; none known does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    clientFromString,
    wrapClientTLS,
    wrapServerTLS,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet.abstract import isIPAddress, isIPv6Address
from zope.interface import implementer

from rpcd.tls.tlsinfo import watch_verification

if TYPE_CHECKING:
    from OpenSSL.SSL import _NoOverlappingProtocols

#: The oldest TLS version rpcd accepts, on both sides.
MINIMUM_TLS_VERSION = TLSVersion.TLSv1_2

#: The application protocols rpcd's TLS listeners offer over ALPN, most
#: preferred first.  The one a client also offers is chosen; a client that
#: offers none of them (or no ALPN at all: rpcd's native and gob clients, Go's
#: net/rpc) still connects, with no protocol negotiated, and the first bytes
#: decide the wire protocol as on any listener.  C{http/1.1} comes first so
#: that a client offering both (curl) keeps HTTP/1.1 for JSON-RPC; gRPC
#: clients offer only C{h2}.
ALPN_PROTOCOLS: tuple[bytes, ...] = (b"http/1.1", b"h2")


def select_alpn(connection: SSL.Connection, offered: list[bytes]) -> bytes | _NoOverlappingProtocols:
    """
    The server's ALPN choice (an OpenSSL ALPN select callback).

    Twisted's own callback answers an empty protocol when nothing overlaps,
    which OpenSSL turns into a fatal C{internal_error} alert, so that any
    client offering ALPN (curl, browsers) would be refused; this one lets
    the handshake go on without a protocol instead.

    @param connection: the TLS connection being negotiated.
    @param offered: the protocols the client offered, in its order.
    @return: the first of L{ALPN_PROTOCOLS} the client offered, or
        C{OpenSSL.SSL.NO_OVERLAPPING_PROTOCOLS}.
    """
    for protocol in ALPN_PROTOCOLS:
        if protocol in offered:
            return protocol
    return SSL.NO_OVERLAPPING_PROTOCOLS


def load_certificates(path: Path | str) -> list[Certificate]:
    """
    Read every certificate in a PEM file.

    @param path: a PEM file with one or more certificates.
    @return: the certificates, in file order.
    @raise OSError: the file could not be read.
    @raise ValueError: the file holds no PEM certificate.
    """
    try:
        parsed = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except ValueError as e:
        raise ValueError(f"{path}: no PEM certificate could be read ({e})") from None
    return [Certificate(X509.from_cryptography(c)) for c in parsed]


def load_trust_roots(path: Path | str) -> list[Certificate]:
    """
    Read the CA certificates to trust: every certificate in a PEM file, or
    in every C{*.pem} file of a directory (as Twisted's C{trustRoots=}
    does; files there that hold no certificate, such as keys, are skipped).

    @param path: a PEM file or a directory.
    @return: the certificates.
    @raise OSError: the path could not be read.
    @raise ValueError: no certificate was found there.
    """
    path = Path(path)
    if not path.is_dir():
        return load_certificates(path)
    found: list[Certificate] = []
    for child in sorted(path.glob("*.pem")):
        try:
            found.extend(load_certificates(child))
        except ValueError:
            continue
    if not found:
        raise ValueError(f"{path}: no *.pem file in this directory holds a certificate to trust")
    return found


def load_private_certificate(
    certificate: Path | str, private_key: Path | str | None = None
) -> PrivateCertificate:
    """
    Read a certificate and its private key.

    @param certificate: a PEM certificate file (the first certificate is used).
    @param private_key: a PEM key file; L{None} if C{certificate} holds the key.
    @return: the certificate with its key.
    @raise OSError: a file could not be read.
    @raise ValueError: no certificate, or the key does not match it.
    """
    cert = load_certificates(certificate)[0]
    key_path = certificate if private_key is None else private_key
    key = KeyPair.load(Path(key_path).read_bytes(), 1)  # 1 is FILETYPE_PEM.
    if not cert.getPublicKey().matches(key):
        raise ValueError(f"the key in {key_path} does not match the certificate {certificate}")
    return PrivateCertificate.fromCertificateAndKeyPair(cert, key)


def server_tls_options(
    certificate: Path | str,
    private_key: Path | str | None = None,
    ca_certs: Path | str | None = None,
    extra_cert_chain: Path | str | None = None,
) -> CertificateOptions:
    """
    Make the server side's TLS policy.

    @param certificate: the server certificate (PEM).
    @param private_key: its key (PEM); L{None} if C{certificate} holds it.
    @param ca_certs: a PEM file of CA certificates; if given, clients must
        present a certificate signed by one of them (mutual TLS).
    @param extra_cert_chain: a PEM file of intermediate certificates sent
        after the server certificate.
    @return: options with a TLS 1.2 floor and Twisted's default ciphers.
    @raise OSError: a file could not be read.
    @raise ValueError: a file holds no certificate, or a key mismatch.
    """
    server = load_private_certificate(certificate, private_key)
    options: dict[str, Any] = {}
    if ca_certs is not None:
        options["trustRoot"] = trustRootFromCertificates(load_certificates(ca_certs))
    if extra_cert_chain is not None:
        options["extraCertChain"] = [c.original for c in load_certificates(extra_cert_chain)]
    return CertificateOptions(
        privateKey=server.privateKey.original,
        certificate=server.original,
        raiseMinimumTo=MINIMUM_TLS_VERSION,
        acceptableProtocols=list(ALPN_PROTOCOLS),
        **options,
    )


@implementer(IOpenSSLServerConnectionCreator)
class WatchedServerOptions:
    """
    Server TLS options whose connections note why a client certificate was
    rejected, for L{rpcd.tls.tlsinfo.describe_tls_failure}, and choose the
    application protocol with L{select_alpn}.

    @ivar options: the TLS policy itself.
    """

    def __init__(self, options: CertificateOptions,
                 load: Callable[[], CertificateOptions] | None = None) -> None:
        """
        @param options: the TLS policy, not used for any connection yet
            (OpenSSL fixes a context once a connection is made from it).
        @param load: reads the policy's files again (L{reload}); None if it
            cannot be reloaded.
        """
        self.options = options
        self.load = load
        # Every connection shares this context: set its ALPN choice first.
        options.getContext().set_alpn_select_callback(select_alpn)

    def prepare(self) -> CertificateOptions | None:
        """
        Read the certificate files again, without using them yet.

        @return: the new policy, or None if this one cannot be reloaded.
        @raise OSError: a file could not be read.
        @raise ValueError: a file holds no certificate, or a key mismatch.
        """
        if self.load is None:
            return None
        options = self.load()
        options.getContext().set_alpn_select_callback(select_alpn)
        return options

    def swap(self, options: CertificateOptions) -> None:
        """
        Make new handshakes use another policy; connections made already
        keep theirs.

        @param options: from L{prepare}.
        """
        self.options = options

    @property
    def serial(self) -> int:
        """
        The serial number of the certificate new handshakes present.
        """
        certificate = self.options.certificate
        return certificate.get_serial_number() if certificate is not None else 0

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        @return: a server connection made by C{options}, watched with
            L{rpcd.tls.tlsinfo.watch_verification}.
        """
        return watch_verification(tlsProtocol, self.options.serverConnectionForTLS(tlsProtocol))


@implementer(IOpenSSLClientConnectionCreator)
class WatchedClientOptions:
    """
    Client TLS options that check the server's name with service_identity,
    like Twisted's C{optionsForClientTLS}, and note why a server certificate
    was rejected, for L{rpcd.tls.tlsinfo.describe_tls_failure}.  Make them with
    L{client_tls_options}.

    @ivar hostname: the name or IP address the server certificate must carry.
    @ivar options: the TLS policy (trust roots, client certificate, versions).
    @ivar is_ip: whether C{hostname} is an IP address (checked as one, no SNI).
    """

    def __init__(self, hostname: str, options: CertificateOptions) -> None:
        self.hostname = hostname
        self.options = options
        self.is_ip = isIPAddress(hostname) or isIPv6Address(hostname)

    def _check_server(self, certificate: x509.Certificate) -> None:
        """
        @raise service_identity.VerificationError: C{certificate} is not for
            C{hostname}.
        """
        if self.is_ip:
            verify_certificate_ip_address(certificate, self.hostname)
        else:
            verify_certificate_hostname(certificate, self.hostname)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        @return: a client connection made by C{options}, sending the host
            name (SNI) unless it is an IP address, and watched with
            L{rpcd.tls.tlsinfo.watch_verification}, which checks the name.
        """
        connection = self.options.clientConnectionForTLS(tlsProtocol)
        if not self.is_ip:
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        return watch_verification(tlsProtocol, connection, self._check_server)


def client_tls_options(
    hostname: str,
    ca: Path | str | None = None,
    certificate: Path | str | None = None,
    private_key: Path | str | None = None,
) -> WatchedClientOptions:
    """
    Make the client side's TLS policy, for C{wrapClientTLS} or C{connectSSL}.

    @param hostname: the name (or IP address) the server certificate must
        carry; checked with service_identity.
    @param ca: the CA certificates to trust: a PEM file, or a directory of
        them (see L{load_trust_roots}); L{None} trusts the platform's CAs.
    @param certificate: a client certificate (PEM) to present, or L{None}.
    @param private_key: its key; L{None} if C{certificate} holds it.
    @return: an L{IOpenSSLClientConnectionCreator} with a TLS 1.2 floor.
    @raise OSError: a file could not be read.
    @raise ValueError: a file holds no certificate, a key mismatch, or a
        private key without a certificate.
    """
    if certificate is None and private_key is not None:
        raise ValueError("a private key was given without its certificate")
    trust = platformTrust() if ca is None else trustRootFromCertificates(load_trust_roots(ca))
    options: dict[str, Any] = {}
    if certificate is not None:
        client = load_private_certificate(certificate, private_key)
        options = {"privateKey": client.privateKey.original, "certificate": client.original}
    return WatchedClientOptions(
        hostname,
        CertificateOptions(trustRoot=trust, raiseMinimumTo=MINIMUM_TLS_VERSION, **options),
    )


def parse_tls_client(
    reactor: Any,
    host: str | None = None,
    port: str | None = None,
    timeout: str = "30",
    bindAddress: str | None = None,
    certificate: str | None = None,
    privateKey: str | None = None,
    trustRoots: str | None = None,
    endpoint: str | None = None,
    **extra: str,
) -> IStreamClientEndpoint:
    """
    Build the endpoint for a C{rpcd-tls:} client description (the options
    of Twisted's C{tls:} client string).

    @param reactor: the reactor given to C{clientFromString}.
    @param host: the server's name or address, checked against its
        certificate (and sent as SNI unless an address).
    @param port: the server's port; unused when C{endpoint} is given.
    @param timeout: seconds for each connection attempt.
    @param bindAddress: the local address to connect from.
    @param certificate: a client certificate (PEM) to present.
    @param privateKey: its key; defaults to C{certificate}.
    @param trustRoots: the CAs to trust (see L{load_trust_roots}); the
        platform's when left out.
    @param endpoint: a client endpoint string to run TLS over instead of
        connecting to C{host} and C{port}.
    @param extra: anything else is an error.
    @return: the TLS client endpoint, with L{WatchedClientOptions}.
    @raise ValueError: a missing or unknown option, or a bad number.
    @raise OSError: a file could not be read.
    """
    _refuse_extra(extra)
    if not host:
        raise ValueError("host= is required (the name the server's certificate must carry)")
    options = client_tls_options(host, trustRoots, certificate, privateKey)
    transport: IStreamClientEndpoint
    if endpoint is not None:
        transport = clientFromString(reactor, endpoint)
    else:
        if port is None:
            raise ValueError("port= is required")
        address = host.encode("ascii") if options.is_ip else host.encode("idna")
        transport = HostnameEndpoint(reactor, address, int(port), int(timeout),
                                     None if bindAddress is None else (bindAddress, 0))
    return wrapClientTLS(options, transport)


def _transport_endpoint(
    reactor: Any, args: Sequence[str], interface: str, backlog: int, extra: dict[str, str]
) -> IStreamServerEndpoint:
    """
    Build the endpoint under the TLS layer: TCP C{PORT} or C{unix:PATH}.
    """
    if len(args) == 2 and args[0] == "unix":
        if interface:
            raise ValueError("interface= is for TCP, not unix:")
        mode = int(extra.pop("mode", "666"), 8)
        want_pid = bool(int(extra.pop("lockfile", "1")))
        _refuse_extra(extra)
        return UNIXServerEndpoint(reactor, args[1], backlog, mode, want_pid)
    _refuse_extra(extra)
    if len(args) != 1:
        raise ValueError(
            f"expected PORT or unix:PATH before the options, got {':'.join(args)!r}"
        )
    try:
        port = int(args[0])
    except ValueError:
        raise ValueError(f"the port must be a number, not {args[0]!r}") from None
    if ":" in interface:
        return TCP6ServerEndpoint(reactor, port, backlog, interface)
    return TCP4ServerEndpoint(reactor, port, backlog, interface)


def _refuse_extra(extra: dict[str, str]) -> None:
    """
    Reject options the endpoint does not know, so that typos are not ignored.
    """
    if extra:
        raise ValueError(f"unknown endpoint option(s): {', '.join(sorted(extra))}")


def parse_tls_server(
    reactor: Any,
    *args: str,
    certKey: str | None = None,
    privateKey: str | None = None,
    caCerts: str | None = None,
    extraCertChain: str | None = None,
    interface: str = "",
    backlog: str = "50",
    require_client_certificate: bool = False,
    **extra: str,
) -> IStreamServerEndpoint:
    """
    Build the endpoint for an C{rpcd-tls:} or C{mtls:} description.

    @param reactor: the reactor given to C{serverFromString}.
    @param args: C{(PORT,)} or C{("unix", PATH)}.
    @param certKey: the server certificate file (required).
    @param privateKey: its key file; defaults to C{certKey}.
    @param caCerts: the client CAs file (required for mutual TLS).
    @param extraCertChain: intermediate certificates to send.
    @param interface: the address to listen on (TCP); default all IPv4.
    @param backlog: the listen queue length.
    @param require_client_certificate: C{True} for C{mtls:}.
    @param extra: C{mode} and C{lockfile} for C{unix:}; anything else is an
        error.
    @return: the TLS server endpoint, with L{WatchedServerOptions}.
    @raise ValueError: a missing or unknown option, a bad port, or an
        unreadable certificate.
    @raise OSError: a file could not be read.
    """
    if certKey is None:
        raise ValueError("certKey=FILE is required (the server certificate)")
    if require_client_certificate and caCerts is None:
        raise ValueError("caCerts=FILE is required: mtls: verifies client certificates against it")
    if not require_client_certificate and caCerts is not None:
        raise ValueError("caCerts= is only for mtls:, which requires client certificates")
    transport = _transport_endpoint(reactor, args, interface, int(backlog), extra)
    def load() -> CertificateOptions:
        return server_tls_options(certKey, privateKey, caCerts, extraCertChain)
    clock = reactor if IReactorTime.providedBy(reactor) else None
    policy = WatchedServerOptions(load(), load)
    endpoint = wrapServerTLS(policy, transport, clock)
    endpoint.rpcd_tls = policy  # type: ignore[attr-defined]  # read by tls_policy
    return endpoint


def tls_policy(endpoint: object) -> WatchedServerOptions | None:
    """
    @param endpoint: a server endpoint.
    @return: the TLS policy of an C{rpcd-tls:} or C{mtls:} endpoint, whose
        certificate files a reload reads again (L{rpcd.daemon.reload}); None for
        other endpoints.
    """
    return getattr(endpoint, "rpcd_tls", None)
