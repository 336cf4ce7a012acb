"""
End-to-end tests with seed 003's own Go gRPC programs (C{tests/go/seeds/003_*},
built by L{tests.gogrpc}), over mutual TLS with the certificates the seed
expects (C{ServerName: "server.razeen.me"}):

  - the seed's client against the seed's server: the four calls, and the
    seed's failure cases with the errors the Go client prints (which proves
    the build and the certificates);
  - rpcd's client (library and C{rpcd} command) against the seed's server;
  - the seed's client against C{twistd rpcd} (skipped until rpcd serves gRPC
    and ships the seed's service).
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import TestCase

from rpcd.client import connect
from rpcd.errors import ConnectionLost
from tests.cli import rpcd
from tests.daemon import Daemon, _Output, run, temp_dir
from tests.gogrpc import SEED_003, Seed003Certs, grpc_go_program, start_go_server
from tests.test_tls_e2e import _escape

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


def seed_endpoint(pki: Seed003Certs, port: int, client: str | None = "client",
                  roots: str = "ca.pem") -> str:
    """
    @return: a C{tls:} client string for seed 003's server: the name
        C{server.razeen.me} checked, the connection made to 127.0.0.1.
    """
    endpoint = (f"tls:host={Seed003Certs.SERVER_NAME}:port={port}"
                f":endpoint=tcp\\:127.0.0.1\\:{port}:trustRoots={_escape(str(pki.path(roots)))}")
    if client is not None:
        endpoint += (f":certificate={_escape(str(pki.path(client + '.pem')))}"
                     f":privateKey={_escape(str(pki.path(client + '.key')))}")
    return endpoint


class RPCDClientTests(TestCase):
    """rpcd's gRPC client (library and command) against seed 003's Go server, over mutual TLS."""

    timeout = 180

    async def seed_server(self, pause: str = "10ms", **layout: str) -> tuple[Seed003Certs, int, _Output]:
        pki = Seed003Certs(Path(temp_dir(self)))
        server = await grpc_go_program(self, "seeds/003_server", SEED_003)
        port, output = await start_go_server(self, server, pki.server_dir(**layout), pause)
        return pki, port, output

    async def test_four_calls(self) -> None:
        """The library makes the seed client's calls and gets the seed server's answers."""
        # The server logs the chat's greetings only while its handler runs
        # (three pauses): 300 ms ones leave the greetings time to arrive.
        pki, port, output = await self.seed_server(pause="300ms")
        client = await connect(seed_endpoint(pki, port), codec="grpc", proto=str(SEED_003.path))
        self.addCleanup(client.close)
        self.assertEqual(await client.HelloWorldService.SayHelloWorld(
            greeting="Hello Server 1 !!", infos={"hello": "world"}), {"reply": "Hello World !!"})
        listed = client.stream("helloworld.HelloWorldService.ListHello", {"greeting": "rpcd"},
                               timeout=60)
        self.assertEqual([m async for m in listed],
                         [{"reply": f"ListHello Reply rpcd {i}"} for i in (1, 2, 3)])
        more = client.stream("HelloWorldService.SayMoreHello")
        for i in range(3):
            await more.send({"greeting": f"rpcd more {i}"})
        more.close_send()
        self.assertEqual(await more.result(), {"reply": "SayMoreHello Recv Muti Greeting"})
        chat = client.stream("/helloworld.HelloWorldService/SayHelloChat", timeout=60)
        for i in range(3):
            await chat.send({"greeting": f"rpcd chat {i}"})
        self.assertEqual([m async for m in chat],
                         [{"greeting": f"SayHelloChat Server Say Hello {i}"} for i in (1, 2, 3)])
        server_lines = log_lines(output.text)
        for line in ("Client Greeting:Hello Server 1 !!", "Client Info:map[hello:world]",
                     "Client Say: rpcd", "SayMoreHello Client Say: rpcd more 2"):
            self.assertIn(line, server_lines)
        await output.wait_for(lambda text: "SayHelloChat Client Say: rpcd chat 2" in text or None,
                              "the server's log of the chat", 30)

    async def test_rpcd_command(self) -> None:
        """rpcd call and rpcd stream --codec grpc call the seed's server over mutual TLS."""
        pki, port, _ = await self.seed_server()
        endpoint = seed_endpoint(pki, port)
        grpc = ("--codec", "grpc", "--proto", str(SEED_003.path))
        code, out, err = await rpcd(self,
            "call", *grpc, endpoint, "HelloWorldService.SayHelloWorld",
            '{"greeting": "Hello Server 1 !!", "infos": {"hello": "world"}}')
        self.assertEqual((code, out), (0, '{"reply": "Hello World !!"}\n'), err)
        code, out, err = await rpcd(self,
            "stream", *grpc, endpoint, "HelloWorldService.ListHello", '{"greeting": "cli"}')
        self.assertEqual((code, out.splitlines()),
                         (0, [f'{{"reply": "ListHello Reply cli {i}"}}' for i in (1, 2, 3)]), err)
        code, out, err = await rpcd(self,
            "stream", *grpc, "--stdin", endpoint, "HelloWorldService.SayMoreHello",
            stdin=b'{"greeting": "a"}\n{"greeting": "b"}\n')
        self.assertEqual((code, out), (0, '{"reply": "SayMoreHello Recv Muti Greeting"}\n'), err)

    async def test_no_client_certificate(self) -> None:
        """Without a client certificate the connection fails, and the Go server says it got none."""
        pki, port, output = await self.seed_server()
        with self.assertRaises(ConnectionLost):
            await connect(seed_endpoint(pki, port, client=None), codec="grpc",
                          proto=str(SEED_003.path))
        await output.wait_for(re.compile(r"tls: client didn't provide a certificate").search,
                              "the server's reason", 30)

    async def test_unknown_authority_and_name_mismatch(self) -> None:
        """rpcd's client refuses a server certificate from an unknown CA, or for another name, saying so."""
        pki, port, _ = await self.seed_server(cert="wrong")
        code, out, err = await rpcd(self,
            "call", "--codec", "grpc", "--proto", str(SEED_003.path), seed_endpoint(pki, port),
            "HelloWorldService.SayHelloWorld", "{}")
        self.assertEqual(code, 2, out + err)
        self.assertIn("the server's certificate is not valid for 'server.razeen.me', the name you "
                      "connected to; it is for: wrong.example", err)
        code, out, err = await rpcd(self,
            "call", "--codec", "grpc", "--proto", str(SEED_003.path),
            seed_endpoint(pki, port, roots="foreign-ca.pem"), "HelloWorldService.SayHelloWorld", "{}")
        self.assertEqual(code, 2, out + err)
        self.assertIn("the server's certificate is not signed by a CA you trust", err)


class SeedClientAgainstRPCDTests(TestCase):
    """
    Seed 003's Go client, unchanged, against C{twistd rpcd} over mutual TLS.

    The daemon serves C{HelloWorldService} (L{rpcd.examples.helloworld},
    with 10 ms pauses in its streams); its answers are checked against
    L{SEED_CLIENT_OUTPUT}, the seed's Go server's
    (C{tests/go/seeds/003_server}).
    """

    timeout = 180

    async def test_four_calls(self) -> None:
        """The seed's Go client makes its five calls against the daemon's mtls: port and prints the seed's replies."""
        from tests.test_go_e2e import require_protocol
        require_protocol("grpc", "for seed 003's Go gRPC client")
        pki = Seed003Certs(Path(temp_dir(self)))
        listen = (f"mtls:0:interface=127.0.0.1:certKey={_escape(str(pki.path('server.pem')))}"
                  f":privateKey={_escape(str(pki.path('server.key')))}"
                  f":caCerts={_escape(str(pki.path('ca.pem')))}")
        config = Path(temp_dir(self)) / "rpcd.toml"
        # The service's pauses between stream messages: 10 ms, not the seed's second.
        config.write_text('[services.HelloWorldService]\n'
                          'class = "rpcd.examples.helloworld:HelloWorldService"\n'
                          '[services.HelloWorldService.options]\ndelay = 0.01\n')
        daemon = await Daemon.start(self, "--config", str(config), "--listen", listen)
        client = await grpc_go_program(self, "seeds/003_client", SEED_003)
        code, out, err = await run(self, [client, f"localhost:{daemon.port}"], cwd=pki.client_dir())
        lines = log_lines(out + err)
        self.assertEqual(code, 0, lines)
        self.assertEqual(len(lines), len(SEED_CLIENT_OUTPUT), lines)
        for pattern, line in zip(SEED_CLIENT_OUTPUT, lines):
            self.assertRegex(line, "^" + pattern + "$")
