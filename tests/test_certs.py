"""
Tests for L{rpcd.certs}: the development PKI and the C{rpcd certs} command.
"""

from __future__ import annotations

import argparse
import datetime
import io
import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

from rpcd import certs


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(certificate: x509.Certificate) -> x509.SubjectAlternativeName:
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _eku(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _cn(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


class CreateDevPKITests(SynchronousTestCase):
    """
    Tests for L{certs.create_dev_pki}.
    """

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.files = certs.create_dev_pki(
            self.directory, server_names=["rpc.example", "10.0.0.7"], clients=["alice", "bob"]
        )

    def test_files(self) -> None:
        """
        It writes the CA, the server and one pair per client, and returns
        their paths by file name.
        """
        expected = {
            "ca.pem", "ca.key", "server.pem", "server.key",
            "alice.pem", "alice.key", "bob.pem", "bob.key",
        }
        self.assertEqual(set(self.files), expected)
        self.assertEqual({p.name for p in self.directory.iterdir()}, expected)
        for name, path in self.files.items():
            self.assertEqual(path, self.directory / name)

    def test_key_permissions(self) -> None:
        """
        Private keys are readable by their owner only.
        """
        for name in ("ca.key", "server.key", "alice.key"):
            self.assertEqual(stat.S_IMODE(self.files[name].stat().st_mode), 0o600, name)

    def test_existing_key_permissions_tightened(self) -> None:
        """
        A key file that already exists with looser permissions becomes 0600.
        """
        self.files["alice.key"].chmod(0o644)
        certs.create_dev_pki(self.directory, clients=["alice"])
        self.assertEqual(stat.S_IMODE(self.files["alice.key"].stat().st_mode), 0o600)

    def test_server_names(self) -> None:
        """
        The server certificate has DNS SANs for localhost and the extra DNS
        names, and IP SANs for 127.0.0.1, ::1 and the extra addresses.
        """
        sans = _sans(_load(self.files["server.pem"]))
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["localhost", "rpc.example"])
        self.assertEqual(
            sans.get_values_for_type(x509.IPAddress),
            [
                ipaddress.ip_address("127.0.0.1"),
                ipaddress.ip_address("::1"),
                ipaddress.ip_address("10.0.0.7"),
            ],
        )

    def test_server_usage(self) -> None:
        """
        The server certificate is for TLS servers and is not a CA.
        """
        server = _load(self.files["server.pem"])
        self.assertEqual(_eku(server), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertFalse(server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)

    def test_client_certificates(self) -> None:
        """
        Each client certificate carries the client's name as CN and is for
        TLS clients.
        """
        for name in ("alice", "bob"):
            client = _load(self.files[f"{name}.pem"])
            self.assertEqual(_cn(client), name)
            self.assertEqual(_eku(client), [ExtendedKeyUsageOID.CLIENT_AUTH])

    def test_signed_by_ca(self) -> None:
        """
        The server and client certificates are signed by the CA, which is a
        CA.
        """
        ca = _load(self.files["ca.pem"])
        self.assertTrue(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        for name in ("server.pem", "alice.pem", "bob.pem"):
            _load(self.files[name]).verify_directly_issued_by(ca)

    def test_keys_match(self) -> None:
        """
        Each key file holds the key of the certificate next to it.
        """
        for stem in ("ca", "server", "alice"):
            issued = certs.load_issued_certificate(
                self.files[f"{stem}.pem"], self.files[f"{stem}.key"]
            )
            self.assertEqual(
                issued.certificate.public_key(), issued.private_key.public_key(), stem
            )

    def test_validity(self) -> None:
        """
        Certificates are valid from a little before now for the given days.
        """
        directory = Path(self.mktemp())
        files = certs.create_dev_pki(directory, days=30)
        server = _load(files["server.pem"])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(server.not_valid_before_utc, now)
        length = server.not_valid_after_utc - server.not_valid_before_utc
        self.assertEqual(length, datetime.timedelta(days=30, minutes=5))

    def test_reuses_ca(self) -> None:
        """
        A second run in the same directory keeps the CA and signs the new
        certificates with it.
        """
        before = self.files["ca.pem"].read_bytes()
        files = certs.create_dev_pki(self.directory, clients=["carol"])
        self.assertEqual(files["ca.pem"].read_bytes(), before)
        _load(files["carol.pem"]).verify_directly_issued_by(_load(files["ca.pem"]))

    def test_rsa(self) -> None:
        """
        C{key_type="rsa"} makes RSA keys.
        """
        files = certs.create_dev_pki(Path(self.mktemp()), key_type="rsa")
        self.assertIsInstance(_load(files["server.pem"]).public_key(), rsa.RSAPublicKey)

    def test_reserved_client_name(self) -> None:
        """
        A client called "ca" or "server" would overwrite those files, so it
        is refused.
        """
        for name in ("ca", "server"):
            error = self.assertRaises(
                ValueError, certs.create_dev_pki, Path(self.mktemp()), clients=[name]
            )
            self.assertIn(f"would overwrite {name}.pem", str(error))

    def test_path_client_name(self) -> None:
        """
        A client name that is not a plain file name is refused before any
        file is written.
        """
        directory = Path(self.mktemp())
        error = self.assertRaises(
            ValueError, certs.create_dev_pki, directory, clients=["../evil"]
        )
        self.assertIn("cannot be used as a file name", str(error))
        self.assertFalse(directory.exists())


class BadCertificateTests(SynchronousTestCase):
    """
    Tests for the lower-level helpers that make bad certificates for tests.
    """

    def setUp(self) -> None:
        self.ca = certs.create_ca()

    def test_expired(self) -> None:
        """
        A C{valid_until} in the past makes an expired certificate.
        """
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
        expired = certs.issue_server_certificate(
            self.ca, valid_from=past - datetime.timedelta(days=1), valid_until=past
        )
        self.assertEqual(expired.certificate.not_valid_after_utc, past.replace(microsecond=0))

    def test_wrong_name(self) -> None:
        """
        A server certificate may be made for other names only.
        """
        wrong = certs.issue_server_certificate(self.ca, ["wrong.example"])
        self.assertEqual(_cn(wrong.certificate), "wrong.example")
        self.assertEqual(
            _sans(wrong.certificate).get_values_for_type(x509.DNSName), ["wrong.example"]
        )

    def test_foreign_ca(self) -> None:
        """
        Certificates from a second CA do not verify against the first, even
        when both CAs have the same name.
        """
        foreign = certs.create_ca()
        client = certs.issue_client_certificate(foreign, "mallory")
        self.assertRaises(
            InvalidSignature, client.certificate.verify_directly_issued_by, self.ca.certificate
        )

    def test_end_before_start(self) -> None:
        """
        A validity that ends before it starts is refused.
        """
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertRaises(
            ValueError, certs.create_ca, valid_from=now, valid_until=now - datetime.timedelta(1)
        )

    def test_unknown_usage(self) -> None:
        """
        Only server and client certificates can be issued.
        """
        error = self.assertRaises(ValueError, certs.issue_certificate, self.ca, "x", usage="ca")
        self.assertIn("unknown certificate usage 'ca'", str(error))

    def test_unknown_key_type(self) -> None:
        """
        An unknown key type is refused with the known ones listed.
        """
        error = self.assertRaises(ValueError, certs.generate_private_key, "dsa")
        self.assertEqual(str(error), "unknown key type 'dsa': use one of ec, rsa")


class CommandTests(SynchronousTestCase):
    """
    Tests for the C{rpcd certs} subcommand: L{certs.add_arguments} and
    L{certs.run}.
    """

    def parse(self, argv: list[str]) -> argparse.Namespace:
        parser = argparse.ArgumentParser(prog="rpcd certs")
        certs.add_arguments(parser)
        return parser.parse_args(argv)

    def test_run(self) -> None:
        """
        It writes the files for the names and clients given and lists them.
        """
        directory = Path(self.mktemp())
        args = self.parse(
            [str(directory), "--name", "rpc.example", "--client", "alice", "--days", "7"]
        )
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(certs.run(args, stdout=out, stderr=err), 0)
        self.assertEqual(err.getvalue(), "")
        self.assertIn(str(directory / "alice.key"), out.getvalue().splitlines())
        self.assertIn(f"caCerts={directory}/ca.pem", out.getvalue())
        server = _load(directory / "server.pem")
        self.assertIn("rpc.example", _sans(server).get_values_for_type(x509.DNSName))
        self.assertEqual(
            server.not_valid_after_utc - server.not_valid_before_utc,
            datetime.timedelta(days=7, minutes=5),
        )

    def test_default_client(self) -> None:
        """
        Without C{--client}, one client called "client" is made.
        """
        directory = Path(self.mktemp())
        self.assertEqual(certs.run(self.parse([str(directory)]), stdout=io.StringIO()), 0)
        self.assertTrue((directory / "client.pem").exists())

    def test_error(self) -> None:
        """
        A bad argument gives exit status 1 and a message on stderr.
        """
        err = io.StringIO()
        args = self.parse([self.mktemp(), "--client", "ca"])
        self.assertEqual(certs.run(args, stdout=io.StringIO(), stderr=err), 1)
        self.assertEqual(err.getvalue(), "rpcd certs: client name 'ca' would overwrite ca.pem\n")
