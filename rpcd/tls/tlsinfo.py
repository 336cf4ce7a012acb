"""
Who is on the other end of a TLS connection, and why a TLS handshake failed,
in words a user can act on.

L{peer_identity} reads the verified peer certificate of a TLS transport
(for example the client's, on an C{mtls:} server).

L{describe_tls_failure} turns the C{OpenSSL.SSL.Error},
C{service_identity.VerificationError} or connection-lost reason that a
protocol's C{connectionLost} receives into one sentence.  OpenSSL reports
every certificate problem on the verifying side as "certificate verify
failed"; to tell an expired certificate from an unknown CA it needs the
verification result, which it finds when the connection's creator called
L{watch_verification} (the creators in L{rpcd.tls.endpoints} do) and the
transport is passed in.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from service_identity.exceptions import VerificationError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

Side = Literal["client", "server"]

_log = Logger()

# X509_V_ERR_* codes from OpenSSL's x509_vfy.h that have their own words.
_CERT_NOT_YET_VALID = 9
_CERT_HAS_EXPIRED = 10
_INVALID_PURPOSE = 26
_UNTRUSTED_ISSUER_CODES = frozenset(
    {
        2,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
        18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
        7,  # X509_V_ERR_CERT_SIGNATURE_FAILURE
    }
)


@dataclass(frozen=True)
class PeerIdentity:
    """
    The identity in a peer's verified certificate.

    @ivar common_name: the subject CN, or L{None} if it has none.
    @ivar dns_names: the DNS names in subjectAltName.
    @ivar ip_addresses: the IP addresses in subjectAltName, as text.
    @ivar issuer_common_name: the issuing CA's CN, or L{None}.
    @ivar fingerprint_sha256: the SHA-256 of the DER certificate, as
        colon-separated upper-case hex pairs (the format of
        C{openssl x509 -noout -fingerprint -sha256}).
    @ivar certificate: the certificate itself.
    """

    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    issuer_common_name: str | None
    fingerprint_sha256: str
    certificate: x509.Certificate = field(repr=False, compare=False)

    @classmethod
    def from_certificate(cls, certificate: x509.Certificate) -> PeerIdentity:
        """
        Read the identity out of a certificate.

        @param certificate: the certificate.
        @return: its identity.
        """
        try:
            sans = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        except x509.ExtensionNotFound:
            dns: list[str] = []
            ips: list[str] = []
        else:
            dns = sans.get_values_for_type(x509.DNSName)
            ips = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
        digest = hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest().upper()
        return cls(
            common_name=_common_name(certificate.subject),
            dns_names=tuple(dns),
            ip_addresses=tuple(ips),
            issuer_common_name=_common_name(certificate.issuer),
            fingerprint_sha256=":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
            certificate=certificate,
        )


def _common_name(name: x509.Name) -> str | None:
    """
    @return: the first CN in C{name}, or L{None}.
    """
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _tls_connection(transport: object) -> SSL.Connection | None:
    """
    @return: the OpenSSL connection under a TLS transport, or L{None}.
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    handle = get_handle()
    return handle if isinstance(handle, SSL.Connection) else None


def peer_identity(transport: object) -> PeerIdentity | None:
    """
    Who the verified peer of a TLS connection is.

    Call it after the handshake (from C{handshakeCompleted}, or when the
    first bytes arrive), not after C{connectionLost}.

    @param transport: a protocol's C{transport}.
    @return: the peer certificate's identity if C{transport} is TLS, its
        handshake completed, the peer sent a certificate and it was verified
        against the configured CAs; otherwise L{None} (plaintext, no
        handshake yet, no client certificate, or no verification configured).
    """
    connection = _tls_connection(transport)
    if connection is None or connection.get_peer_finished() is None:
        return None
    if not connection.get_verify_mode() & SSL.VERIFY_PEER:
        return None
    chain = connection.get_verified_chain()
    certificate = connection.get_peer_certificate()
    if not chain or certificate is None:
        return None
    return PeerIdentity.from_certificate(certificate.to_cryptography())


@dataclass
class _Verification:
    """
    What OpenSSL's verification said about one connection's peer.

    @ivar error: the first failing X509_V_ERR_* code, or L{None}.
    @ivar leaf: the peer's own certificate, if OpenSSL got that far.
    """

    error: int | None = None
    leaf: x509.Certificate | None = None


_verifications: weakref.WeakKeyDictionary[object, _Verification] = weakref.WeakKeyDictionary()


def watch_verification(
    tls_protocol: object,
    connection: SSL.Connection,
    check_peer: Callable[[x509.Certificate], object] | None = None,
) -> SSL.Connection:
    """
    Note OpenSSL's certificate verdict on a connection, so that
    L{describe_tls_failure} can say exactly why a peer certificate was
    rejected (expired, not yet valid, unknown CA...).

    It installs a per-connection verify callback that keeps OpenSSL's
    verdict, so use it only on connections that have none of their own: those
    from C{CertificateOptions}, not from C{optionsForClientTLS}.  Connection
    creators call it from C{serverConnectionForTLS}/C{clientConnectionForTLS}.

    @param tls_protocol: the C{TLSMemoryBIOProtocol} the connection is for;
        it is the application protocol's C{transport}, and the key (held
        weakly) under which the verdict is kept.
    @param connection: the new connection; left alone if its verify mode
        does not ask for the peer's certificate.
    @param check_peer: called with the peer's own certificate once OpenSSL
        accepts its chain; if it raises
        C{service_identity.VerificationError}, the handshake fails and the
        application protocol's C{connectionLost} gets that error (this is how
        a client checks the server's name).
    @return: C{connection}.
    """
    mode = connection.get_verify_mode()
    if not mode & SSL.VERIFY_PEER:
        return connection
    verification = _Verification()
    _verifications[tls_protocol] = verification
    protocol_ref = weakref.ref(tls_protocol)

    def verify(
        conn: SSL.Connection, certificate: X509, error: int, depth: int, ok: int
    ) -> bool:
        try:
            if not ok and verification.error is None:
                verification.error = error
            if depth != 0:
                return bool(ok)
            leaf = certificate.to_cryptography()
            verification.leaf = leaf
            if ok and check_peer is not None:
                try:
                    check_peer(leaf)
                except VerificationError:
                    protocol = protocol_ref()
                    if protocol is not None:
                        protocol.failVerification(Failure())  # type: ignore[attr-defined]
                    return False
            return bool(ok)
        except BaseException:
            # An exception escaping an OpenSSL callback is lost or worse.
            _log.failure("while verifying a peer certificate")
            return False

    connection.set_verify(mode, verify)
    return connection


def _openssl_reasons(error: SSL.Error) -> list[str]:
    """
    @return: the reason strings in a pyOpenSSL error, lower case.
    """
    reasons = []
    for entry in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(entry, tuple) and entry:
            reasons.append(str(entry[-1]).lower())
    if not reasons and error.args:
        reasons.append(str(error.args[0]).lower())
    return reasons


def _cert_names(certificate: x509.Certificate | None) -> str:
    """
    @return: the names a certificate is valid for, for a message.
    """
    if certificate is None:
        return ""
    identity = PeerIdentity.from_certificate(certificate)
    names = [*identity.dns_names, *identity.ip_addresses]
    if not names and identity.common_name:
        names = [identity.common_name]
    return ", ".join(names) or "no names at all"


def _verify_failed(side: Side, verification: _Verification | None) -> str:
    """
    Words for a certificate this side rejected.
    """
    whose = "the server's certificate" if side == "client" else "the client's certificate"
    trust = "a CA you trust (trustRoots=)" if side == "client" else "a CA this server trusts (caCerts=)"
    code = None if verification is None else verification.error
    if code == _CERT_HAS_EXPIRED:
        detail = f"{whose} has expired"
    elif code == _CERT_NOT_YET_VALID:
        detail = f"{whose} is not valid yet (check the clocks)"
    elif code == _INVALID_PURPOSE:
        role = "TLS servers" if side == "client" else "TLS clients"
        detail = f"{whose} is not meant for {role} (extended key usage)"
    elif code in _UNTRUSTED_ISSUER_CODES:
        detail = f"{whose} is not signed by {trust}"
    elif code is None:
        detail = f"{whose} is not signed by {trust}, or has expired"
    else:
        detail = f"{whose} was rejected (OpenSSL verify error {code})"
    return f"certificate verify failed: {detail}"


def _name_mismatch(error: VerificationError, verification: _Verification | None) -> str:
    """
    Words for a service_identity hostname mismatch.
    """
    wanted = []
    for mismatch in error.errors:
        ident = getattr(mismatch.mismatched_id, "hostname", None)
        ident = ident if ident is not None else getattr(mismatch.mismatched_id, "ip", None)
        if isinstance(ident, bytes):
            ident = ident.decode("ascii", "replace")
        if ident is not None:
            wanted.append(str(ident))
    name = " or ".join(repr(w) for w in wanted) or "the host name you connected to"
    message = f"the server's certificate is not valid for {name}, the name you connected to"
    names = _cert_names(None if verification is None else verification.leaf)
    return f"{message}; it is for: {names}" if names else message


def _describe_openssl(reasons: list[str], side: Side, verification: _Verification | None) -> str:
    """
    Words for an OpenSSL handshake error.
    """
    joined = "; ".join(reasons)
    tagged = f" (OpenSSL: {joined})"
    peer = "server" if side == "client" else "client"
    mine = "your certificate" if side == "client" else "this server's certificate"
    if "certificate verify failed" in joined:
        return _verify_failed(side, verification)
    if "peer did not return a certificate" in joined:
        return "the client did not send a certificate, and this server requires one (mtls:)"
    if "certificate required" in joined:
        return ("the server requires a client certificate: give certificate= and "
                "privateKey= in the tls: endpoint" + tagged)
    if "http request" in joined:
        return (
            "the peer does not speak TLS: it sent a plain HTTP request to this TLS port"
            + tagged
        )
    if any(
        r in joined
        for r in ("wrong version number", "packet length too long", "record layer failure")
    ):
        if side == "server":
            return "the peer does not speak TLS: it sent plaintext to this TLS port" + tagged
        return (
            "the peer does not speak TLS: the server answered in plaintext; "
            "is this a plaintext port?" + tagged
        )
    if "alert unknown ca" in joined:
        return f"the {peer} does not trust the CA that signed {mine}" + tagged
    if "alert certificate expired" in joined:
        return f"the {peer} rejected {mine}: it has expired" + tagged
    if any(r in joined for r in ("alert bad certificate", "alert certificate unknown",
                                 "alert unsupported certificate", "alert certificate revoked")):
        return f"the {peer} rejected {mine}" + tagged
    if "alert handshake failure" in joined and side == "client":
        return (
            "the TLS handshake failed: the server may require a client certificate "
            "(certificate= and privateKey=), or it shares no cipher with you" + tagged
        )
    if any(r in joined for r in ("protocol version", "unsupported protocol",
                                 "no protocols available", "version too low")):
        return f"the {peer} and you share no TLS version (rpcd requires TLS 1.2 or newer)" + tagged
    if "no shared cipher" in joined or "no cipher" in joined:
        return f"the {peer} and you share no cipher suite" + tagged
    if "unexpected eof" in joined:
        return f"the {peer} closed the connection in the middle of TLS" + tagged
    return "the TLS handshake failed" + tagged


def describe_tls_failure(
    failure_or_exception: Failure | BaseException,
    side: Side = "client",
    transport: object | None = None,
) -> str:
    """
    Say why a TLS connection failed, in words a user can act on.

    @param failure_or_exception: the reason given to C{connectionLost} (or
        to an errback), or the exception itself.
    @param side: C{"client"} if we connected, C{"server"} if we accepted;
        it decides whose certificate "the certificate" is.
    @param transport: the protocol's C{transport}, if at hand; with it,
        a rejected certificate is described exactly (expired, not yet valid,
        unknown CA) when the connection's creator called
        L{watch_verification}, and a connection that closed during the
        handshake is recognised.
    @return: one sentence, without a trailing period.
    """
    error = (
        failure_or_exception.value
        if isinstance(failure_or_exception, Failure)
        else failure_or_exception
    )
    verification = None if transport is None else _verifications.get(transport)
    if isinstance(error, SSL.Error):
        return _describe_openssl(_openssl_reasons(error), side, verification)
    if isinstance(error, VerificationError):
        return _name_mismatch(error, verification)
    if isinstance(error, (ConnectionDone, ConnectionLost)):
        connection = _tls_connection(transport)
        if connection is not None and connection.get_peer_finished() is None:
            if side == "client":
                return (
                    "the server closed the connection during the TLS handshake: "
                    "it may not speak TLS on this port, or it refused you"
                )
            return (
                "the client closed the connection during the TLS handshake: "
                "it may have rejected this server's certificate"
            )
        return "the connection was closed"
    return f"the connection failed: {error}"
