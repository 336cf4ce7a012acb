"""
A development public-key infrastructure: a private CA, a server certificate
and client certificates, made with the C{cryptography} library.

This is for development, tests and small private deployments, where a real
CA is overkill.  L{create_dev_pki} writes everything the C{rpcd-tls:} and
C{mtls:} server endpoints (see L{rpcd.tls.endpoints}) and Twisted's C{tls:}
client endpoint need::

    DIR/ca.pem       the CA certificate: give it to both sides as the trust root
    DIR/ca.key       the CA private key (0600): keep it to issue more certificates
    DIR/server.pem   the server certificate, SANs localhost, 127.0.0.1, ::1, --name...
    DIR/server.key   its private key (0600)
    DIR/NAME.pem     one client certificate per --client NAME (CN=NAME, clientAuth)
    DIR/NAME.key     its private key (0600)

The lower-level functions (L{create_ca}, L{issue_server_certificate},
L{issue_client_certificate}) build certificates in memory, including bad ones
for tests: an expired one (C{valid_until} in the past), one for the wrong name,
or one from a second, "foreign", CA.

The C{rpcd certs} subcommand is L{add_arguments} plus L{run}.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

#: The names every development server certificate carries.
DEFAULT_SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

#: The key types L{generate_private_key} knows.
KEY_TYPES: tuple[str, ...] = ("ec", "rsa")

#: How far back certificates' validity starts, to tolerate clock skew.
_BACKDATE = datetime.timedelta(minutes=5)

_RESERVED_STEMS = frozenset({"ca", "server"})


@dataclass(frozen=True)
class IssuedCertificate:
    """
    A certificate and its private key, in memory.

    @ivar certificate: the certificate.
    @ivar private_key: the private key matching C{certificate}.
    """

    certificate: x509.Certificate
    private_key: PrivateKey

    def certificate_pem(self) -> bytes:
        """
        @return: the certificate in PEM format.
        """
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def private_key_pem(self) -> bytes:
        """
        @return: the unencrypted private key in PKCS#8 PEM format.
        """
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: Path | str, stem: str) -> tuple[Path, Path]:
        """
        Write C{STEM.pem} (mode 0644) and C{STEM.key} (mode 0600).

        @param directory: an existing directory.
        @param stem: the file name without extension.
        @return: the paths of the certificate and of the key.
        @raise OSError: a file could not be written.
        """
        directory = Path(directory)
        cert_path = directory / f"{stem}.pem"
        key_path = directory / f"{stem}.key"
        _write_file(key_path, self.private_key_pem(), 0o600)
        _write_file(cert_path, self.certificate_pem(), 0o644)
        return cert_path, key_path


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """
    Write C{data} to C{path}, creating it with C{mode} and forcing C{mode} on
    an existing file, so that a key is never readable by others, even briefly.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as stream:
            stream.write(data)
    finally:
        os.close(fd)


def generate_private_key(key_type: str = "ec") -> PrivateKey:
    """
    Make a new private key.

    @param key_type: C{"ec"} (NIST P-256, the default) or C{"rsa"} (2048 bits).
    @return: the key.
    @raise ValueError: unknown C{key_type}.
    """
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")


def subject_alternative_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """
    Turn host names and IP addresses into SAN entries, without duplicates.

    @param names: DNS names (IDNA-encoded if not ASCII) or IPv4/IPv6 addresses.
    @return: an L{x509.IPAddress} for each address, an L{x509.DNSName} for
        each other name, in the order given.
    @raise ValueError: an empty name.
    """
    result: list[x509.GeneralName] = []
    for name in names:
        entry: x509.GeneralName
        if not name:
            raise ValueError("empty host name")
        try:
            entry = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            entry = x509.DNSName(name.encode("idna").decode("ascii").lower())
        if entry not in result:
            result.append(entry)
    return result


def _validity(
    days: int,
    valid_from: datetime.datetime | None,
    valid_until: datetime.datetime | None,
) -> tuple[datetime.datetime, datetime.datetime]:
    """
    Work out a certificate's validity period.
    """
    if valid_from is None:
        valid_from = datetime.datetime.now(datetime.timezone.utc) - _BACKDATE
    if valid_until is None:
        valid_until = valid_from + _BACKDATE + datetime.timedelta(days=days)
    if valid_until <= valid_from:
        raise ValueError("a certificate must end after it starts")
    return valid_from, valid_until


def _key_usage(signs_certificates: bool = False, key_encipherment: bool = False) -> x509.KeyUsage:
    """
    @return: a keyUsage extension allowing signatures, plus certificate and
        CRL signing for a CA, plus key encipherment for an RSA server key.
    """
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def create_ca(
    common_name: str = "rpcd development CA",
    *,
    days: int = 365,
    key_type: str = "ec",
    valid_from: datetime.datetime | None = None,
    valid_until: datetime.datetime | None = None,
) -> IssuedCertificate:
    """
    Make a self-signed CA that may sign end-entity certificates only.

    Call it twice to get a "foreign" CA whose certificates the first one's
    peers reject.

    @param common_name: the CA's subject and issuer CN.
    @param days: validity, from now (minus 5 minutes for clock skew).
    @param key_type: see L{generate_private_key}.
    @param valid_from: overrides the start of validity.
    @param valid_until: overrides the end of validity.
    @return: the CA certificate and key.
    @raise ValueError: bad C{key_type} or validity.
    """
    key = generate_private_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start, end = _validity(days, valid_from, valid_until)
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return IssuedCertificate(certificate, key)


def issue_certificate(
    ca: IssuedCertificate,
    common_name: str,
    names: Sequence[str] = (),
    usage: str = "server",
    *,
    days: int = 365,
    key_type: str = "ec",
    valid_from: datetime.datetime | None = None,
    valid_until: datetime.datetime | None = None,
) -> IssuedCertificate:
    """
    Make an end-entity certificate signed by C{ca}.

    @param ca: the issuing CA (from L{create_ca}).
    @param common_name: the subject CN.
    @param names: host names and IP addresses for the subjectAltName
        extension; none means no such extension.
    @param usage: C{"server"} (serverAuth EKU) or C{"client"} (clientAuth EKU).
    @param days: validity, from now (minus 5 minutes for clock skew).
    @param key_type: see L{generate_private_key}.
    @param valid_from: overrides the start of validity.
    @param valid_until: overrides the end of validity; a past date makes an
        expired certificate.
    @return: the certificate and its new key.
    @raise ValueError: bad C{usage}, C{key_type}, name or validity.
    """
    usages = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
    if usage not in usages:
        raise ValueError(f"unknown certificate usage {usage!r}: use 'server' or 'client'")
    key = generate_private_key(key_type)
    start, end = _validity(days, valid_from, valid_until)
    public_key = key.public_key()
    ca_key_id = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(key_encipherment=isinstance(key, rsa.RSAPrivateKey)), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([usages[usage]]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id.value),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(subject_alternative_names(names)), critical=False
        )
    return IssuedCertificate(builder.sign(ca.private_key, hashes.SHA256()), key)


def issue_server_certificate(
    ca: IssuedCertificate,
    names: Sequence[str] = DEFAULT_SERVER_NAMES,
    *,
    days: int = 365,
    key_type: str = "ec",
    valid_from: datetime.datetime | None = None,
    valid_until: datetime.datetime | None = None,
) -> IssuedCertificate:
    """
    Make a server certificate for C{names}; its CN is the first name.

    Pass C{names=("wrong.example",)} for a certificate with the wrong name.

    @param ca: the issuing CA.
    @param names: host names and IP addresses, at least one.
    @return: the certificate and its new key.
    @raise ValueError: no names, or see L{issue_certificate}.
    """
    if not names:
        raise ValueError("a server certificate needs at least one name")
    return issue_certificate(
        ca, names[0], names, "server",
        days=days, key_type=key_type, valid_from=valid_from, valid_until=valid_until,
    )


def issue_client_certificate(
    ca: IssuedCertificate,
    name: str,
    names: Sequence[str] = (),
    *,
    days: int = 365,
    key_type: str = "ec",
    valid_from: datetime.datetime | None = None,
    valid_until: datetime.datetime | None = None,
) -> IssuedCertificate:
    """
    Make a client certificate with CN C{name} and the clientAuth usage.

    @param ca: the issuing CA.
    @param name: the client's name, which the server sees as its identity.
    @param names: optional DNS names or IP addresses for subjectAltName.
    @return: the certificate and its new key.
    @raise ValueError: see L{issue_certificate}.
    """
    return issue_certificate(
        ca, name, names, "client",
        days=days, key_type=key_type, valid_from=valid_from, valid_until=valid_until,
    )


def load_issued_certificate(
    certificate_path: Path | str, private_key_path: Path | str
) -> IssuedCertificate:
    """
    Read a certificate and its unencrypted key from PEM files.

    @return: the pair.
    @raise OSError: a file could not be read.
    @raise ValueError: a file is not the expected PEM, or the key is not an
        EC or RSA key.
    """
    certificate = x509.load_pem_x509_certificate(Path(certificate_path).read_bytes())
    key = serialization.load_pem_private_key(Path(private_key_path).read_bytes(), None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise ValueError(f"{private_key_path}: only EC and RSA keys are supported")
    return IssuedCertificate(certificate, key)


def _check_client_name(name: str) -> None:
    """
    Refuse a client name that cannot be a file stem next to the CA and server.
    """
    if not name or name.startswith(".") or "/" in name or os.sep in name or "\0" in name:
        raise ValueError(f"client name {name!r} cannot be used as a file name")
    if name in _RESERVED_STEMS:
        raise ValueError(f"client name {name!r} would overwrite {name}.pem")


def create_dev_pki(
    directory: Path | str,
    server_names: Iterable[str] = (),
    clients: Iterable[str] = ("client",),
    days: int = 365,
    key_type: str = "ec",
) -> dict[str, Path]:
    """
    Write a CA, a server certificate and client certificates into C{directory}.

    If C{directory} already holds C{ca.pem} and C{ca.key}, that CA is reused
    (so that peers which already trust it trust the new certificates too);
    otherwise a new CA is made.  Server and client files are overwritten.

    @param directory: created (mode 0700) if missing.
    @param server_names: DNS names and IP addresses for the server
        certificate, in addition to C{localhost}, C{127.0.0.1} and C{::1}.
    @param clients: one client certificate per name; the name is its CN and
        file stem, and may not be C{"ca"} or C{"server"}.
    @param days: validity of new certificates.
    @param key_type: C{"ec"} or C{"rsa"}.
    @return: file name (C{"ca.pem"}, C{"ca.key"}, C{"server.pem"},
        C{"server.key"}, C{"NAME.pem"}, C{"NAME.key"}) to path of each file.
    @raise ValueError: a bad client or server name, C{days} or C{key_type}.
    @raise OSError: the directory or a file could not be written or read.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    clients = list(dict.fromkeys(clients))
    for client in clients:
        _check_client_name(client)
    names = [*DEFAULT_SERVER_NAMES, *server_names]
    subject_alternative_names(names)  # Validate before writing anything.
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    ca_cert_path, ca_key_path = directory / "ca.pem", directory / "ca.key"
    if ca_cert_path.exists() and ca_key_path.exists():
        ca = load_issued_certificate(ca_cert_path, ca_key_path)
    else:
        ca = create_ca(days=days, key_type=key_type)
        ca.write(directory, "ca")
    written["ca.pem"], written["ca.key"] = ca_cert_path, ca_key_path
    server = issue_server_certificate(ca, names, days=days, key_type=key_type)
    written["server.pem"], written["server.key"] = server.write(directory, "server")
    for client in clients:
        issued = issue_client_certificate(ca, client, days=days, key_type=key_type)
        written[f"{client}.pem"], written[f"{client}.key"] = issued.write(directory, client)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Add the options of C{rpcd certs DIR [--name NAME]... [--client NAME]...
    [--days N] [--key-type ec|rsa]} to C{parser}.

    @param parser: the subcommand's parser; L{run} takes what it parses.
    """
    parser.add_argument("directory", help="where to write the files (created if missing)")
    parser.add_argument(
        "--name",
        dest="server_names",
        action="append",
        default=[],
        metavar="NAME",
        help="an extra DNS name or IP address for the server certificate "
        "(localhost, 127.0.0.1 and ::1 are always included); repeatable",
    )
    parser.add_argument(
        "--client",
        dest="clients",
        action="append",
        default=[],
        metavar="NAME",
        help="make a client certificate NAME.pem/NAME.key with CN=NAME; "
        "repeatable (default: one called 'client')",
    )
    parser.add_argument(
        "--days", type=int, default=365, help="validity in days (default: 365)"
    )
    parser.add_argument(
        "--key-type", choices=KEY_TYPES, default="ec", help="key algorithm (default: ec)"
    )


def run(
    args: argparse.Namespace,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """
    Run C{rpcd certs}: write the files and list them.

    @param args: parsed by a parser given to L{add_arguments}.
    @param stdout: where the list of files goes (default C{sys.stdout}).
    @param stderr: where an error goes (default C{sys.stderr}).
    @return: the exit status: 0 on success, 1 on a bad argument or an I/O error.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        written = create_dev_pki(
            args.directory,
            server_names=args.server_names,
            clients=args.clients or ("client",),
            days=args.days,
            key_type=args.key_type,
        )
    except (OSError, ValueError) as e:
        print(f"rpcd certs: {e}", file=stderr)
        return 1
    _print_summary(written, stdout)
    return 0


def _print_summary(written: Mapping[str, Path], stdout: TextIO) -> None:
    """
    List the files written and show how to use them.
    """
    for path in written.values():
        print(path, file=stdout)
    d = str(Path(written["ca.pem"]).parent).replace("\\", "\\\\").replace(":", "\\:")
    print(
        f"\nserver: mtls:8443:certKey={d}/server.pem:privateKey={d}/server.key"
        f":caCerts={d}/ca.pem",
        file=stdout,
    )
    clients = [p for name, p in written.items() if name.endswith(".pem")
               and name not in ("ca.pem", "server.pem")]
    if clients:
        stem = clients[0].stem
        print(
            f"client: tls:host=localhost:port=8443:trustRoots={d}"
            f":certificate={d}/{stem}.pem:privateKey={d}/{stem}.key",
            file=stdout,
        )
