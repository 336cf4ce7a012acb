"""
End-to-end tests with seed 003's own Go gRPC programs (C{tests/go/seeds/003_*},
built by L{tests.gogrpc}), over mutual TLS with the certificates the seed
expects (C{ServerName: "server.razeen.me"}):

  - the seed's client against the seed's server: the four calls, and the
    seed's failure cases with the errors the Go client prints (which proves
    the build and the certificates);
  - rpcd's client (library and C{rpcd} command) against the seed's server.
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.daemon import _Output, run, temp_dir
from tests.gogrpc import SEED_003, Seed003Certs, grpc_go_program, start_go_server

SEED_CLIENT_OUTPUT = [
    r'Resp1:reply:\s*"Hello World !!"',
    r'Resp2:reply:\s*"Hello World !!"',
    "ListHello Server Resp: ListHello Reply Hello Server List Hello 1",
    "ListHello Server Resp: ListHello Reply Hello Server List Hello 2",
    "ListHello Server Resp: ListHello Reply Hello Server List Hello 3",
    "SayMoreHello Server Resp: SayMoreHello Recv Muti Greeting",
    "SayHelloChat Server Say: SayHelloChat Server Say Hello 1",
    "SayHelloChat Server Say: SayHelloChat Server Say Hello 2",
    "SayHelloChat Server Say: SayHelloChat Server Say Hello 3",
]


def log_lines(text: str) -> list[str]:
    """
    @return: Go C{log} lines without their date and time.
    """
    return [re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", "", line)
            for line in text.splitlines() if line]


class SeedGoProgramTests(TestCase):
    """Seed 003's Go client against seed 003's Go server, over mutual TLS."""

    timeout = 180

    async def seed_client(self, port: int, cwd: str) -> tuple[int | None, list[str]]:
        client = await grpc_go_program(self, "seeds/003_client", SEED_003)
        code, out, err = await run(self, [client, f"localhost:{port}"], cwd=cwd)
        return code, log_lines(out + err)

    async def seed_server(self, pki: Seed003Certs, **layout: str) -> tuple[int, _Output]:
        server = await grpc_go_program(self, "seeds/003_server", SEED_003)
        return await start_go_server(self, server, pki.server_dir(**layout))

    async def test_four_calls(self) -> None:
        """The seed's client makes its two unary calls and its three streams, and prints the seed's replies."""
        pki = Seed003Certs(Path(temp_dir(self)))
        port, _ = await self.seed_server(pki)
        code, lines = await self.seed_client(port, pki.client_dir())
        self.assertEqual(code, 0, lines)
        self.assertEqual(len(lines), len(SEED_CLIENT_OUTPUT), lines)
        for pattern, line in zip(SEED_CLIENT_OUTPUT, lines):
            self.assertRegex(line, "^" + pattern + "$")

    async def assert_handshake_fails(self, lines: list[str], code: int | None, why: str) -> None:
        """
        The seed's client logs the failed SayHelloWorld calls (and goes on),
        then stops at ListHello with the same error.
        """
        self.assertEqual(code, 1, lines)
        self.assertIn("Resp1:<nil>", lines)
        self.assertRegex(lines[0], r"^rpc error: code = Unavailable desc = .*"
                                   r"transport: authentication handshake failed: " + why)
        self.assertRegex(lines[-1], r"^ListHello err: rpc error: code = Unavailable desc = .*" + why)

    async def test_unknown_authority(self) -> None:
        """Without the server's CA in its pool, the client prints the seed's "certificate signed by unknown authority"."""
        pki = Seed003Certs(Path(temp_dir(self)))
        port, _ = await self.seed_server(pki, cert="foreign-server")
        code, lines = await self.seed_client(port, pki.client_dir())
        await self.assert_handshake_fails(lines, code, r"x509: certificate signed by unknown authority")

    async def test_client_certificate_rejected(self) -> None:
        """A client certificate from a CA the server does not trust: every call fails UNAVAILABLE; the server saw no certificate."""
        pki = Seed003Certs(Path(temp_dir(self)))
        port, server = await self.seed_server(pki)
        code, lines = await self.seed_client(port, pki.client_dir(cert="mallory"))
        # The seed shows "remote error: tls: bad certificate", which the
        # client reads under TLS 1.2.  Under TLS 1.3 (what Go speaks now) the
        # client's handshake is done before the server checks its
        # certificate, so the client may only see the connection close:
        # the server's log has the reason.
        self.assertEqual(code, 1, lines)
        self.assertIn("Resp1:<nil>", lines)
        self.assertRegex(lines[0], r"^rpc error: code = Unavailable desc = ")
        self.assertRegex(lines[-1], r"^ListHello err: rpc error: code = Unavailable desc = ")
        # Go's client sends no certificate when its only one is not from a
        # CA the server's request lists: the server finds none.
        await server.wait_for(re.compile(
            r"failed to complete security handshake from \S+: "
            r"tls: client didn't provide a certificate").search, "the server's reason", 30)

    async def test_name_mismatch(self) -> None:
        """A server certificate for another name fails with the seed's "certificate is valid for ..., not server.razeen.me"."""
        pki = Seed003Certs(Path(temp_dir(self)))
        port, _ = await self.seed_server(pki, cert="wrong")
        code, lines = await self.seed_client(port, pki.client_dir())
        await self.assert_handshake_fails(
            lines, code, r"x509: certificate is valid for wrong\.example, not server\.razeen\.me")
