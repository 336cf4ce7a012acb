"""
End-to-end TLS: the real daemon on loopback behind C{rpcd-tls:} and C{mtls:}
endpoints, the C{rpcd} command, the native client, stock Go, per-service
identity and login requirements, and the C{rpcd certs} and
C{rpcd hash-password} commands.
"""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

from rpcd import certs
from rpcd.client import connect
from rpcd.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from tests.cache import cached_build, tool_stamp
from tests.cli import rpcd
from tests.daemon import Daemon, rpcd_command, run, temp_dir
from tests.tools import require_tool

GO_CLIENT = Path(__file__).parent / "go" / "mtlsclient" / "main.go"
MULTIPLY = ("Arith.Multiply", '{"A": 7, "B": 8}')



class PKI:
    """
    Certificates for the failure matrix: a good CA with a server and the
    clients alice and bob, an expired server certificate, one for the wrong
    name, and a foreign CA with its own client mallory.

    @ivar dir: where the files are.
    @ivar roots: a trustRoots= directory holding only the good CA.
    @ivar foreign_roots: a trustRoots= directory holding only the foreign CA.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        certs.create_dev_pki(directory / "pki", clients=["alice", "bob"])
        ca = certs.load_issued_certificate(directory / "pki" / "ca.pem", directory / "pki" / "ca.key")
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
        certs.issue_server_certificate(ca, valid_from=past - datetime.timedelta(days=30),
                                       valid_until=past).write(directory, "expired")
        certs.issue_server_certificate(ca, ["wrong.example"]).write(directory, "wrong")
        foreign = certs.create_ca("foreign CA")
        foreign.write(directory, "foreign-ca")
        certs.issue_client_certificate(foreign, "mallory").write(directory, "mallory")
        self.roots = directory / "roots"
        self.roots.mkdir()
        shutil.copy(directory / "pki" / "ca.pem", self.roots / "ca.pem")
        self.foreign_roots = directory / "foreign-roots"
        self.foreign_roots.mkdir()
        shutil.copy(directory / "foreign-ca.pem", self.foreign_roots / "ca.pem")

    def path(self, name: str) -> str:
        """
        @param name: C{alice.pem}, C{server.key}... (in pki/) or C{expired.pem}...
        @return: its absolute path.
        """
        inner = self.dir / "pki" / name
        return str(inner if inner.exists() else self.dir / name)

    def server(self, prefix: str, cert: str = "server", client_cas: bool = False) -> str:
        """
        @return: a server endpoint string on a free loopback port.
        """
        endpoint = (f"{prefix}:0:interface=127.0.0.1:certKey={_escape(self.path(cert + '.pem'))}"
                    f":privateKey={_escape(self.path(cert + '.key'))}")
        if client_cas:
            endpoint += f":caCerts={_escape(self.path('ca.pem'))}"
        return endpoint

    def client(self, port: int, roots: Path | None = None, identity: str | None = None,
               host: str = "localhost") -> str:
        """
        @return: a Twisted C{tls:} client endpoint string.
        """
        endpoint = f"tls:host={host}:port={port}:trustRoots={_escape(str(roots or self.roots))}"
        if identity is not None:
            endpoint += (f":certificate={_escape(self.path(identity + '.pem'))}"
                         f":privateKey={_escape(self.path(identity + '.key'))}")
        return endpoint


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


class FailureMatrixTests(TestCase):
    """Every TLS failure gets clear words on both sides, and no traceback in the log."""

    # Nine runs of the rpcd command (a new Python importing rpcd each) and a
    # daemon with five listeners: well over a minute on a loaded machine.
    timeout = 240

    async def test_matrix(self) -> None:
        """For each failure, rpcd call prints the client's words and the daemon logs the server's."""
        pki = PKI(Path(temp_dir(self)))
        daemon = await Daemon.start(
            self, "--listen", pki.server("rpcd-tls"), "--listen", pki.server("mtls", client_cas=True),
            "--listen", pki.server("rpcd-tls", "expired"), "--listen", pki.server("rpcd-tls", "wrong"),
            "--listen", "tcp:0:interface=127.0.0.1", listeners=5)
        tls, mtls, expired, wrong, plain = daemon.ports
        cases = [
            ("unknown CA", pki.client(tls, pki.foreign_roots),
             "certificate verify failed: the server's certificate is not signed by a CA you trust (trustRoots=)",
             "the client does not trust the CA that signed this server's certificate"),
            ("expired certificate", pki.client(expired),
             "certificate verify failed: the server's certificate has expired",
             "the client rejected this server's certificate: it has expired"),
            ("name mismatch", pki.client(wrong),
             "the server's certificate is not valid for 'localhost', the name you connected to",
             "the client closed the connection during the TLS handshake"),
            ("no client certificate", pki.client(mtls),
             "the server requires a client certificate",
             "the client did not send a certificate, and this server requires one"),
            ("foreign client certificate", pki.client(mtls, identity="mallory"),
             "the server does not trust the CA that signed your certificate",
             "the client's certificate is not signed by a CA this server trusts"),
            ("plaintext to a TLS port", f"tcp:127.0.0.1:{tls}",
             "it may expect TLS on this port",
             "the peer does not speak TLS: it sent plaintext to this TLS port"),
            ("TLS to a plaintext port", pki.client(plain),
             "the server answered in plaintext; is this a plaintext port?",
             "it began a TLS handshake, but this endpoint does not speak TLS"),
        ]
        for name, endpoint, client_words, server_words in cases:
            mark = len(daemon.output)
            code, out, err = await rpcd(self, "call", endpoint, *MULTIPLY, "--timeout", "60")
            self.assertNotEqual(code, 0, f"{name}: {out}")
            self.assertIn(client_words, err, f"{name}: {err}")
            self.assertNotIn("Traceback", err, name)
            await daemon.wait_for_log(f"closing .*{_re(server_words)}|TLS with .* failed: .*{_re(server_words)}",
                                      after=mark)
        code, out, err = await rpcd(self, "call", pki.client(tls), *MULTIPLY)
        self.assertEqual((code, out.strip()), (0, "56"), err)
        code, out, err = await run(self, rpcd_command("call", pki.client(mtls, identity="alice"), *MULTIPLY))
        self.assertEqual((code, out.strip()), (0, "56"), err)
        self.assertNotIn("Traceback", daemon.output)


def _re(text: str) -> str:
    import re
    return re.escape(text)


_POLICY = """\
[server]
listen = []

[auth]
max_failed_logins = 3
failed_login_window = 60.0

[auth.users]
user = "{hash}"

[services.Arith]
require_identity = ["alice"]

[services.Cal]
require_login = true

[services.HelloService]
"""


class PolicyTests(TestCase):
    """Per-service require_identity and require_login, on the real daemon over mutual TLS."""

    timeout = 60

    async def start(self) -> tuple[PKI, Daemon]:
        pki = PKI(Path(temp_dir(self)))
        code, out, err = await run(self, rpcd_command("hash-password", "--stdin"), stdin=b"s3cret\n")
        self.assertEqual(code, 0, err)
        config = pki.dir / "rpcd.toml"
        config.write_text(_POLICY.format(hash=out.strip()))
        daemon = await Daemon.start(
            self, "--config", str(config), "--listen", pki.server("mtls", client_cas=True),
            "--listen", pki.server("rpcd-tls"), listeners=2)
        return pki, daemon

    async def test_identity_and_login(self) -> None:
        """alice may call Arith, bob and certificate-less callers may not; Cal needs a login, per connection."""
        pki, daemon = await self.start()
        mtls, tls = daemon.ports
        alice = await connect(pki.client(mtls, identity="alice"))
        self.addCleanup(alice.close)
        self.assertEqual(await alice.call("Arith.Multiply", {"A": 7, "B": 8}), 56)
        bob = await connect(pki.client(mtls, identity="bob"))
        self.addCleanup(bob.close)
        with self.assertRaises(PermissionDenied) as denied:
            await bob.call("Arith.Multiply", {"A": 7, "B": 8})
        self.assertIn("not open to certificate bob", denied.exception.message)
        anonymous = await connect(pki.client(tls))
        self.addCleanup(anonymous.close)
        with self.assertRaises(Unauthenticated) as unknown:
            await anonymous.call("Arith.Multiply", {"A": 7, "B": 8})
        self.assertIn("requires a TLS client certificate", unknown.exception.message)

        with self.assertRaises(Unauthenticated):
            await bob.call("Cal.Square", 12)
        self.assertEqual(await bob.call("HelloService.Login", "user:s3cret"), "")
        self.assertEqual(await bob.call("Cal.Square", 12), {"Num": 12, "Ans": 144})
        hello = await bob.call("HelloService.Hello", "bob")
        self.assertTrue(hello.startswith("hello:bob, from127.0.0.1:"), hello)
        await daemon.wait_for_log(r"logged in as 'user'", timeout=10)

        again = await connect(pki.client(mtls, identity="bob"))
        self.addCleanup(again.close)
        with self.assertRaises(Unauthenticated):
            await again.call("Cal.Square", 12)

    async def test_login_rate_limited(self) -> None:
        """After max_failed_logins failures from one host, even the right password is refused for a while."""
        pki, daemon = await self.start()
        mtls, tls = daemon.ports
        client = await connect(pki.client(tls))
        self.addCleanup(client.close)
        for _ in range(3):
            with self.assertRaises(Unauthenticated) as failed:
                await client.call("HelloService.Login", "user:wrong")
            self.assertEqual(failed.exception.message, "auth failed")
        with self.assertRaises(ResourceExhausted) as limited:
            await client.call("HelloService.Login", "user:s3cret")
        self.assertIn("too many failed logins from 127.0.0.1", limited.exception.message)
        other = await connect(pki.client(mtls, identity="alice"))
        self.addCleanup(other.close)
        with self.assertRaises(ResourceExhausted):
            await other.call("HelloService.Login", "user:s3cret")
        self.assertEqual(daemon.count_log(r"failed login for 'user'"), 3)


class CommandsTests(TestCase):
    """rpcd certs and rpcd hash-password, used as a user would."""

    timeout = 60

    async def test_certs_command(self) -> None:
        """The files rpcd certs writes serve mutual TLS; the daemon sees the client's CN as its identity."""
        directory = Path(temp_dir(self)) / "pki"
        code, out, err = await rpcd(self, "certs", str(directory), "--client", "carol")
        self.assertEqual(code, 0, err)
        for name in ("ca.pem", "ca.key", "server.pem", "server.key", "carol.pem", "carol.key"):
            self.assertTrue((directory / name).exists(), name)
        self.assertEqual(os.stat(directory / "carol.key").st_mode & 0o777, 0o600)
        config = directory.parent / "rpcd.toml"
        config.write_text('[server]\nlisten = []\n[services.Arith]\nrequire_identity = ["carol"]\n')
        d = _escape(str(directory))
        daemon = await Daemon.start(
            self, "--config", str(config), "--listen",
            f"mtls:0:interface=127.0.0.1:certKey={d}/server.pem:privateKey={d}/server.key:caCerts={d}/ca.pem")
        roots = directory.parent / "roots"
        roots.mkdir()
        shutil.copy(directory / "ca.pem", roots / "ca.pem")
        endpoint = (f"tls:host=localhost:port={daemon.port}:trustRoots={_escape(str(roots))}"
                    f":certificate={d}/carol.pem:privateKey={d}/carol.key")
        code, out, err = await rpcd(self, "call", endpoint, *MULTIPLY)
        self.assertEqual((code, out.strip()), (0, "56"), err)

    async def test_hash_password_command(self) -> None:
        """rpcd hash-password prints a salted scrypt hash: two runs differ, and an empty password is refused."""
        one = await rpcd(self, "hash-password", "--stdin", stdin=b"pw\n")
        two = await rpcd(self, "hash-password", "--stdin", stdin=b"pw\n")
        self.assertEqual((one[0], two[0]), (0, 0))
        self.assertTrue(one[1].startswith("scrypt$n="), one[1])
        self.assertNotEqual(one[1], two[1])
        from rpcd.auth import verify_password
        self.assertTrue(verify_password(one[1].strip(), "pw"))
        empty = await rpcd(self, "hash-password", "--stdin", stdin=b"\n")
        self.assertEqual(empty[0], 1)
        self.assertIn("empty", empty[2])


class GoTests(TestCase):
    """Stock Go (tls.Dial + rpc.NewClient, as seed 000) over mutual TLS."""

    timeout = 60

    async def test_go_mtls(self) -> None:
        """A Go net/rpc client with a client certificate calls the daemon's mtls: endpoint."""
        from rpcd.server import SERVER_PROTOCOLS
        if "gob" not in SERVER_PROTOCOLS:
            raise SkipTest("Go's net/rpc needs the gob protocol, not registered in "
                           "rpcd.server.SERVER_PROTOCOLS yet")
        go = require_tool("go", "to build a Go net/rpc client over mutual TLS")

        async def build(binary: str) -> None:
            code, out, err = await run(self, [go, "build", "-o", binary, str(GO_CLIENT)],
                                       cwd=temp_dir(self))
            self.assertEqual(code, 0, err)

        client = await cached_build("mtlsclient", [GO_CLIENT, tool_stamp(go)], build)
        pki = PKI(Path(temp_dir(self)))
        daemon = await Daemon.start(self, "--listen", pki.server("mtls", client_cas=True))
        code, out, err = await run(self, [client, f"127.0.0.1:{daemon.port}", "localhost",
                                          pki.path("ca.pem"), pki.path("alice.pem"), pki.path("alice.key")])
        self.assertEqual((code, out.strip()), (0, "56 144"), err)
        code, out, err = await run(self, [client, f"127.0.0.1:{daemon.port}", "localhost",
                                          pki.path("ca.pem"), pki.path("mallory.pem"), pki.path("mallory.key")])
        self.assertNotEqual(code, 0)
        self.assertIn("unknown certificate authority", err)

